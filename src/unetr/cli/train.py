"""Subcommands that train: train (one fold, every fold, or all cases) and cv (cross-validation results)."""

from __future__ import annotations

import logging

from unetr.cli.common import _print_problems, _roi
from unetr.cli.data import _plan_overrides

log = logging.getLogger("unetr")


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
        if budget is not None:
            raise ValueError("--time-budget times one run; with --folds, give the folds' --iterations instead")
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
    _print_problems(result.problems)
    return 1 if result.problems else 0
