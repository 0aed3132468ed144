"""Cross-validation splits that never move: made once from a fixed seed, written as ``splits.json``, reused.

The split of a dataset's labelled cases into folds depends only on the case ids and :data:`SPLIT_SEED`,
never on the training ``--seed``, and it is written once, as ``splits.json`` next to the plan, so that every
fold and every later run on the dataset reads the same folds. A dataset whose cases no longer match the
file is refused (an added case would otherwise move others between training and validation).

``splits.json``::

    {"format": "unetr-splits", "version": 1, "seed": 12345, "source": "kfold",
     "cases": ["case_000", ...],                               # sorted
     "folds": [{"train": [...], "validation": [...]}, ...]}   # fold k: its validation cases and the rest

A MONAI datalist that names its own ``validation`` cases is one fixed split (``source: "datalist"``, one
fold). ``fold = "all"`` trains on every case with no validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Tuple, Union

import numpy as np

from unetr.config import load_json, save_json
from unetr.errors import DataError

if TYPE_CHECKING:
    from unetr.data.cases import Case, Dataset

log = logging.getLogger(__name__)

SPLIT_SEED = 12345  # fixed: the folds never depend on the training seed
SPLITS_FORMAT = "unetr-splits"
SPLITS_NAME = "splits.json"
Fold = Union[int, str]  # 0, 1, ... or "all"


def too_few_cases_message(n: int, num_folds: int) -> str:
    """What to do when ``n`` labelled cases cannot make ``num_folds`` folds (each fold needs a case)."""
    fewer = f", or use fewer folds (--folds {n} or --set num_folds={n})" if n >= 2 else ""
    return (f"{n} case(s) cannot be split into {num_folds} folds: train on every case with --fold all "
            f"(no validation; the last weights are the model){fewer}")


def check_fold(fold: Fold, num_folds: int) -> Fold:
    """``fold`` as an int in ``[0, num_folds)`` or ``"all"``.

    Raises:
        ValueError: naming the fold.
    """
    if fold == "all":
        return "all"
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be 'all' or in 0..{num_folds - 1}, got {fold!r}")
    return fold


def kfold(case_ids: Sequence[str], num_folds: int, seed: int = SPLIT_SEED) -> Tuple[Tuple[str, ...], ...]:
    """The validation ids of each fold: ids sorted, shuffled with ``seed``, cut into ``num_folds`` parts.

    The same ids give the same folds whatever their order; the folds partition the ids.

    Raises:
        ValueError: fewer than 2 folds, duplicate ids. DataError: fewer ids than folds (with what to do).
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    ordered = sorted(case_ids)
    if len(set(ordered)) != len(ordered):
        raise ValueError("duplicate case ids")
    if len(ordered) < num_folds:
        raise DataError(too_few_cases_message(len(ordered), num_folds))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return tuple(tuple(ordered[i] for i in sorted(int(j) for j in part)) for part in np.array_split(perm, num_folds))


@dataclass(frozen=True)
class Splits:
    """A dataset's folds: ``validation[k]`` holds fold ``k``'s validation ids; every other case trains.

    Attributes:
        cases: every labelled case id, sorted.
        validation: one tuple of ids per fold (a partition of ``cases`` for ``kfold``).
        seed: the shuffling seed (``kfold``).
        source: ``kfold`` or ``datalist`` (the datalist's own validation list: one fold).
    """

    cases: Tuple[str, ...]
    validation: Tuple[Tuple[str, ...], ...]
    seed: int = SPLIT_SEED
    source: str = "kfold"

    @property
    def num_folds(self) -> int:
        return len(self.validation)

    def fold(self, fold: Fold) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        """``(train ids, validation ids)`` of ``fold`` (``"all"``: every case trains, none validates)."""
        fold = check_fold(fold, self.num_folds)
        if fold == "all":
            return self.cases, ()
        val = set(self.validation[fold])
        return tuple(c for c in self.cases if c not in val), self.validation[fold]

    def to_dict(self) -> dict:
        return {"format": SPLITS_FORMAT, "version": 1, "seed": self.seed, "source": self.source,
                "cases": list(self.cases),
                "folds": [{"train": list(self.fold(k)[0]), "validation": list(v)} for k, v in enumerate(self.validation)]}

    @classmethod
    def from_dict(cls, data: dict, source: str = "splits.json") -> Splits:
        """Read :meth:`to_dict`'s form (a hand-written file with the same keys is fine).

        Raises:
            DataError: not a splits file, or folds naming cases the file does not list.
        """
        if not isinstance(data, dict) or data.get("format") != SPLITS_FORMAT or not isinstance(data.get("folds"), list):
            raise DataError(f"{source}: not a unetr splits file (format {SPLITS_FORMAT!r} with a 'folds' list)")
        try:
            cases = tuple(sorted(str(c) for c in data["cases"]))
            validation = tuple(tuple(sorted(str(c) for c in f["validation"])) for f in data["folds"])
        except (KeyError, TypeError) as e:
            raise DataError(f"{source}: malformed splits file (missing {e})") from None
        unknown = sorted({c for v in validation for c in v} - set(cases))
        if unknown:
            raise DataError(f"{source}: folds name cases that 'cases' does not list: {unknown[:5]}")
        if not validation:
            raise DataError(f"{source}: no folds")
        return cls(cases, validation, int(data.get("seed", SPLIT_SEED)), str(data.get("source", "kfold")))


