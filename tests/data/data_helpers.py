"""Helpers of the data tests (a unique module name: every test folder has its own conftest)."""

from pathlib import Path

import nibabel as nib
import numpy as np


def save_nifti(path, array, affine=None, dtype=None) -> Path:
    """Write ``array`` with nibabel directly (not through the code under test)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    img = nib.Nifti1Image(array.astype(dtype) if dtype else array, np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path
