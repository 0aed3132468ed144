"""The UNETR network, its building blocks, and checkpoint import/export."""

from unetr.model.attention import Attention
from unetr.model.checkpoint import (
           build_model,
           load_model,
           load_weights,
           read_checkpoint,
           save_run,
           save_safetensors,
)
from unetr.model.cpu_kernels import fast_paths_enabled, generic_paths
from unetr.model.unetr import UNETR
from unetr.model.vit import ViT

__all__ = ["UNETR", "ViT", "Attention", "build_model", "fast_paths_enabled", "generic_paths", "load_model",
           "load_weights", "read_checkpoint", "save_run", "save_safetensors"]
