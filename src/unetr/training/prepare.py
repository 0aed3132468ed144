"""From a dataset to a training run: dataset -> plan -> cache -> checks before step 1 -> :func:`fit`.

Rerunning the same ``unetr train`` command reuses the plan and the cache it made, and :func:`fit` resumes
from the run directory's ``last.pt``, so an interrupted run continues instead of starting over.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch

from unetr.config import ModelConfig, Plan, TrainConfig
from unetr.data.sampling import rot90_note
from unetr.device import resolve_device
from unetr.errors import DataError, UnetrError
from unetr.recipes import resolve_epochs
from unetr.training import distributed as D
from unetr.training.batches import CachedCases
from unetr.training.budget import TimeBudget
from unetr.training.lock import run_lock
from unetr.training.resume import stored_config
from unetr.training.run_dir import check_same_settings, effective_model_config, move_run_aside, run_config
from unetr.training.trainer import TrainResult, fit

if TYPE_CHECKING:
    from unetr.data.cases import Case, Dataset

log = logging.getLogger(__name__)

RUN_PLAN_KEYS = ("roi", "preset")  # plan settings that do not change the preprocessed arrays
PREPARE_MARKER = ".prepare.json"  # in the run directory: rank 0's preparation, watched by the other ranks


def check_writable(folder: Path) -> None:
    """Fail early, with a message, when ``folder`` cannot be created or written (nothing is created here: the
    run directory appears once the inputs are checked)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise UnetrError(f"{folder}: cannot write the run directory there ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UnetrError(f"{folder}: cannot write the run directory there ({existing} is not writable)")


def check_cases(case_ids: Sequence[str], cache_dir: Path, plan: Plan, pad_to_roi: bool) -> None:
    """Labels inside the declared classes, and every image at least as large as the ROI: smaller ones are an
    error without padding, and a notice with it (their crops are mostly zeros).

    Raises:
        DataError: naming the offending cases.
    """
    from unetr.data.cache import load_cached

    bad_labels, small = [], []
    largest = [0, 0, 0]
    for cid in case_ids:
        image, label, record = load_cached(cache_dir, cid)
        if label is None:
            raise DataError(f"case {cid}: no label in the cache {cache_dir}")
        present = [int(k) for k in record.get("class_voxels", {})] or [int(label.max())]
        extra = sorted(k for k in present if k >= plan.num_classes)
        if extra:
            bad_labels.append(f"{cid} (labels {extra})")
        if any(s < r for s, r in zip(image.shape[1:], plan.roi)):
            small.append(f"{cid} {tuple(image.shape[1:])}")
            largest = [max(a, b) for a, b in zip(largest, image.shape[1:])]
    if bad_labels:
        raise DataError(f"labels outside the {plan.num_classes} declared classes {list(plan.class_names)}: "
                        + ", ".join(bad_labels[:10]) + (" ..." if len(bad_labels) > 10 else ""))
    if small and not pad_to_roi:
        raise DataError(f"ROI {plan.roi} is larger than {len(small)} preprocessed image(s) and padding is off "
                        f"(pad_to_roi=false): " + ", ".join(small[:10]) + " -- use a smaller --roi or pad")
    if small:
        fits = [-(-s // 16) * 16 for s in largest]
        log.warning("ROI %s is larger than %d of %d preprocessed image(s) (%s%s): their crops are padded with zeros; "
                    "--roi %s would fit the largest of them", plan.roi, len(small), len(case_ids), ", ".join(small[:3]),
                    " ..." if len(small) > 3 else "", " ".join(str(min(f, r)) for f, r in zip(fits, plan.roi)))


def train_dataset(
    dataset: os.PathLike,
    out: os.PathLike,
    cfg: TrainConfig,
    *,
    preset_name: Optional[str] = None,
    plan_path: Optional[os.PathLike] = None,
    plan_overrides: Optional[dict] = None,
    model_overrides: Optional[dict] = None,
    cache_dir: Optional[os.PathLike] = None,
    workers: int = 2,
    env: Optional[D.DistEnv] = None,
    progress: bool = True,
    restart: bool = False,
    time_budget: Optional[TimeBudget] = None,
) -> TrainResult:
    """Plan and preprocess a dataset when needed (both cached), check it, then :func:`fit`.

    ``out/plan.json`` and the cache (``out/cache`` unless ``cache_dir``) are reused when present, so rerunning
    the same command resumes instead of starting over. The run directory is locked while this runs
    (:mod:`unetr.training.lock`), and a rerun whose settings would change what the run there trains is
    refused unless ``restart``.

    Args:
        dataset: dataset folder, ``dataset.json`` or MONAI datalist.
        out: the run directory.
        cfg: training settings.
        preset_name: model preset (default: the plan's).
        plan_path: an existing ``plan.json`` (e.g. from ``unetr plan``); else one is made (and saved in ``out``).
        plan_overrides: :class:`Plan` fields for a new plan (``roi``, ``target_spacing``, ...).
        model_overrides: :class:`ModelConfig` fields (``dropout``, ``feature_size``, ...).
        cache_dir: the preprocessed cache.
        workers: processes for planning and preprocessing.
        env: the distributed environment (one process when omitted).
        progress: progress bars.
        restart: move an earlier run in ``out`` aside (:func:`move_run_aside`) and start a new one.
        time_budget: the wall time of the whole command (planning and preprocessing included); the
            iteration count is lowered to what fits (:mod:`unetr.training.budget`).

    Raises:
        DataError: the dataset cannot be trained on (nothing is written then).
        RunLockedError: another process trains in ``out``.
        RunSettingsError: ``out`` holds a run of other settings (without ``restart``).
    """
    env = env or D.DistEnv(device=resolve_device(cfg.device))
    out = Path(out)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    if env.is_main:
        check_writable(out)
    ds = labelled_dataset(dataset)
    spath = splits_path(out, plan_path)
    cfg, train_cases, val_cases = _run_fold(ds, dataset, out, cfg, spath, plan_path=plan_path, restart=restart,
                                            world_size=env.world_size)
    train_ids, val_ids = [c.id for c in train_cases], [c.id for c in val_cases]
    if restart and env.is_main:
        _move_earlier_run_aside(out)

    with run_lock(out, env):
        plan, plan_existed = _plan(ds, out, env, plan_path=plan_path, plan_overrides=plan_overrides,
                                   preset_name=preset_name, workers=workers, progress=progress)
        run_plan = _run_plan(plan, plan_overrides, preset_name, plan_existed=plan_existed, env=env)
        model_cfg = run_plan.model_config(**(model_overrides or {}))
        if env.is_main:  # before the cache: a refused rerun changes nothing
            _refuse_other_settings(out, model_cfg, run_plan, cfg, train_ids, val_ids)
            write_splits(ds, str(dataset), cfg, spath)
        _cache(list(train_cases) + list(val_cases), plan, cache, env, marker=out / PREPARE_MARKER, workers=workers,
               progress=progress)
        check_cases(train_ids + val_ids, cache, run_plan, cfg.pad_to_roi)
        if env.is_main:
            _log_start(dataset, out, run_plan, model_cfg, cfg, train_ids, val_ids)
        return fit(run_dir=out, train_ids=train_ids, val_ids=val_ids, load=CachedCases(cache), plan=run_plan,
                   model_cfg=model_cfg, cfg=cfg, env=env, progress=progress, hold_lock=False,
                   time_budget=time_budget)


def labelled_dataset(dataset: os.PathLike) -> Dataset:
    """The dataset at ``dataset`` (folder, ``dataset.json`` or MONAI datalist), which has labelled cases.

    Raises:
        DataError: it has no labelled training cases.
    """
    from unetr.data.cases import load_dataset

    ds = load_dataset(dataset)
    if not ds.labelled:
        raise DataError(f"{dataset}: no labelled training cases")
    return ds


def _run_fold(ds: Dataset, dataset: os.PathLike, out: Path, cfg: TrainConfig, spath: Path, *,
              plan_path: Optional[os.PathLike], restart: bool, world_size: int
              ) -> Tuple[TrainConfig, List[Case], List[Case]]:
    """The run's settings (the number of folds of the ``splits.json`` at ``spath``; counts in epochs made
    iterations for ``world_size`` processes) and the training and validation cases of its fold
    (:func:`fold_cases`; nothing is written). A ``restart`` that moves the run's own ``splits.json`` aside
    with the run makes a new split.

    Raises:
        DataError: the fold has no training cases (and as :func:`fold_cases`).
    """
    anew = restart and spath.parent.resolve() == out.resolve()  # the run's own splits.json goes aside with it
    if not anew:
        cfg = folds_of_splits(cfg, spath)
    train_cases, val_cases = fold_cases(ds, str(dataset), out, cfg, plan_path=plan_path, write=False, anew=anew)
    if not train_cases:
        raise DataError(f"{dataset}: no training cases after the split (fold {cfg.fold} of {cfg.num_folds})")
    cfg = resolve_epochs(cfg, len(train_cases), world_size)  # counts in epochs (--recipe btcv) -> iterations
    return cfg, train_cases, val_cases


def _move_earlier_run_aside(out: Path) -> None:
    """``--restart``: the run in ``out`` goes to ``out.old-N`` (:func:`move_run_aside`), with a warning."""
    moved = move_run_aside(out)
    if moved is not None:
        log.warning("moved the earlier run in %s to %s; starting a new run", out, moved)


def _refuse_other_settings(out: Path, model_cfg: ModelConfig, run_plan: Plan, cfg: TrainConfig,
                           train_ids: Sequence[str], val_ids: Sequence[str]) -> None:
    """Refuse a rerun in ``out`` whose settings would change what the run there trains.

    Raises:
        RunSettingsError: naming the differing settings (:func:`check_same_settings`).
    """
    earlier = stored_config(out)
    if earlier is not None:
        config = run_config(effective_model_config(model_cfg, run_plan, cfg), run_plan, cfg, train_ids, val_ids)
        check_same_settings(earlier[0], config, earlier[1])


def _log_start(dataset: os.PathLike, out: Path, run_plan: Plan, model_cfg: ModelConfig, cfg: TrainConfig,
               train_ids: Sequence[str], val_ids: Sequence[str]) -> None:
    """What is trained on what, and the rot90 note when it applies (rank 0)."""
    log.info("training %s (%s preset, %.1fM parameters) on %d cases, validating on %d; ROI %s; run %s",
             dataset, run_plan.preset, _count_params(model_cfg) / 1e6, len(train_ids), len(val_ids),
             run_plan.roi, out)
    note = rot90_note(run_plan.roi, cfg.rot90_prob)
    if note:
        log.info("%s", note)


def splits_path(out: Path, plan_path: Optional[os.PathLike]) -> Path:
    """Where a run's ``splits.json`` lives: next to its plan (``--plan``'s, else the run's own)."""
    from unetr.data.splits import SPLITS_NAME

    return (Path(plan_path).parent if plan_path is not None else Path(out)) / SPLITS_NAME


def folds_of_splits(cfg: TrainConfig, path: Path) -> TrainConfig:
    """``cfg`` with the number of folds of an existing ``splits.json`` (the file decides it once written)."""
    from unetr.data.splits import load_splits

    if not path.is_file():
        return cfg
    splits = load_splits(path)
    if splits.source == "kfold" and splits.num_folds != cfg.num_folds:
        log.info("%s has %d folds; num_folds %d does not apply", path, splits.num_folds, cfg.num_folds)
        return cfg.replace(num_folds=splits.num_folds)
    return cfg


def write_splits(ds: Dataset, label: str, cfg: TrainConfig, path: Path) -> None:
    """Write the dataset's ``splits.json`` at ``path`` unless it is there (once the run's inputs are checked,
    next to its plan); ``fold="all"`` needs none."""
    from unetr.data.splits import resolve_splits

    if cfg.fold != "all" and not path.is_file():
        resolve_splits(ds, path, cfg.num_folds, write=True, label=label)


def fold_cases(ds: Dataset, label: str, out: Path, cfg: TrainConfig, *, plan_path: Optional[os.PathLike] = None,
               write: bool = True, anew: bool = False) -> Tuple[List[Case], List[Case]]:
    """The training and validation cases of ``cfg.fold`` from the dataset's one ``splits.json`` (next to the
    plan; written on first use, then only read). ``fold="all"``: every labelled case trains, none validates.
    ``write``: write a new ``splits.json`` now (:func:`train_dataset` writes it later, with the plan);
    ``anew``: a ``--restart`` moves the run and its ``splits.json`` aside, so a new split is made.

    Raises:
        DataError: the splits file does not match the dataset or the folds asked for; too few cases for the
            folds (the message says to use ``--fold all`` or fewer folds); or ``out`` holds a run begun before
            its splits were written down (a resume could see another split). A resume of another fold is
            refused by the run's settings check (:func:`unetr.training.run_dir.check_same_settings`).
    """
    from unetr.data.splits import dataset_splits, resolve_splits, save_splits

    path = splits_path(out, plan_path)
    exists = path.is_file() and not anew
    if cfg.fold == "all" and not exists:
        ids: Sequence[str] = [c.id for c in ds.labelled]
        train_ids, val_ids = sorted(ids), ()
    else:
        if not exists and (out / "last.pt").is_file() and not anew:
            raise DataError(f"{out} holds a run begun without {path}: its validation cases were drawn with its "
                            "--seed, and a resume could see other ones; start anew in another --out (or --restart)")
        if exists:
            splits = resolve_splits(ds, path, cfg.num_folds, write=False, label=label)
        else:
            try:
                splits = dataset_splits(ds, cfg.num_folds)
            except DataError as e:
                raise DataError(f"{label}: {e}") from None
            if write:
                save_splits(path, splits)
        if cfg.fold != "all" and cfg.fold >= splits.num_folds:
            raise DataError(f"fold {cfg.fold}: {path} has {splits.num_folds} fold(s) (0..{splits.num_folds - 1})"
                            + (" from the datalist's own validation list" if splits.source == "datalist" else ""))
        train_ids, val_ids = splits.fold(cfg.fold)
    by_id = {c.id: c for c in ds.labelled}
    return [by_id[i] for i in train_ids], [by_id[i] for i in val_ids]


def new_plan(ds: Dataset, path: Path, *, plan_overrides: Optional[dict], preset_name: Optional[str], workers: int,
             progress: bool) -> Plan:
    """A new plan of ``ds`` from ``plan_overrides`` and the preset (fingerprinted with the body rule of that
    plan: :func:`unetr.data.plan.plan_dataset`), saved at ``path`` with its fingerprint (one run or the folds)."""
    from unetr.data.plan import plan_dataset, save_plan

    overrides = dict(plan_overrides or {})
    if preset_name:
        overrides.setdefault("preset", preset_name)
    plan, fp = plan_dataset(ds, workers=workers, progress=progress, **overrides)
    save_plan(plan, path, fingerprint=fp)
    return plan


def training_plan(ds: Dataset, own_plan: Path, *, plan_path: Optional[os.PathLike], plan_overrides: Optional[dict],
                  preset_name: Optional[str], workers: int, progress: bool) -> Plan:
    """The plan to train with (one run or the folds): ``plan_path`` (the user's file: read, never written),
    else ``own_plan`` when it exists, else a new plan saved there (:func:`new_plan`)."""
    from unetr.data.plan import load_plan

    if plan_path is not None:
        return load_plan(plan_path)
    if own_plan.is_file():
        log.info("reusing %s", own_plan)
        return load_plan(own_plan)
    return new_plan(ds, own_plan, plan_overrides=plan_overrides, preset_name=preset_name, workers=workers,
                    progress=progress)


def _plan(ds: Dataset, out: Path, env: D.DistEnv, *, plan_path: Optional[os.PathLike],
          plan_overrides: Optional[dict], preset_name: Optional[str], workers: int, progress: bool
          ) -> Tuple[Plan, bool]:
    """The plan (``plan_path``, else ``out/plan.json``, else a new one saved there), made on rank 0 while the
    other ranks wait on the marker ``out/.prepare.json`` outside every collective
    (:func:`unetr.training.distributed.main_first`: fingerprinting a large dataset may take longer than the
    process group's timeout); every rank gets it.

    Returns:
        ``(plan, whether it existed before this call)``.
    """
    own_plan = out / "plan.json"
    plan_existed = plan_path is not None or own_plan.is_file()

    def make() -> dict:
        return training_plan(ds, own_plan, plan_path=plan_path, plan_overrides=plan_overrides,
                             preset_name=preset_name, workers=workers, progress=progress).to_dict()

    plan = Plan.from_dict(D.main_first(make, env, out / PREPARE_MARKER,
                                       describe_wait=lambda: f"planning from {len(ds.train)} cases"))
    return plan, plan_existed


def _cache(cases: Sequence[Case], plan: Plan, cache: Path, env: D.DistEnv, *, marker: Path, workers: int,
           progress: bool) -> None:
    """The preprocessed cache of ``cases``, built on rank 0 while the other ranks wait on ``marker`` outside
    every collective (:func:`unetr.training.distributed.main_first`), logging how far the cache has come."""
    from unetr.data.cache import build_cache, cached_ids

    def waiting_for() -> str:
        have = len(set(cached_ids(cache)) & {c.id for c in cases}) if cache.is_dir() else 0
        return f"{have} of {len(cases)} cases in the cache {cache}"

    def build() -> None:
        build_cache(cases, plan, cache, workers=workers, progress=progress)

    D.main_first(build, env, marker, describe_wait=waiting_for)


def _run_plan(plan: Plan, plan_overrides: Optional[dict], preset_name: Optional[str], *, plan_existed: bool,
              env: D.DistEnv) -> Plan:
    """The plan this run trains with: the preset and the ROI do not change the preprocessed arrays, so they
    may differ from the cached plan; other settings of an existing plan are ignored, with a warning."""
    run_changes = {k: v for k, v in (plan_overrides or {}).items() if k in RUN_PLAN_KEYS}
    if preset_name:
        run_changes["preset"] = preset_name
    run_plan = plan.replace(**run_changes)
    ignored = sorted(k for k, v in (plan_overrides or {}).items()  # those the plan holds already are no news
                     if k not in RUN_PLAN_KEYS and getattr(plan, k, None) != v)
    if ignored and plan_existed and env.is_main:
        log.warning("the plan exists already; ignoring the plan settings %s (use a new --out, or --restart)",
                    ", ".join(ignored))
    return run_plan


def _count_params(model_cfg: ModelConfig) -> int:
    from unetr.model import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(model_cfg).parameters())


__all__ = ["check_cases", "check_writable", "fold_cases", "folds_of_splits", "labelled_dataset", "new_plan", "splits_path",
           "train_dataset", "training_plan", "write_splits"]
