"""Subcommands on results and models: report, export, info, and the demo."""

from __future__ import annotations


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
    if args.no_check:
        check = "not checked"
    elif res.format == "zip":
        check = "every member read back through its checksum, weights identical"
    else:
        check = f"max |diff| {res.max_abs_diff:.2g} vs PyTorch, on logits up to {res.max_abs_logit:.3g}"
    print(f"{res.format} -> {res.path} ({check})")
    return 0

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a model is: architecture, classes, spacing, members, CV figures")
    p.add_argument("model", help="run directory, folder of folds, .zip package or checkpoint")
    p.set_defaults(func=_run_info)

def _run_info(args) -> int:
    from unetr.inference.describe import describe_model

    print(describe_model(args.model))
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
