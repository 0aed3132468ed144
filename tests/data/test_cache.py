"""The cache: memory-mapped reads, reuse, invalidation (plan, changed sources), interrupted builds."""

import os
import shutil

import numpy as np
import pytest

from unetr.data import cache as cache_mod
from unetr.data.cache import build_cache, cache_plan, cached_ids, case_is_fresh, load_cached
from unetr.data.cases import load_dataset
from unetr.data.plan import make_plan
from unetr.errors import DataError


@pytest.fixture()
def setup(phantom_dir, tmp_path):
    ds_dir = tmp_path / "ds"
    shutil.copytree(phantom_dir, ds_dir)
    ds = load_dataset(ds_dir)
    plan = make_plan(ds, roi=(48, 48, 48))
    return ds, plan, tmp_path / "cache"


def _built(monkeypatch):
    """Record which cases _build_one actually preprocesses (in-process builds)."""
    seen = []
    real = cache_mod._build_one

    def spy(case, plan_dict, cache_dir):
        seen.append(case.id)
        return real(case, plan_dict, cache_dir)

    monkeypatch.setattr(cache_mod, "_build_one", spy)
    return seen


def test_build_and_load(setup):
    ds, plan, cdir = setup
    ids = build_cache(ds, plan, cdir, workers=2, progress=False)  # worker processes
    assert ids == [c.id for c in ds.train] and cached_ids(cdir) == ids
    image, label, rec = load_cached(cdir, ids[0])
    assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape[1:] == label.shape
    assert image.ndim == 4 and rec["id"] == ids[0] and rec["shape"] == list(label.shape)
    assert cache_plan(cdir) == plan
    from unetr.data.preprocess import preprocess_files

    ref_image, ref_label, _ = preprocess_files(ds.train[0].images, plan, ds.train[0].label)
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(label, ref_label)


def test_second_build_reuses_and_epochs_never_read_sources(setup, monkeypatch):
    ds, plan, cdir = setup
    build_cache(ds, plan, cdir, workers=0, progress=False)
    seen = _built(monkeypatch)
    build_cache(ds, plan, cdir, workers=0, progress=False)
    assert seen == []

    def no_reading(*a, **k):
        raise AssertionError("a source file was read")

    import unetr.data.io as io

    monkeypatch.setattr(io, "_read_any", no_reading)
    for cid in cached_ids(cdir):
        image, label, _ = load_cached(cdir, cid)
        assert float(np.asarray(image).sum()) != 0


def test_other_plan_rebuilds_everything(setup, monkeypatch):
    ds, plan, cdir = setup
    build_cache(ds, plan, cdir, workers=0, progress=False)
    seen = _built(monkeypatch)
    other = plan.replace(target_spacing=(2.0, 2.0, 2.5))
    build_cache(ds, other, cdir, workers=0, progress=False)
    assert seen == [c.id for c in ds.train]
    assert cache_plan(cdir) == other
    _, label, rec = load_cached(cdir, ds.train[0].id)
    np.testing.assert_allclose(rec["target_spacing"], (2.0, 2.0, 2.5))


def test_changed_source_rebuilds_that_case_only(setup, monkeypatch):
    ds, plan, cdir = setup
    build_cache(ds, plan, cdir, workers=0, progress=False)
    from unetr.data.io import read_label, write_label

    target = ds.train[2]
    lab, geom = read_label(target.label)
    lab[lab == 1] = 0  # the liver is gone
    write_label(target.label, lab, geom)
    untouched = ds.train[3]
    st = os.stat(untouched.images[0])
    os.utime(untouched.images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert not case_is_fresh(cdir, target, plan) and case_is_fresh(cdir, untouched, plan)
    seen = _built(monkeypatch)
    build_cache(ds, plan, cdir, workers=0, progress=False)
    assert seen == [target.id]
    _, label, _ = load_cached(cdir, target.id)
    assert 1 not in np.unique(label)


def test_interrupted_build_leaves_no_half_case_and_resumes(setup, monkeypatch):
    ds, plan, cdir = setup
    real_save = cache_mod._save_npy
    calls = {"n": 0}

    def flaky(path, array):
        calls["n"] += 1
        if calls["n"] == 6:  # case 3's image is half written when the "power fails"
            tmp = path.with_name(f".{path.name}.x8k2j_q1.tmp")  # the name an earlier version's writer used
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
        return real_save(path, array)

    monkeypatch.setattr(cache_mod, "_save_npy", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(ds, plan, cdir, workers=0, progress=False)
    assert cached_ids(cdir) == [c.id for c in ds.train[:2]]  # complete cases only
    with pytest.raises(DataError, match="no complete cached case"):
        load_cached(cdir, ds.train[2].id)
    monkeypatch.setattr(cache_mod, "_save_npy", real_save)
    seen = _built(monkeypatch)
    build_cache(ds, plan, cdir, workers=0, progress=False)
    assert seen == [c.id for c in ds.train[2:]]
    assert not list(cdir.glob(".*.tmp")) and cached_ids(cdir) == [c.id for c in ds.train]


def test_duplicate_ids_rejected(setup):
    ds, plan, cdir = setup
    with pytest.raises(DataError, match="duplicate"):
        build_cache([ds.train[0], ds.train[0]], plan, cdir, workers=0, progress=False)
