"""Data: volumes in and out, datasets, planning, preprocessing and its inverse, cache, sampling, phantoms.

Never imports ``unetr.model`` or ``unetr.training``. Submodules are imported lazily by their users, so
``import unetr.data`` stays cheap; the names below are the public API.
"""

from unetr.data.cases import Case, Dataset, check_dataset, load_dataset
from unetr.data.io import Geometry, read_image, read_label, write_image, write_label
from unetr.data.splits import Splits, split_cases

__all__ = [
    "Case", "Dataset", "Geometry", "Splits", "check_dataset", "load_dataset", "read_image", "read_label",
    "split_cases", "write_image", "write_label",
]