def make_splits(case_ids: Sequence[str], num_folds: int, seed: int = SPLIT_SEED) -> Splits:
    """K-fold splits of ``case_ids`` (:func:`kfold`)."""
    return Splits(tuple(sorted(case_ids)), kfold(case_ids, num_folds, seed), seed, "kfold")


def datalist_splits(train_ids: Sequence[str], val_ids: Sequence[str]) -> Splits:
    """The one fold a datalist defines with its own ``validation`` list."""
    return Splits(tuple(sorted(list(train_ids) + list(val_ids))), (tuple(sorted(val_ids)),), SPLIT_SEED, "datalist")


def save_splits(path: Union[str, Path], splits: Splits) -> Path:
    save_json(path, splits.to_dict())
    return Path(path)


def load_splits(path: Union[str, Path]) -> Splits:
    return Splits.from_dict(load_json(path), str(path))


def dataset_splits(dataset: Dataset, num_folds: int) -> Splits:
    """The splits a dataset would get now: its datalist's validation list when it has one, else k-fold over
    the labelled cases."""
    if dataset.validation:
        return datalist_splits([c.id for c in dataset.train if c.label], [c.id for c in dataset.validation if c.label])
    return make_splits([c.id for c in dataset.train if c.label], num_folds)


def check_matches(splits: Splits, case_ids: Sequence[str], path: Union[str, Path], dataset: str) -> None:
    """Refuse a dataset whose labelled cases are not those ``splits`` was made for.

    Raises:
        DataError: naming the cases added and missing, and what to do.
    """
    now, then = set(case_ids), set(splits.cases)
    if now == then:
        return
    added, missing = sorted(now - then), sorted(then - now)
    parts = [f"{len(added)} added ({', '.join(added[:5])}{' ...' if len(added) > 5 else ''})" if added else "",
             f"{len(missing)} missing ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})" if missing else ""]
    raise DataError(f"{path} was made for {len(then)} case(s) and {dataset} has {len(now)}: "
                    f"{', '.join(p for p in parts if p)}; with these cases the folds would move. Train on the "
                    f"dataset as it was, or start anew in another --out (a new plan and splits.json)")


def resolve_splits(dataset: Dataset, path: Union[str, Path], num_folds: int, *, write: bool = True,
                   label: str = "the dataset") -> Splits:
    """The dataset's splits: read from ``path`` (checked against the dataset's cases), or made and written
    there (``write``: only rank 0 writes; every rank computes the same folds).

    Raises:
        DataError: the file does not match the dataset, asks for another number of folds, or there are too
            few cases for the folds (with what to do).
    """
    path = Path(path)
    ids = [c.id for c in dataset.labelled]
    if path.is_file():
        splits = load_splits(path)
        check_matches(splits, ids, path, label)
        if splits.source == "kfold" and splits.num_folds != num_folds:
            raise DataError(f"{path} has {splits.num_folds} folds and this run asks for {num_folds}; the splits of a "
                            f"dataset never change: use --folds/--set num_folds={splits.num_folds}, or another --out")
        return splits
    try:
        splits = dataset_splits(dataset, num_folds)
    except DataError as e:
        raise DataError(f"{label}: {e}") from None
    if write:
        save_splits(path, splits)
        log.info("wrote %s: %d fold(s) of %d case(s) (seed %d, independent of the training seed)", path,
                 splits.num_folds, len(splits.cases), splits.seed)
    return splits


# --------------------------------------------------------------------------------- over Case objects


def split_cases(cases: Sequence[Case], fold: int = 0, num_folds: int = 5, seed: int = SPLIT_SEED
                ) -> Tuple[Tuple[Case, ...], Tuple[Case, ...]]:
    """``(train, validation)`` cases of fold ``fold`` (or ``"all"``) of :func:`kfold` over the cases' ids.

    Raises:
        ValueError: a fold outside ``0..num_folds-1`` or fewer than 2 folds. DataError: too few cases.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    check_fold(fold, num_folds)  # before the split: a bad fold is named even where the cases are too few
    by_id = {c.id: c for c in cases}
    if fold == "all":
        return tuple(by_id[i] for i in sorted(by_id)), ()
    train, val = make_splits(list(by_id), num_folds, seed).fold(fold)
    return tuple(by_id[i] for i in train), tuple(by_id[i] for i in val)


__all__ = ["SPLIT_SEED", "SPLITS_NAME", "Splits", "check_fold", "check_matches", "datalist_splits", "dataset_splits",
           "kfold", "load_splits", "make_splits", "resolve_splits", "save_splits", "split_cases",
           "too_few_cases_message"]
