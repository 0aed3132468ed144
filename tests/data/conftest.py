"""Fixtures of the data tests: a small phantom dataset and a NIfTI writer."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from unetr.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom") / "ds", cases=6, test_cases=1, seed=7)


def save_nifti(path, array, affine=None, dtype=None) -> Path:
    """Write ``array`` with nibabel directly (not through the code under test)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    img = nib.Nifti1Image(array.astype(dtype) if dtype else array, np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path
