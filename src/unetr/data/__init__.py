"""Data: volumes in and out, datasets, planning, preprocessing and its inverse, cache, sampling, phantoms.

Never imports ``unetr.model`` or ``unetr.training``. Submodules are imported lazily by their users, so
``import unetr.data`` stays cheap; the names below are the public API.
"""

from unetr.data.cases import Case, Dataset, check_dataset, dataset_split, load_dataset, split_cases
from unetr.data.io import Geometry, read_image, read_label, write_image, write_label

__all__ = [
    "Case", "Dataset", "Geometry", "check_dataset", "dataset_split", "load_dataset", "read_image", "read_label",
    "split_cases", "write_image", "write_label",
]
