"""Shared test settings: small thread counts and deterministic torch."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
    yield


def _monai_ct_chain(pixdim, window, crop=True):
    """MONAI's deterministic CT chain as its tutorials write it: load, channel first, RAS, ``Spacingd``,
    ``ScaleIntensityRanged``, and ``CropForegroundd`` when ``crop`` (the UNETR tutorial's)."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    a_min, a_max, b_min, b_max = window
    return Compose([
        LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=tuple(pixdim), mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True),
        *([CropForegroundd(keys="image", source_key="image")] if crop else []),
    ])


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): many small
    forward passes, which a busy 2-core machine slows 10x with two threads waiting on each other (what is
    checked does not depend on it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def monai_ct_chain():
    """:func:`_monai_ct_chain` (test folders are not packages, so they take it as a fixture)."""
    return _monai_ct_chain
