"""unetr: UNETR (Hatamizadeh et al., WACV 2022) for 3D medical image segmentation.

Example:
    >>> import torch
    >>> from unetr import build_model, preset
    >>> model = build_model(preset("tiny", in_channels=1, out_channels=3, img_size=(32, 32, 32)))
    >>> model(torch.randn(1, 1, 32, 32, 32)).shape
    torch.Size([1, 3, 32, 32, 32])
"""

from typing import Any

__version__ = "0.1.0"

# Public names and the module that defines each; imported on first use so that `unetr --help` stays fast.
_EXPORTS = {
    "UNETR": "unetr.model", "build_model": "unetr.model", "load_model": "unetr.model", "save_run": "unetr.model",
    "preset": "unetr.config", "ModelConfig": "unetr.config", "Plan": "unetr.config", "TrainConfig": "unetr.config",
    "InferConfig": "unetr.config",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unetr' has no attribute {name!r}")
