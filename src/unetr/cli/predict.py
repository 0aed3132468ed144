"""Subcommands that segment and score: predict (one model, an ensemble or a package) and evaluate."""

from __future__ import annotations

import argparse
import logging

from unetr.cli.common import _flag, _print_problems, _roi

log = logging.getLogger("unetr")


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
    from pathlib import Path

    from unetr.config import Plan
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

    cfg, rank, world, device = _infer_setup(args)
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
    return _outcome(results, args.output)

def _infer_setup(args):
    """``(InferConfig, rank, world size, device)`` for this process; the config names the device resolved."""
    import os

    from unetr.config import InferConfig
    from unetr.device import resolve_device

    cfg = InferConfig(overlap=args.overlap, mode=args.mode, sw_batch_size=args.batch, tta=args.tta,
                      precision=args.precision, device=args.device, largest_component=args.largest_component,
                      accum_device=args.accum_device, accum_fp16=args.accum_fp16, inverse=args.inverse,
                      compile=args.compile)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # under torchrun, auto/cuda mean this rank's GPU (cuda:N stays as given)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else 0)
    return cfg.replace(device=str(device)), rank, world, device

def _outcome(results, output: str) -> int:
    """Log how many cases were done, skipped and failed; exit code 1 when any failed."""
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    log.info("%d done, %d skipped, %d failed -> %s", counts["done"], counts["skipped"], counts["failed"], output)
    return 1 if counts["failed"] else 0

def _predict_members(args) -> int:
    """``predict`` with runs, folders of folds or packages: one member predicts as usual, several ensemble."""
    from unetr.config import Plan
    from unetr.fsutil import remove_stale_temporaries
    from unetr.inference.ensemble import load_member, member_loaders, predict_ensemble_files
    from unetr.inference.postprocess import PostProcessing
    from unetr.inference.predict import predict_files
    from unetr.package import open_model, shared_plan

    cfg, rank, world, device = _infer_setup(args)
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
    ensemble = len(members) > 1 or bool(args.uncertainty)
    if ensemble and cfg.compile:
        raise ValueError("--compile: an ensemble builds each member anew for every case and runs it uncompiled; "
                         "drop --compile (it applies to one model)")
    if ensemble and args.inverse != "soft":
        raise ValueError("an ensemble averages probabilities and takes the argmax in the input's space "
                         "(--inverse soft)")
    for path in remove_stale_temporaries(args.output, legacy=True):
        log.info("removed %s, left by an interrupted run", path)
    if not ensemble:
        model = load_member(members[0], device)
        results = predict_files(model, plan, args.input, args.output, cfg, probabilities=args.probabilities,
                                overwrite=args.overwrite, rank=rank, world_size=world, progress=not args.no_progress,
                                postprocess=post)
    else:
        log.info("ensemble of %d member(s): %s", len(members), ", ".join(m.name for m in members))
        results = predict_ensemble_files(member_loaders(members, device), plan, args.input, args.output, cfg,
                                         uncertainty=args.uncertainty, probabilities=args.probabilities,
                                         postprocess=post, overwrite=args.overwrite, rank=rank, world_size=world,
                                         progress=not args.no_progress)
    return _outcome(results, args.output)

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

def _dataset_references(dataset: str, pred_dir: str):
    """``{prediction file name: label file}`` for the labelled cases of ``dataset`` that ``pred_dir`` has a
    prediction of (``<case id>.nii.gz``, as ``unetr predict`` names them), and the class names it gives."""
    from pathlib import Path

    from unetr.data.cases import load_dataset
    from unetr.data.naming import volume_stem

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

    from unetr.data.io import read_label_for_scoring
    from unetr.evaluation import evaluate_folders, format_table, read_class_names

    if args.output and Path(args.output).suffix.lower() in (".csv", ".json") and not Path(args.output).is_dir():
        raise ValueError(f"{args.output}: -o names the folder for metrics.csv and summary.json, not a file; "
                         "give a folder")  # before: a folder of that name was made
    names = read_class_names(args.labels) if args.labels else None
    refs = args.ref_dir
    if _is_dataset(args.ref_dir):
        refs, dataset_names = _dataset_references(args.ref_dir, args.pred_dir)
        names = names or dataset_names
    per_case, summary, problems = evaluate_folders(
        args.pred_dir, refs, num_classes=args.num_classes, class_names=names,
        tolerance_mm=args.tolerance, out_dir=args.output, read_label=read_label_for_scoring,
        workers=args.workers, allow_missing=args.allow_missing, progress=True)
    if not per_case:
        raise ValueError(f"no case could be scored ({len(problems)} problem(s))")
    print(format_table(summary, names))
    out = Path(args.output or args.pred_dir)
    print(f"{len(per_case)} case(s) -> {out / 'metrics.csv'}, {out / 'summary.json'}")
    _print_problems(problems)
    return 1 if problems else 0
