"""Splits that never move: k-fold from a fixed seed, splits.json written once, a changed dataset refused."""

import json

import pytest

from unetr.data.cases import Case, Dataset
from unetr.data.splits import (
    SPLIT_SEED,
    Splits,
    datalist_splits,
    kfold,
    load_splits,
    make_splits,
    resolve_splits,
    split_cases,
)
from unetr.errors import DataError


def _ids(n):
    return [f"c{i:02d}" for i in range(n)]


def _dataset(n, validation=0):
    cases = tuple(Case(i, (f"{i}.nii.gz",), f"{i}_l.nii.gz") for i in _ids(n))
    return Dataset("/nowhere", "ds", cases[: n - validation], validation=cases[n - validation:])


@pytest.mark.parametrize("n,k", [(11, 5), (6, 3), (2, 2)])
def test_folds_partition_the_cases_whatever_their_order(n, k):
    folds = kfold(_ids(n), k)
    flat = [c for f in folds for c in f]
    assert sorted(flat) == _ids(n) and len(flat) == n  # every case validates exactly once
    assert kfold(list(reversed(_ids(n))), k) == folds
    assert all(len(f) in (n // k, n // k + 1) for f in folds)
    s = make_splits(_ids(n), k)
    for fold in range(k):
        train, val = s.fold(fold)
        assert not set(train) & set(val) and sorted(train + val) == _ids(n)
    assert s.fold("all") == (tuple(_ids(n)), ())


def test_the_seed_is_fixed_and_changes_the_folds():
    assert make_splits(_ids(20), 5).seed == SPLIT_SEED
    assert kfold(_ids(20), 5, seed=1) != kfold(_ids(20), 5, seed=2)


@pytest.mark.parametrize("n,k,fewer", [(2, 5, True), (1, 5, False)])
def test_too_few_cases_say_what_to_do(n, k, fewer):
    with pytest.raises(DataError) as e:
        kfold(_ids(n), k)
    msg = str(e.value)
    assert f"{n} case(s) cannot be split into {k} folds" in msg and "--fold all" in msg
    assert ("--folds 2" in msg) == fewer  # fewer folds only where there are two cases or more


@pytest.mark.parametrize("fold,num_folds", [(5, 5), (-1, 5), ("two", 5), (0, 1)])
def test_bad_fold_arguments(fold, num_folds):
    cases = [Case(i, (f"{i}.nii.gz",)) for i in _ids(10)]
    with pytest.raises(ValueError, match="fold"):
        split_cases(cases, fold, num_folds)


def test_split_cases_uses_the_ids_split():
    cases = [Case(i, (f"{i}.nii.gz",)) for i in _ids(7)]
    train, val = split_cases(cases, 1, 3)
    assert tuple(c.id for c in val) == kfold(_ids(7), 3)[1]
    assert len(train) + len(val) == 7


def test_written_once_then_read_and_checked(tmp_path):
    path = tmp_path / "splits.json"
    first = resolve_splits(_dataset(9), path, 3)
    assert path.is_file() and load_splits(path) == first
    stamp = path.stat().st_mtime_ns
    assert resolve_splits(_dataset(9), path, 3) == first and path.stat().st_mtime_ns == stamp  # never rewritten
    with pytest.raises(DataError, match=r"made for 9 case\(s\).*1 added \(c09\)"):
        resolve_splits(_dataset(10), path, 3)  # an added case would move others between the folds
    with pytest.raises(DataError, match=r"1 missing \(c08\)"):
        resolve_splits(_dataset(8), path, 3)
    with pytest.raises(DataError, match="has 3 folds and this run asks for 5"):
        resolve_splits(_dataset(9), path, 5)


def test_not_written_when_asked_not_to(tmp_path):
    resolve_splits(_dataset(6), tmp_path / "splits.json", 3, write=False)
    assert not (tmp_path / "splits.json").exists()


def test_a_hand_written_file_is_used_and_a_bad_one_refused(tmp_path):
    path = tmp_path / "splits.json"
    custom = Splits(tuple(_ids(4)), (("c00", "c01"), ("c02", "c03")))
    path.write_text(json.dumps(custom.to_dict()))
    assert resolve_splits(_dataset(4), path, 2).fold(0) == (("c02", "c03"), ("c00", "c01"))
    path.write_text(json.dumps({"format": "unetr-splits", "cases": ["a"], "folds": [{"validation": ["b"]}]}))
    with pytest.raises(DataError, match="does not list"):
        load_splits(path)
    path.write_text(json.dumps([{"train": [], "val": []}]))
    with pytest.raises(DataError, match="not a unetr splits file"):
        load_splits(path)


def test_a_datalists_validation_list_is_its_one_fold(tmp_path):
    s = resolve_splits(_dataset(5, validation=2), tmp_path / "splits.json", 5)
    assert s.source == "datalist" and s.num_folds == 1 and s.fold(0) == (("c00", "c01", "c02"), ("c03", "c04"))
    assert datalist_splits(["b", "a"], ["c"]).cases == ("a", "b", "c")
