"""Fixtures of the data tests: a small phantom dataset."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from unetr.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom") / "ds", cases=6, test_cases=1, seed=7)
