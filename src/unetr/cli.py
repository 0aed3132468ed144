"""Command line: argument parsing only. Each subcommand calls one plain function of the package.

Every subcommand has an ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
function that imports what it needs lazily (so ``unetr --help`` is fast) and calls it. Errors that users
cause (bad files, bad options) are ``ValueError``/``FileNotFoundError``/``UnetrError``; they are printed as
one line naming the problem and give exit code 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from typing import Callable, Optional, Sequence, Tuple

log = logging.getLogger("unetr")


# ------------------------------------------------------------------------------------------ summary
def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="print the layers, output shapes, parameters and FLOPs of a model")
    p.add_argument("--preset", default="paper", help="paper | tutorial | small | tiny")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--out-channels", type=int, default=14)
    p.add_argument("--img-size", type=int, nargs="+", default=[96], help="one value (cube) or three")
    p.add_argument("--depth", type=int, default=3, help="module nesting depth shown in the table")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (needs one forward pass)")
    p.set_defaults(func=_run_summary)


def _run_summary(args) -> int:
    from unetr.config import preset
    from unetr.model.summary import summarize

    size = args.img_size * 3 if len(args.img_size) == 1 else args.img_size
    cfg = preset(args.preset, in_channels=args.in_channels, out_channels=args.out_channels, img_size=tuple(size))
    print(summarize(cfg, depth=args.depth, flops=not args.no_flops))
    return 0


def _roi(values: Sequence[int]) -> Tuple[int, int, int]:
    """``--roi`` as three sizes: one value (a cube) or three, each a positive multiple of the patch size 16."""
    given = " ".join(str(v) for v in values)
    if len(values) not in (1, 3):
        raise ValueError(f"--roi {given}: give one size (a cube) or three, e.g. --roi 96 or --roi 128 128 64")
    if any(v < 16 or v % 16 for v in values):
        raise ValueError(f"--roi {given}: crop sizes must be positive multiples of 16 (the patch size), "
                         "e.g. --roi 96 or --roi 128 128 64")
    return tuple(values * 3 if len(values) == 1 else values)


# ------------------------------------------------------------------------------------------ data
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic CT-like phantom dataset (nnU-Net v2 layout)")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--cases", type=int, default=20, help="training cases")
    p.add_argument("--test-cases", type=int, default=4, help="held-out cases (imagesTs, labelsTs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already has files")
    p.set_defaults(func=_run_synth)


def _refuse_non_empty(folder: str, overwrite: bool) -> None:
    """A generated dataset goes into a new or empty folder: writing into a user's dataset would replace its
    dataset.json and mix phantoms into it."""
    from pathlib import Path

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{path}: the folder is not empty; choose a new folder or add --overwrite")


def _run_synth(args) -> int:
    from unetr.data.synthetic import make_phantom_dataset

    _refuse_non_empty(args.out, args.overwrite)

    out = make_phantom_dataset(args.out, cases=args.cases, test_cases=args.test_cases, seed=args.seed,
                               progress=True)
    print(f"wrote {args.cases} training and {args.test_cases} test phantoms to {out}")
    return 0


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="validate a dataset and list every problem (exit 0 only when usable)")
    p.add_argument("dataset", help="dataset folder, dataset.json or MONAI datalist JSON")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    from unetr.data.cases import check_dataset, load_dataset

    problems = check_dataset(args.dataset, workers=args.workers)
    for line in problems:
        print(f"problem: {line}")
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s); not usable")
        return 1
    ds = load_dataset(args.dataset)
    said = (f"modality {ds.modality} ({ds.modality_source})" if ds.modality
            else "no modality named: `unetr plan` decides it from the intensities")
    print(f"{args.dataset}: OK ({ds.layout}, {len(ds.train)} training, {len(ds.validation)} validation, "
          f"{len(ds.test)} test cases; {said})")
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert KiTS23 or TotalSegmentator to the nnU-Net v2 layout unetr reads",
                       description="kits23: dataset/case_XXXXX/imaging.nii.gz + segmentation.nii.gz -> imagesTr/"
                                   "case_XXXXX_0000.nii.gz + labelsTr/case_XXXXX.nii.gz. totalsegmentator: "
                                   "SUBJECT/ct.nii.gz + SUBJECT/segmentations/<structure>.nii.gz -> one label map "
                                   "per subject, the structure names kept in dataset.json. Images are linked, not "
                                   "copied, unless --copy.")
    p.add_argument("layout", choices=["kits23", "totalsegmentator"])
    p.add_argument("source", help="KiTS23's dataset folder; a TotalSegmentator folder or one subject")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--structures", nargs="+", help="totalsegmentator: these masks, in this order (default: all)")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already has files")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from unetr.data.convert import convert_kits23, convert_totalsegmentator

    if args.layout == "kits23":
        if args.structures:
            raise ValueError("--structures is for totalsegmentator")
        out = convert_kits23(args.source, args.out, copy=args.copy, overwrite=args.overwrite)
    else:
        out = convert_totalsegmentator(args.source, args.out, structures=args.structures, copy=args.copy,
                                       overwrite=args.overwrite, workers=args.workers)
    print(f"wrote {out} (nnU-Net v2 layout); next: unetr check {out}")
    return 0


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="fingerprint a dataset and write plan.json")
    p.add_argument("dataset", help="dataset folder, dataset.json or MONAI datalist JSON")
    p.add_argument("-o", "--out", default="plan.json", help="plan file to write (fingerprint.json goes next to it)")
    p.add_argument("--spacing", nargs="+", default=None,
                   help="target spacing: median (default), paper (1.5 1.5 2.0) or three numbers in mm")
    p.add_argument("--intensity", default=None, help="auto (default: follows the modality) | ct_window | ct_zscore | zscore")
    p.add_argument("--modality", choices=["CT", "MR", "OTHER"],
                   help="override the modality the dataset names or its intensities show")
    p.add_argument("--recipe", help="start from a published configuration's plan: btcv (docs/recipe.md)")
    p.add_argument("--preset", default=None, help="model preset: paper | tutorial | small | tiny")
    p.add_argument("--roi", type=int, nargs="+", default=None, help="patch size: one value (cube) or three")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any plan field (repeatable)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-cases", type=int, default=None, help="fingerprint only the first N cases")
    p.set_defaults(func=_run_plan)


_PLAN_WORDS = {"target_spacing": ("median", "paper"), "intensity": ("auto",)}  # make_plan resolves these


def _plan_overrides(overrides: dict, source: str) -> dict:
    """Plan settings from the command line or YAML, each converted to its field's type (the words
    ``make_plan`` resolves itself pass as they are)."""
    from unetr.config import Plan, coerce_fields

    words = {k: v for k, v in overrides.items() if v in _PLAN_WORDS.get(k, ())}
    return {**coerce_fields(Plan, {k: v for k, v in overrides.items() if k not in words}, source), **words}


def _run_plan(args) -> int:
    from unetr.config import parse_set
    from unetr.data.cases import load_dataset
    from unetr.data.plan import plan_dataset, save_plan
    from unetr.recipes import get_recipe

    overrides: dict = dict(get_recipe(args.recipe).plan) if args.recipe else {}
    if args.spacing:
        if len(args.spacing) not in (1, 3):
            raise ValueError(f"--spacing takes median, paper or three numbers, got {args.spacing}")
        overrides["target_spacing"] = args.spacing[0] if len(args.spacing) == 1 else tuple(map(float, args.spacing))
    for key, value in (("intensity", args.intensity), ("modality", args.modality), ("preset", args.preset)):
        if value:
            overrides[key] = value
    if args.roi:
        overrides["roi"] = _roi(args.roi)
    overrides.update(parse_set(args.set))
    ds = load_dataset(args.dataset)
    plan, fp = plan_dataset(ds, workers=args.workers, max_cases=args.max_cases, progress=True,
                            **_plan_overrides(overrides, "--set "))
    save_plan(plan, args.out, fingerprint=fp)
    print(f"wrote {args.out}: spacing {plan.target_spacing}, roi {plan.roi}, {plan.intensity}, "
          f"{plan.num_classes} classes {list(plan.class_names)}; modality {plan.modality} ({plan.modality_reason})")
    return 0


def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="preprocess a dataset into a cache folder (once; resumes)")
    p.add_argument("dataset", help="dataset folder, dataset.json or MONAI datalist JSON")
    p.add_argument("--plan", required=True, help="plan.json from `unetr plan`")
    p.add_argument("--cache", required=True, help="cache folder")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_run_preprocess)


def _run_preprocess(args) -> int:
    from unetr.data.cache import build_cache
    from unetr.data.cases import load_dataset
    from unetr.data.plan import load_plan

    ids = build_cache(load_dataset(args.dataset), load_plan(args.plan), args.cache, workers=args.workers)
    print(f"{args.cache}: {len(ids)} case(s) ready")
    return 0


# ------------------------------------------------------------------------------------------ training
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="plan, preprocess (cached) and train a UNETR; rerun to resume",
                       description="Train on one CPU/GPU, or on many with `torchrun --nproc_per_node=N -m unetr "
                                   "train ...`. Settings: defaults < --config YAML < --set < the options below.")
    p.add_argument("dataset", help="dataset folder, dataset.json or MONAI datalist JSON")
    p.add_argument("-o", "--out", required=True, help="run directory (rerunning the same command resumes it)")
    p.add_argument("--preset", default=None, help="model preset: paper | small | tiny | tutorial (default: the plan's)")
    p.add_argument("--config", help="YAML file of TrainConfig fields (and optional plan:/model: sections)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a TrainConfig field (plan.KEY / model.KEY for the plan and the model); repeatable")
    p.add_argument("--iterations", type=int, help="optimizer steps in all")
    p.add_argument("--val-every", type=int, help="validate every N iterations")
    p.add_argument("--checkpoint-every", type=int, help="write last.pt every N iterations")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--batch-size", type=int, help="volumes per step (each gives samples_per_volume crops)")
    p.add_argument("--roi", type=int, nargs="+", help="crop size: one value (cube) or three, multiples of 16")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--fold", help="the validation fold of the dataset's splits.json (0, 1, ...), or all: every case "
                                  "trains, no validation, the last weights are the model")
    p.add_argument("--folds", type=int, nargs="+", metavar="K",
                   help="cross-validation: N (all N folds) or the folds to train (0 1 2 ...), one after another, "
                        "each into OUT/fold_K; then `unetr cv OUT`")
    p.add_argument("--fold-parallel", action="store_true",
                   help="with --folds under torchrun: each process trains its share of the folds alone (one per GPU)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="with --folds: also write each validation case's probabilities (<case>.npz, float16)")
    p.add_argument("--num-workers", type=int,
                   help="data-loader worker processes (default -1: none on CPUs, whose cores the threads keep busy; "
                        "up to 4 per GPU)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (inductor; needs g++ on CPUs, Triton on GPUs): the first step "
                        "compiles for minutes")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: PyTorch's, one per core; 1 is fastest on cores other jobs keep busy)")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="wall time for the whole command (e.g. 6m, 90s, 1h30m): the first iterations are timed and "
                        "--iterations is lowered to what fits; the log says when training will end")
    p.add_argument("--plan", help="use this plan.json (from `unetr plan`) instead of making one")
    p.add_argument("--modality", choices=["CT", "MR", "OTHER"],
                   help="for a new plan: override the modality the dataset names or its intensities show")
    p.add_argument("--recipe", help="a published configuration under your settings: btcv (docs/recipe.md)")
    p.add_argument("--cache", help="preprocessed cache folder (default: OUT/cache)")
    p.add_argument("--workers", type=int, default=2, help="processes for planning and preprocessing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--restart", action="store_true",
                   help="move an earlier run in --out aside (to OUT.old-N, nothing is deleted) and start a new one; "
                        "needed when the settings change what that run trains")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from unetr.config import ModelConfig, TrainConfig, coerce_fields, load_yaml, parse_set
    from unetr.training import distributed
    from unetr.training.budget import TimeBudget, parse_duration
    from unetr.training.prepare import train_dataset

    budget = TimeBudget(parse_duration(args.time_budget)) if args.time_budget else None  # from the start

    settings: dict = load_yaml(args.config) if args.config else {}
    plan_over, model_over = dict(settings.pop("plan", None) or {}), dict(settings.pop("model", None) or {})
    for key, value in parse_set(args.set).items():
        section, name = key.split(".", 1) if "." in key else ("train", key)
        target = {"train": settings, "plan": plan_over, "model": model_over}.get(section)
        if target is None:
            raise ValueError(f"--set {key}: expected KEY (training), plan.KEY or model.KEY")
        target[name] = value
    flags = {"iterations": args.iterations, "val_every": args.val_every, "checkpoint_every": args.checkpoint_every,
             "lr": args.lr, "batch_size": args.batch_size, "precision": args.precision, "device": args.device,
             "seed": args.seed, "fold": args.fold, "num_workers": args.num_workers, "compile": args.compile}
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.roi:
        plan_over["roi"] = _roi(args.roi)
    if args.modality:
        plan_over["modality"] = args.modality
    if args.recipe:
        from unetr.recipes import get_recipe, train_settings

        recipe = get_recipe(args.recipe)
        settings = train_settings(recipe, settings)
        plan_over, model_over = {**recipe.plan, **plan_over}, {**recipe.model, **model_over}
    plan_over = _plan_overrides(plan_over, "plan.")
    model_over = coerce_fields(ModelConfig, model_over, "model.")
    cfg = TrainConfig.from_dict(settings)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.folds is not None:
        return _train_folds(args, cfg, plan_over, model_over)
    if args.fold_parallel or args.save_probabilities:
        raise ValueError("--fold-parallel and --save-probabilities go with --folds")
    env = distributed.setup(cfg.device)
    try:
        if cfg.compile:  # before planning and preprocessing: a missing compiler is one line, at once
            from unetr.accel import check_compiler

            check_compiler(env.device)
        result = train_dataset(args.dataset, args.out, cfg, preset_name=args.preset, plan_path=args.plan,
                               plan_overrides=plan_over, model_overrides=model_over, cache_dir=args.cache,
                               workers=args.workers, env=env, progress=not args.no_progress,
                               restart=args.restart, time_budget=budget)
    finally:
        distributed.teardown(env)
    if env.is_main and cfg.fold == "all":
        log.info("%s: %d iterations on every case, no validation; the final weights are the model (%.0f s)",
                 args.out, result.iteration, result.seconds)
    elif env.is_main:
        log.info("%s: %d iterations, best validation mean Dice %.4f at iteration %d (%.0f s)", args.out,
                 result.iteration, result.best_dice, result.best_iteration, result.seconds)
    return 0


def _train_folds(args, cfg, plan_over: dict, model_over: dict) -> int:
    from unetr.training import distributed
    from unetr.training.folds import parse_folds, train_folds

    if args.fold is not None:
        raise ValueError("give --fold K (one run in OUT) or --folds (every fold in OUT/fold_K), not both")
    if args.restart:
        raise ValueError("--restart moves one run aside; to start cross-validation anew, use another --out")
    folds, count = parse_folds(args.folds)
    env = distributed.setup(cfg.device)
    try:
        results = train_folds(args.dataset, args.out, cfg, folds, num_folds=count, fold_parallel=args.fold_parallel,
                              save_probabilities=args.save_probabilities, preset_name=args.preset,
                              plan_path=args.plan, plan_overrides=plan_over, model_overrides=model_over,
                              cache_dir=args.cache, workers=args.workers, env=env, progress=not args.no_progress)
    finally:
        distributed.teardown(env)
    for k, r in results.items():
        if env.is_main or args.fold_parallel:
            log.info("fold %d: %d iterations, best validation mean Dice %.4f at iteration %d (%.0f s)", k, r.iteration,
                     r.best_dice, r.best_iteration, r.seconds)
    if env.is_main:
        log.info("next: unetr cv %s (cross-validation figures and post-processing), then unetr predict -m %s",
                 args.out, args.out)
    return 0


# ------------------------------------------------------------------------------------------ inference
def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment images with a trained model (run dir or checkpoint)")
    p.add_argument("-m", "--model", required=True, nargs="+",
                   help="run directory, folder of folds (their ensemble), .zip package, or a checkpoint (ours, "
                        "MONAI's); several: their ensemble (members must share the plan)")
    p.add_argument("-i", "--input", required=True, nargs="+", help="image file(s), folder(s) or glob(s)")
    p.add_argument("-o", "--output", required=True, help="output folder (one <case>.nii.gz per case)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write <case>_probabilities.nii.gz (an ensemble: <case>.npz, float16)")
    p.add_argument("--uncertainty", nargs="?", const="entropy", choices=["entropy", "disagreement"],
                   help="also write <case>_uncertainty.nii.gz: the entropy of the mean probabilities (default) or "
                        "the members' disagreement")
    p.add_argument("--no-postprocessing", action="store_true",
                   help="skip the post-processing `unetr cv` decided for the model (postprocessing.json)")
    p.add_argument("--tta", action="store_true", help="average over the 8 mirrorings (8x slower)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1)")
    p.add_argument("--mode", default="gaussian", choices=["gaussian", "constant"], help="window blending")
    p.add_argument("--batch", type=int, default=0, help="windows per forward pass (default: 1 on CPUs, 4 on GPUs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--accum-device", default="auto", help="where the window sums live (auto: --device)")
    p.add_argument("--accum-fp16", action="store_true", help="half-precision window sums (half the memory)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (inductor; needs g++ on CPUs, Triton on GPUs): compiles for a "
                        "minute or more first")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    p.add_argument("--largest-component", action="store_true", help="keep each class's largest component")
    p.add_argument("--inverse", default="soft", choices=["soft", "labels"],
                   help="soft: the network's soft output goes back to the input grid, argmax there (default); "
                        "labels: argmax first, then the label map goes back")
    p.add_argument("--geometry", choices=["extent", "monai"],
                   help="resampling grid (default: the run's plan; monai for a bare checkpoint, whose options "
                        "below mirror MONAI's transforms): monai gives a MONAI pipeline's labels (Spacingd, "
                        "CropForegroundd, Invertd), extent is nnU-Net's convention")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("preprocessing for a bare checkpoint (a run directory has its own plan)")
    g.add_argument("--spacing", type=float, nargs=3, help="target spacing in mm (x y z); marks a bare checkpoint")
    g.add_argument("--roi", type=int, nargs="+", help="window / model img_size: one value or three")
    g.add_argument("--intensity", choices=["ct_window", "zscore"], help="default: ct_window")
    g.add_argument("--window", type=float, nargs=4, metavar=("A_MIN", "A_MAX", "B_MIN", "B_MAX"),
                   help="CT window and its output range (default: -175 250 0 1)")
    g.add_argument("--in-channels", type=int, help="default: 1")
    g.add_argument("--out-channels", type=int, help="classes including background")
    g.add_argument("--class-names", nargs="+", help="one per class, background first")
    g.add_argument("--no-crop", action="store_true", help="do not crop to the body (MONAI: no CropForegroundd)")
    g.add_argument("--num-heads", type=int, help="attention heads (not stored in MONAI checkpoints)")
    g.add_argument("--res-block", action=argparse.BooleanOptionalAction, default=None,
                   help="residual decoder blocks (default: as the weights' keys say)")
    p.set_defaults(func=_run_predict)


_BARE_ONLY = ("spacing", "roi", "intensity", "window", "in_channels", "out_channels", "class_names", "no_crop",
              "num_heads", "res_block")
_ARCHITECTURE = ("--num-heads", "--res-block", "--no-res-block")  # need no preprocessing options beside them


def _flag(args, key: str) -> Optional[str]:
    """The option that set ``key`` (``--no-res-block`` for a false switch), or None when it was not given."""
    value = getattr(args, key)
    if value is None or (value is False and key != "res_block"):
        return None
    return f"--{'no-' if value is False else ''}{key.replace('_', '-')}"


def _has_plan(model: str) -> bool:
    """Whether ``model`` is a run, folder of folds or package (each carries the plan it was trained with)."""
    import json
    from pathlib import Path

    from unetr.package import is_package

    path = Path(model)
    if is_package(path) or (path.is_dir() and any(path.glob("fold_*/config.json"))):
        return True
    cfg = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        return "plan" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def _run_predict(args) -> int:
    import os
    from pathlib import Path

    from unetr.config import InferConfig, Plan
    from unetr.device import resolve_device
    from unetr.fsutil import remove_stale_temporaries
    from unetr.inference.predict import load_predictor, predict_files
    from unetr.package import is_package

    given = [f for f in (_flag(args, k) for k in _BARE_ONLY) if f]
    with_plan = [m for m in args.model if _has_plan(m)]
    if given and with_plan:
        raise ValueError(f"{' '.join(given)}: {with_plan[0]} is a run, which predicts with the plan and window it "
                         "was trained with; these options describe a bare checkpoint's preprocessing")
    first = Path(args.model[0])
    if len(args.model) > 1 or first.is_dir() or is_package(first):
        return _predict_members(args)
    if args.uncertainty:
        raise ValueError("--uncertainty needs a run, a folder of folds, a package or several models")
    args.model = args.model[0]

    cfg = InferConfig(overlap=args.overlap, mode=args.mode, sw_batch_size=args.batch, tta=args.tta,
                      precision=args.precision, device=args.device, largest_component=args.largest_component,
                      accum_device=args.accum_device, accum_fp16=args.accum_fp16, inverse=args.inverse,
                      compile=args.compile)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = __import__("torch").device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        cfg = cfg.replace(device=str(device))
    if cfg.compile:  # before the model is loaded: a missing compiler is one line, at once
        from unetr.accel import check_compiler

        check_compiler(device)
    plan, overrides = None, {}
    roi = None if args.roi is None else _roi(args.roi)
    if roi is not None:
        overrides["img_size"] = roi
    if args.num_heads:
        overrides["num_heads"] = args.num_heads
    if args.res_block is not None:
        overrides["res_block"] = args.res_block
    if args.spacing is not None:
        if args.out_channels is None:
            raise ValueError("a bare checkpoint needs --out-channels (classes including background)")
        names = args.class_names or ["background"] + [f"class_{i}" for i in range(1, args.out_channels)]
        in_channels = args.in_channels or 1
        plan = Plan(target_spacing=tuple(args.spacing), roi=roi or (96, 96, 96), in_channels=in_channels,
                    num_classes=args.out_channels, class_names=tuple(names),
                    channel_names=tuple(f"ch{i}" for i in range(in_channels)),
                    intensity=args.intensity or "ct_window", window=tuple(args.window or (-175.0, 250.0, 0.0, 1.0)),
                    crop_foreground=not args.no_crop, geometry=args.geometry or "monai")
    elif [f for f in given if f not in _ARCHITECTURE]:
        raise ValueError(f"{' '.join(f for f in given if f not in _ARCHITECTURE)} describe a bare checkpoint's "
                         "preprocessing and need --spacing too")
    model, plan = load_predictor(args.model, plan=plan, device=device, **overrides)
    if args.geometry and args.geometry != plan.geometry:
        log.info("geometry %s in place of the plan's %s", args.geometry, plan.geometry)
        plan = plan.replace(geometry=args.geometry)
    for path in remove_stale_temporaries(args.output, legacy=True):
        log.info("removed %s, left by an interrupted run", path)
    results = predict_files(model, plan, args.input, args.output, cfg, probabilities=args.probabilities,
                            overwrite=args.overwrite, rank=rank, world_size=world, progress=not args.no_progress)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    log.info("%d done, %d skipped, %d failed -> %s", counts["done"], counts["skipped"], counts["failed"], args.output)
    return 1 if counts["failed"] else 0


def _infer_config(args):
    from unetr.config import InferConfig

    return InferConfig(overlap=args.overlap, mode=args.mode, sw_batch_size=args.batch, tta=args.tta,
                       precision=args.precision, device=args.device, largest_component=args.largest_component,
                       accum_device=args.accum_device, accum_fp16=args.accum_fp16, inverse=args.inverse)


def _predict_members(args) -> int:
    """``predict`` with runs, folders of folds or packages: one member predicts as usual, several ensemble."""
    import os

    from unetr.config import Plan
    from unetr.device import resolve_device
    from unetr.inference.ensemble import load_member, member_loaders, predict_ensemble_files
    from unetr.inference.postprocess import PostProcessing
    from unetr.inference.predict import predict_files
    from unetr.package import open_model, shared_plan

    cfg = _infer_config(args)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = __import__("torch").device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    cfg = cfg.replace(device=str(device))
    sources = [open_model(m) for m in args.model]
    members = [m for s in sources for m in s.members]
    plan = Plan.from_dict(shared_plan(members))
    for m in members:  # a tampered package is refused before any case
        m.verify()
    if args.geometry and args.geometry != plan.geometry:
        log.info("geometry %s in place of the plan's %s", args.geometry, plan.geometry)
        plan = plan.replace(geometry=args.geometry)
    pp = None
    decided = [s for s in sources if s.postprocessing]
    if args.no_postprocessing:
        log.info("post-processing skipped (--no-postprocessing)")
    elif len(sources) == 1 and decided:
        pp = PostProcessing.from_dict(decided[0].postprocessing, str(sources[0].path))
        log.info("post-processing from %s: %s", sources[0].path, pp.describe(plan.class_names))
    elif decided:
        log.info("post-processing not applied: it was decided for %s alone, not for this ensemble",
                 ", ".join(str(s.path) for s in decided))
    post = pp.apply if pp is not None and pp.steps else None
    if len(members) == 1 and not args.uncertainty:
        model = load_member(members[0], device)
        results = predict_files(model, plan, args.input, args.output, cfg, probabilities=args.probabilities,
                                overwrite=args.overwrite, rank=rank, world_size=world, progress=not args.no_progress,
                                postprocess=post)
    else:
        if args.inverse != "soft":
            raise ValueError("an ensemble averages probabilities and takes the argmax in the input's space "
                             "(--inverse soft)")
        log.info("ensemble of %d member(s): %s", len(members), ", ".join(m.name for m in members))
        results = predict_ensemble_files(member_loaders(members, device), plan, args.input, args.output, cfg,
                                         uncertainty=args.uncertainty, probabilities=args.probabilities,
                                         postprocess=post, overwrite=args.overwrite, rank=rank, world_size=world,
                                         progress=not args.no_progress)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    log.info("%d done, %d skipped, %d failed -> %s", counts["done"], counts["skipped"], counts["failed"], args.output)
    return 1 if counts["failed"] else 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice, IoU, HD95, ASD and surface Dice of predictions against references")
    p.add_argument("pred_dir", help="folder of predicted label maps")
    p.add_argument("ref_dir", help="folder of reference label maps with the same file names, or a dataset (folder, "
                                   "dataset.json or datalist): each prediction <case>.nii.gz against that case's label")
    p.add_argument("--labels", help="dataset.json (or a run's config.json) naming the classes")
    p.add_argument("--num-classes", type=int, help="classes including background (default: from --labels or data)")
    p.add_argument("--tolerance", type=float, default=2.0, help="surface Dice tolerance in mm")
    p.add_argument("-o", "--output", help="folder for metrics.csv and summary.json (default: PRED_DIR)")
    p.add_argument("--allow-missing", action="store_true",
                   help="a reference without a prediction is scored as a miss but does not fail the command")
    p.add_argument("--workers", type=int, default=1, help="processes scoring cases in parallel")
    p.set_defaults(func=_run_evaluate)


def read_label_for_metrics(path):
    """``path -> (labels, spacing, affine)`` for :func:`unetr.metrics.evaluate_folders` (picklable)."""
    from unetr.data.io import read_label

    arr, geom = read_label(path)
    return arr, geom.spacing, geom.affine


def _dataset_references(dataset: str, pred_dir: str):
    """``{prediction file name: label file}`` for the labelled cases of ``dataset`` that ``pred_dir`` has a
    prediction of (``<case id>.nii.gz``, as ``unetr predict`` names them), and the class names it gives."""
    from pathlib import Path

    from unetr.data.cases import load_dataset, volume_stem

    ds = load_dataset(dataset)
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    preds = {volume_stem(p.name): p.name for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii"))}
    labelled = {c.id: c.label for c in ds.train + ds.validation + ds.test if c.label}
    refs = {preds[cid]: label for cid, label in labelled.items() if cid in preds}
    if not refs:
        raise ValueError(f"{folder}: no prediction is named after a labelled case of {dataset} "
                         f"(e.g. {next(iter(labelled), '?')}.nii.gz)")
    log.info("%s: scoring %d prediction(s) against the labels of %d of the dataset's %d labelled case(s)",
             folder, len(preds), len(refs), len(labelled))
    return refs, list(ds.class_names) or None


def _is_dataset(path: str) -> bool:
    """A dataset (a .json file, or a folder with a dataset.json or image folders) rather than a label folder."""
    from pathlib import Path

    p = Path(path)
    return p.suffix.lower() == ".json" or (p / "dataset.json").is_file() or any(
        (p / d).is_dir() for d in ("imagesTr", "images"))


def _run_evaluate(args) -> int:
    from pathlib import Path

    from unetr.metrics import evaluate_folders, format_table, read_class_names

    names = read_class_names(args.labels) if args.labels else None
    refs = args.ref_dir
    if _is_dataset(args.ref_dir):
        refs, dataset_names = _dataset_references(args.ref_dir, args.pred_dir)
        names = names or dataset_names
    per_case, summary, problems = evaluate_folders(
        args.pred_dir, refs, num_classes=args.num_classes, class_names=names,
        tolerance_mm=args.tolerance, out_dir=args.output, read_label=read_label_for_metrics,
        workers=args.workers, allow_missing=args.allow_missing, progress=True)
    if not per_case:
        raise ValueError(f"no case could be scored ({len(problems)} problem(s))")
    print(format_table(summary, names))
    out = Path(args.output or args.pred_dir)
    print(f"{len(per_case)} case(s) -> {out / 'metrics.csv'}, {out / 'summary.json'}")
    if problems:
        print(f"{len(problems)} problem(s): " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
              file=sys.stderr)
    return 1 if problems else 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="report.html (interactive: cases, slice viewer, curves, attention) and report.md")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("--run", help="run directory (training curves, class names, model, attention maps)")
    p.add_argument("--pred", help="folder of predictions")
    p.add_argument("--labels", help="folder of reference label maps (metrics are computed when no --metrics)")
    p.add_argument("--images", help="folder of the images (for the viewer and the pictures)")
    p.add_argument("--metrics", help="a metrics.csv written by `unetr evaluate`")
    p.add_argument("--classes", help="dataset.json (or a run's config.json) naming the classes (default: the run's, "
                   "else dataset.json beside --labels)")
    p.add_argument("--show", type=int, default=2, help="best and worst cases drawn in report.md")
    p.add_argument("--attention", metavar="CASE", help="case whose attention maps the page shows (default: the worst; "
                   "'none' for none)")
    p.add_argument("--max-voxels", type=int, default=None,
                   help="voxels per case in the viewer; larger cases are shown coarser (default: 4,000,000)")
    p.add_argument("--modality", choices=["CT", "MR"], help="window presets of the viewer (default: guessed per case)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from unetr.report import report_from_folders

    html, md = report_from_folders(args.output, run=args.run, pred=args.pred, labels=args.labels, images=args.images,
                                   metrics=args.metrics, classes=args.classes, show=args.show,
                                   attention=args.attention, max_voxels=args.max_voxels, modality=args.modality)
    print(f"report -> {html} ({html.stat().st_size / 1e6:.1f} MB; open it in a browser), {md}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX or TorchScript (checked against PyTorch), or "
                                      "write a one-file model package (zip) that `unetr predict -m` reads anywhere")
    p.add_argument("model", help="run directory or checkpoint (zip: a run or a folder of folds)")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "zip"])
    p.add_argument("-o", "--output", help="file to write (default: in the run directory)")
    p.add_argument("--no-check", action="store_true", help="skip running the export against PyTorch")
    p.add_argument("--atol", type=float, default=1e-3, help="largest accepted difference of the logits")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of the same name")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from unetr.export import export_model

    res = export_model(args.model, args.output, format=args.format, check=not args.no_check, atol=args.atol,
                       overwrite=args.overwrite)
    check = "not checked" if args.no_check else f"max |diff| {res.max_abs_diff:.2g} vs PyTorch"
    if res.format == "zip":
        check = "not checked" if args.no_check else "every member read back through its checksum, weights identical"
    print(f"{res.format} -> {res.path} ({check})")
    return 0


def _add_cv(sub) -> None:
    p = sub.add_parser("cv", help="cross-validation: pooled out-of-fold evaluation of `train --folds`, and the "
                                  "post-processing it supports (postprocessing.json)")
    p.add_argument("run", help="folder of folds (unetr train --folds)")
    p.add_argument("--dataset", help="the dataset (default: the one the folds were trained on, folds.json)")
    p.add_argument("--tolerance", type=float, default=2.0, help="surface Dice tolerance in mm")
    p.add_argument("--max-class-drop", type=float, default=0.005,
                   help="post-processing: the largest drop of any class's mean Dice a kept step may cause")
    p.add_argument("--min-size", type=float, default=0.0, metavar="MM3",
                   help="post-processing: also try removing components under this size (mm^3)")
    p.add_argument("-o", "--output", help="folder for metrics.csv, folds.csv and summary.json (default RUN/crossval)")
    p.add_argument("--workers", type=int, default=1, help="processes scoring cases in parallel")
    p.set_defaults(func=_run_cv)


def _run_cv(args) -> int:
    from unetr.cv import cross_validate, format_cv

    result = cross_validate(args.run, dataset=args.dataset, tolerance_mm=args.tolerance,
                            max_class_drop=args.max_class_drop, min_size_mm3=args.min_size, out=args.output,
                            workers=args.workers, progress=True)
    print(format_cv(result))
    print(f"{len(result.per_case)} case(s) -> {result.out}; post-processing -> {args.run}/postprocessing.json")
    if result.problems:
        print(f"{len(result.problems)} problem(s): " + "; ".join(result.problems[:5])
              + (" ..." if len(result.problems) > 5 else ""), file=sys.stderr)
    return 1 if result.problems else 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a model is: architecture, classes, spacing, members, CV figures")
    p.add_argument("model", help="run directory, folder of folds, .zip package or checkpoint")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    from unetr.inference.ensemble import describe_model

    print(describe_model(args.model))
    return 0


# ------------------------------------------------------------------------------------------ examples
def _add_mni(sub) -> None:
    p = sub.add_parser("mni", help="write the real brain-MRI example dataset (MNI152 template shipped by nilearn)")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--cases", type=int, default=8, help="training cases (the template under random transforms)")
    p.add_argument("--test-cases", type=int, default=2, help="held-out cases (imagesTs, labelsTs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already has files")
    p.set_defaults(func=_run_mni)


def _run_mni(args) -> int:
    from unetr.data.mni152 import make_brain_dataset

    _refuse_non_empty(args.out, args.overwrite)
    out = make_brain_dataset(args.out, cases=args.cases, test_cases=args.test_cases, seed=args.seed,
                             spacing=args.spacing)
    print(f"wrote {args.cases} training and {args.test_cases} test brain cases to {out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole job on generated data: synth, train, predict, evaluate, report")
    p.add_argument("--out", default="demo", help="demo folder (reused by a rerun)")
    p.add_argument("--data", choices=["phantom", "brain"], default="phantom",
                   help="phantom CT-like volumes, or the real MNI152 brain MRI (needs nilearn)")
    p.add_argument("--cases", type=int, default=None, help="training cases (default: 20 phantoms, 8 brains)")
    p.add_argument("--test-cases", type=int, default=None, help="held-out cases (default: 4 phantoms, 2 brains)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=None, help="training iterations (default: the demo's 800)")
    p.add_argument("--time-budget", default="8m", metavar="DURATION",
                   help="wall time for the whole demo (default 8m; 'none' for no limit): training gets what the other "
                        "steps leave, and its iterations are lowered only where they would not fit")
    p.add_argument("--fresh", action="store_true", help="start again instead of reusing finished steps")
    p.add_argument("--folds", type=int, default=0,
                   help="cross-validation: train N folds (2-3 take N times as long), then their ensemble's held-out "
                        "Dice beside each fold's")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from unetr.demo import run_demo
    from unetr.training.budget import parse_duration

    cases = args.cases if args.cases is not None else (20 if args.data == "phantom" else 8)
    test_cases = args.test_cases if args.test_cases is not None else (4 if args.data == "phantom" else 2)
    budget = None if args.time_budget.strip().lower() in ("none", "off") else parse_duration(args.time_budget)
    result = run_demo(args.out, data=args.data, cases=cases, test_cases=test_cases, seed=args.seed,
                      fresh=args.fresh, iterations=args.iterations, budget_s=budget, folds=args.folds)
    classes = result["summary"].get("classes", {})
    print(f"\n{'class':<16}{'Dice':>10}{'HD95 (mm)':>12}{'surface Dice':>15}")
    for name, m in classes.items():
        print(f"{name:<16}{m['dice']['mean']:>10.3f}{m['hd95']['mean']:>12.2f}{m['surface_dice']['mean']:>15.3f}")
    if classes:
        print(f"{'mean':<16}{result['summary']['mean_dice']:>10.3f}{result['summary']['mean_hd95']:>12.2f}"
              f"{result['summary']['mean_surface_dice']:>15.3f}")
    print("\nsteps: " + ", ".join(f"{name} {wall:.0f} s ({cpu:.0f} s CPU)" for name, wall, cpu in result["steps"]))
    if result.get("folds"):
        print("held-out mean Dice: " + ", ".join(f"fold {k} {s['mean_dice']:.3f}" for k, s in result["folds"].items())
              + f"; ensemble of the {len(result['folds'])} folds {result['summary'].get('mean_dice', float('nan')):.3f}")
    print(f"demo finished in {result['seconds'] / 60:.1f} min; report: {result['report']} (open it in a browser)")
    return 0


# ------------------------------------------------------------------------------------------ main
_ADDERS: list = [_add_summary, _add_synth, _add_check, _add_convert, _add_plan, _add_preprocess,
                 _add_predict, _add_evaluate, _add_report, _add_export, _add_train, _add_cv, _add_info, _add_mni,
                 _add_demo]


def build_parser() -> argparse.ArgumentParser:
    from unetr import __version__

    parser = argparse.ArgumentParser(prog="unetr", description="UNETR for 3D medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"unetr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    func: Optional[Callable] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2

    if args.command in ("train", "predict", "demo"):
        from unetr.allocator import keep_freed_memory

        keep_freed_memory()
    previous = _stop_on_sigterm()
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"unetr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"unetr {args.command}: terminated (SIGTERM); rerun the command to continue", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line (or a bug report)
        message, code = describe_failure(e, verbose=args.verbose, command=args.command)
        if code == EXIT_BUG and args.verbose:
            traceback.print_exc()
        print(f"unetr {args.command}: {message}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every ``finally`` runs (temporary files are removed,
    locks released, worker processes stopped) before the command exits with 143."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the cleanup ends the process
    raise Terminated()


def _stop_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` (main thread only); returns the handler it replaced."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


EXIT_USER = 2  # the user's input or environment: a message says what to change
EXIT_BUG = 3  # an unexpected exception: a bug in unetr


# what lowers the memory a command needs
MEMORY_ADVICE = {
    "train": "use a smaller --roi or --batch-size, --precision bf16 or --set checkpointing=true",
    "predict": "lower --batch, add --accum-fp16 or --accum-device cpu, or use --inverse labels",
    "preprocess": "use fewer --workers (each preprocesses one case at a time)",
    "plan": "use fewer --workers",
    "evaluate": "use fewer --workers",
}


def describe_failure(e: BaseException, verbose: bool = False, command: Optional[str] = None) -> Tuple[str, int]:
    """One line for a failure and the exit code: user-caused conditions (bad files, options, a full disk, too
    little memory) get :data:`EXIT_USER`; anything else is a bug in unetr and says so (:data:`EXIT_BUG`).

    Args:
        command: the subcommand, whose options a memory message suggests.
    """
    import errno

    from unetr.errors import UnetrError, out_of_memory

    if isinstance(e, SystemExit):
        raise e
    needed = out_of_memory(e)
    if needed is not None:
        advice = MEMORY_ADVICE.get(command or "", "free memory or use a machine with more")
        text = str(e).splitlines()[0][:160] if str(e) else ""
        what = text if isinstance(e, MemoryError) or not needed else f"an allocation of {needed} failed"
        return f"error: out of memory{f' ({what})' if what else ''}; {advice}", EXIT_USER
    if isinstance(e, (UnetrError, ValueError)):
        return f"error: {e}", EXIT_USER
    if isinstance(e, OSError):
        where = e.filename or ""
        if e.errno == errno.ENOSPC:
            return f"error: disk full writing {where or 'a file'}", EXIT_USER
        if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                          FileExistsError)) or e.errno in (errno.EROFS, errno.EDQUOT, errno.EIO):
            text = e.strerror or str(e)
            return f"error: {where}: {text}" if where and str(where) not in text else f"error: {e}", EXIT_USER
    return (f"internal error (a bug in unetr; please report it with the command): {type(e).__name__}: {e}"
            + ("" if verbose else " (rerun with -v for the traceback)")), EXIT_BUG
