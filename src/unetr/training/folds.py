"""Cross-validation training: every fold of the dataset's one ``splits.json``, each in its own run directory.

``unetr train DATASET --out runs/NAME --folds 5`` (or ``--folds 0 1 2 3 4``) writes::

    runs/NAME/plan.json, splits.json, cache/    one plan, one split and one cache for every fold
    runs/NAME/folds.json                         the dataset, the splits file and the folds trained
    runs/NAME/fold_K/                            a run directory (resumable on its own), plus:
        model_final.safetensors                  the weights at the end of training (the fold's model)
        validation/<case>.nii.gz                 its validation cases predicted by it, in their original space
        validation/<case>.npz                    with --save-probabilities: the probabilities, float16

Folds train one after another (each with every process under ``torchrun``), or with ``fold_parallel`` one
fold per process: process ``r`` trains folds ``r, r + N, ...`` alone on its own device. ``unetr cv`` then
evaluates the pooled out-of-fold predictions and decides the post-processing; ``unetr predict -m runs/NAME``
ensembles the folds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from unetr.config import InferConfig, ModelConfig, Plan, TrainConfig, load_json, save_json
from unetr.device import resolve_device
from unetr.errors import DataError
from unetr.training import distributed as D
from unetr.training.prepare import (
    RUN_PLAN_KEYS,
    check_writable,
    labelled_dataset,
    splits_path,
    train_dataset,
    training_plan,
)
from unetr.training.trainer import TrainResult

if TYPE_CHECKING:
    from unetr.data.cases import Dataset
    from unetr.data.splits import Splits

log = logging.getLogger(__name__)

FOLDS_FORMAT = "unetr-folds"
VALIDATION_DIR = "validation"


def fold_dir(out: os.PathLike, fold: int) -> Path:
    return Path(out) / f"fold_{fold}"


def parse_folds(values: Sequence[int]) -> Tuple[List[int], Optional[int]]:
    """``--folds``: one number ``N`` means all ``N`` folds; several numbers are the folds to train.

    Returns:
        ``(folds, number of folds or None when the split decides it)``.

    Raises:
        ValueError: no value, a negative fold, or one number below 2.
    """
    values = [int(v) for v in values]
    if not values:
        raise ValueError("--folds needs a number of folds (--folds 5) or the folds to train (--folds 0 1 2)")
    if len(values) == 1:
        if values[0] < 2:
            raise ValueError(f"--folds {values[0]}: one number is the number of folds, at least 2 (--folds 0 1 ... "
                             "lists folds; --fold K trains one)")
        return list(range(values[0])), values[0]
    if min(values) < 0:
        raise ValueError(f"--folds: fold numbers are 0 or more, got {values}")
    return sorted(set(values)), None


def folds_for_rank(folds: Sequence[int], rank: int, world_size: int) -> List[int]:
    """The folds process ``rank`` of ``world_size`` trains with ``--fold-parallel``."""
    return list(folds)[rank::world_size]


def train_folds(
    dataset: os.PathLike,
    out: os.PathLike,
    cfg: TrainConfig,
    folds: Sequence[int],
    *,
    num_folds: Optional[int] = None,
    fold_parallel: bool = False,
    save_probabilities: bool = False,
    preset_name: Optional[str] = None,
    plan_path: Optional[os.PathLike] = None,
    plan_overrides: Optional[dict] = None,
    model_overrides: Optional[dict] = None,
    cache_dir: Optional[os.PathLike] = None,
    workers: int = 2,
    env: Optional[D.DistEnv] = None,
    progress: bool = True,
) -> Dict[int, TrainResult]:
    """Train ``folds`` of the dataset's splits into ``out/fold_K`` and predict each fold's validation cases.

    Args:
        dataset: dataset folder, ``dataset.json`` or MONAI datalist (without its own validation list).
        out: the folder of folds.
        cfg: training settings (``fold`` and ``num_folds`` are set per fold).
        folds: the folds to train.
        num_folds: the number of folds (None: ``splits.json``'s when it exists, else ``cfg.num_folds``).
        fold_parallel: under ``torchrun``, each process trains its share of the folds alone.
        save_probabilities: also write each validation case's probabilities (``<case>.npz``, float16).
        preset_name / plan_path / plan_overrides / model_overrides / cache_dir / workers / progress: as for
            :func:`unetr.training.prepare.train_dataset`; the plan and the cache are shared by the folds.
        env: the distributed environment.

    Returns:
        ``{fold: TrainResult}`` of the folds this process trained.

    Raises:
        DataError: a datalist with its own validation list, a split that does not match, or too few cases.
        ValueError: folds outside ``0..num_folds - 1``.
    """
    from unetr.data.splits import resolve_splits

    env = env or D.DistEnv(device=resolve_device(cfg.device))
    out = Path(out)
    ds = _dataset_to_cross_validate(dataset)
    spath = splits_path(out, plan_path)
    num_folds = _number_of_folds(folds, num_folds, spath, cfg)
    if env.is_main:
        check_writable(out)
    splits = resolve_splits(ds, spath, num_folds, write=False, label=str(dataset))  # checked before anything is written
    plan_file = Path(plan_path) if plan_path is not None else out / "plan.json"
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    if env.is_main:
        _shared_plan_and_cache(ds, out, plan_path, cache, plan_overrides, preset_name, workers, progress)
        _save_new_splits(spath, splits)
        _record_folds(out, dataset, spath, num_folds, folds)
    D.barrier(env)

    mine, run_env = _folds_of_process(folds, env, fold_parallel)
    fold_over = {k: v for k, v in (plan_overrides or {}).items() if k in RUN_PLAN_KEYS}
    results: Dict[int, TrainResult] = {}
    for k in mine:
        fdir = fold_dir(out, k)
        val_ids = set(splits.fold(k)[1])
        if run_env.is_main:
            log.info("fold %d of %d (%d validation cases) -> %s", k, num_folds, len(val_ids), fdir)
        result = train_dataset(dataset, fdir, cfg.replace(fold=k, num_folds=num_folds), preset_name=preset_name,
                               plan_path=plan_file, plan_overrides=fold_over, model_overrides=model_overrides,
                               cache_dir=cache, workers=workers, env=run_env, progress=progress)
        finish_fold(fdir, result, [c for c in ds.labelled if c.id in val_ids], cfg=cfg, env=run_env,
                    save_probabilities=save_probabilities, progress=progress)
        results[k] = result
    return results


def _dataset_to_cross_validate(dataset: os.PathLike) -> Dataset:
    """The labelled dataset at ``dataset`` (:func:`labelled_dataset`), which names no validation cases of its own.

    Raises:
        DataError: no labelled cases, or a datalist with its own validation list (one fixed split).
    """
    ds = labelled_dataset(dataset)
    if ds.validation:
        raise DataError(f"{dataset}: the datalist names its own validation cases (one fixed split); train it with "
                        "--fold 0, or cross-validate a dataset without a 'validation' list")
    return ds


def _number_of_folds(folds: Sequence[int], num_folds: Optional[int], spath: Path, cfg: TrainConfig) -> int:
    """``num_folds``, else that of the ``splits.json`` at ``spath`` when it exists, else ``cfg.num_folds``.

    Raises:
        ValueError: a fold of ``folds`` outside ``0..num_folds - 1``.
    """
    from unetr.data.splits import load_splits

    if num_folds is None:
        num_folds = load_splits(spath).num_folds if spath.is_file() else cfg.num_folds
    outside = [k for k in folds if not 0 <= k < num_folds]
    if outside:
        raise ValueError(f"--folds: fold(s) {outside} outside 0..{num_folds - 1} ({num_folds} folds)")
    return num_folds


def _folds_of_process(folds: Sequence[int], env: D.DistEnv, fold_parallel: bool) -> Tuple[List[int], D.DistEnv]:
    """The folds this process trains and the environment it trains them in: every fold with every process, or
    with ``fold_parallel`` under torchrun its share (:func:`folds_for_rank`) alone, as a one-process run."""
    mine, run_env = list(folds), env
    if fold_parallel and env.distributed:
        mine = folds_for_rank(folds, env.rank, env.world_size)
        run_env = D.DistEnv(rank=0, local_rank=env.local_rank, world_size=1, device=env.device)
        log.info("process %d of %d trains fold(s) %s on %s", env.rank, env.world_size, mine, env.device)
    return mine, run_env


def _shared_plan_and_cache(ds, out: Path, plan_path: Optional[os.PathLike], cache: Path,
                           plan_overrides: Optional[dict], preset_name: Optional[str], workers: int,
                           progress: bool) -> None:
    """The one plan (:func:`unetr.training.prepare.training_plan`) and the cache of every labelled case, before
    any fold trains (so that processes training folds side by side never build the cache at the same time)."""
    from unetr.data.cache import build_cache

    plan = training_plan(ds, out / "plan.json", plan_path=plan_path, plan_overrides=plan_overrides,
                         preset_name=preset_name, workers=workers, progress=progress)
    build_cache(list(ds.labelled), plan, cache, workers=workers, progress=progress)


def _save_new_splits(spath: Path, splits: Splits) -> None:
    """The dataset's ``splits.json`` at ``spath``, unless it is there (rank 0, before any fold trains)."""
    from unetr.data.splits import save_splits

    if not spath.is_file():
        save_splits(spath, splits)
        log.info("wrote %s: %d folds of %d cases (seed %d, independent of the training seed)", spath,
                 splits.num_folds, len(splits.cases), splits.seed)


def _record_folds(out: Path, dataset: os.PathLike, spath: Path, num_folds: int, folds: Sequence[int]) -> None:
    """``out/folds.json``: where ``unetr cv`` finds the references and the split."""
    path = out / "folds.json"
    before = load_json(path).get("folds", []) if path.is_file() else []
    save_json(path, {"format": FOLDS_FORMAT, "version": 1, "dataset": str(Path(dataset).resolve()),
                     "splits": str(spath.resolve()), "num_folds": num_folds,
                     "folds": sorted(set(before) | set(folds))})


def finish_fold(fdir: Path, result: TrainResult, val_cases: Sequence, *, cfg: TrainConfig, env: D.DistEnv,
                save_probabilities: bool = False, progress: bool = False) -> List[Path]:
    """After a fold trained: write its final weights (``model_final.safetensors``) and predict its validation
    cases with them into ``fdir/validation`` in their original space (each process a share of the cases).

    Predictions made by the same iteration are kept (``validation/predicted.json``); a fold trained further
    predicts again.

    Returns:
        The label maps written or kept by this process.
    """
    from unetr.model import save_safetensors
    from unetr.package import FINAL_WEIGHTS

    model = result.model
    assert model is not None, "fit returns the final model"
    vdir = fdir / VALIDATION_DIR
    stamp = vdir / "predicted.json"
    fresh = stamp.is_file() and load_json(stamp).get("iteration") == result.iteration
    run_config = load_json(fdir / "config.json")
    if env.is_main and not fresh:  # with the model config in the header, as every run's weights
        save_safetensors(fdir / FINAL_WEIGHTS, model, metadata={"format": "unetr-run", "weights": "final",
                                                               "iteration": str(result.iteration)},
                         config=ModelConfig.from_dict(run_config["model"]))
    plan = Plan.from_dict(run_config["plan"])
    infer = InferConfig(overlap=cfg.val_overlap, device=str(env.device), precision=cfg.precision)
    was_training = model.training
    model.eval()
    written = []
    for case in list(val_cases)[env.rank::env.world_size]:
        written.append(_predict_validation_case(model, plan, case, vdir, infer, save_probabilities, overwrite=not fresh))
    model.train(was_training)
    D.barrier(env)
    if env.is_main and not fresh:
        save_json(stamp, {"iteration": result.iteration, "cases": sorted(c.id for c in val_cases),
                          "probabilities": save_probabilities})
    if env.is_main:
        log.info("%s: %d validation case(s) predicted with the final weights (iteration %d) -> %s", fdir.name,
                 len(val_cases), result.iteration, vdir)
    return written


def _predict_validation_case(model, plan: Plan, case, vdir: Path, infer: InferConfig, save_probabilities: bool,
                             overwrite: bool) -> Path:
    from unetr.errors import UnetrError
    from unetr.inference.ensemble import predict_ensemble_case
    from unetr.inference.predict import predict_case

    if save_probabilities:
        r = predict_ensemble_case([lambda: model], plan, case.images, vdir, infer, name=case.id, probabilities=True,
                                  overwrite=overwrite)
    else:
        r = predict_case(model, plan, case.images, vdir, infer, name=case.id, overwrite=overwrite)
    if r.status == "failed":
        raise UnetrError(f"validation case {case.id}: {r.message}")
    return vdir / f"{case.id}.nii.gz"


__all__ = ["FOLDS_FORMAT", "VALIDATION_DIR", "finish_fold", "fold_dir", "folds_for_rank", "parse_folds", "train_folds"]
