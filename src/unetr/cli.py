"""Command line: argument parsing only. Each subcommand calls one plain function of the package.

Every subcommand has an ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
function that imports what it needs lazily (so ``unetr --help`` is fast) and calls it. Errors that users
cause (bad files, bad options) are ``ValueError``/``FileNotFoundError``/``UnetrError``; they are printed as
one line naming the problem and give exit code 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

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


# ------------------------------------------------------------------------------------------ data
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic CT-like phantom dataset (nnU-Net v2 layout)")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--cases", type=int, default=20, help="training cases")
    p.add_argument("--test-cases", type=int, default=4, help="held-out cases (imagesTs, labelsTs)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from unetr.data.synthetic import make_phantom_dataset

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
    print(f"{args.dataset}: OK ({ds.layout}, {len(ds.train)} training, {len(ds.validation)} validation, "
          f"{len(ds.test)} test cases)")
    return 0


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="fingerprint a dataset and write plan.json")
    p.add_argument("dataset", help="dataset folder, dataset.json or MONAI datalist JSON")
    p.add_argument("-o", "--out", default="plan.json", help="plan file to write (fingerprint.json goes next to it)")
    p.add_argument("--spacing", nargs="+", default=["median"],
                   help="target spacing: median (default), paper (1.5 1.5 2.0) or three numbers in mm")
    p.add_argument("--intensity", default="auto", help="auto | ct_window | ct_zscore | zscore")
    p.add_argument("--preset", default=None, help="model preset: paper | tutorial | small | tiny")
    p.add_argument("--roi", type=int, nargs="+", default=None, help="patch size: one value (cube) or three")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any plan field (repeatable)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-cases", type=int, default=None, help="fingerprint only the first N cases")
    p.set_defaults(func=_run_plan)


def _run_plan(args) -> int:
    from unetr.config import parse_set
    from unetr.data.cases import load_dataset
    from unetr.data.plan import fingerprint, make_plan, save_plan

    ds = load_dataset(args.dataset)
    fp = fingerprint(ds, workers=args.workers, max_cases=args.max_cases, progress=True)
    spacing = args.spacing[0] if len(args.spacing) == 1 else None
    if spacing is None:
        if len(args.spacing) != 3:
            raise ValueError(f"--spacing takes median, paper or three numbers, got {args.spacing}")
        spacing = tuple(float(s) for s in args.spacing)
    overrides = {"target_spacing": spacing, "intensity": args.intensity}
    if args.preset:
        overrides["preset"] = args.preset
    if args.roi:
        overrides["roi"] = tuple(args.roi * 3 if len(args.roi) == 1 else args.roi)
    overrides.update(parse_set(args.set))
    plan = make_plan(ds, fp, **overrides)
    save_plan(plan, args.out, fingerprint=fp)
    print(f"wrote {args.out}: spacing {plan.target_spacing}, roi {plan.roi}, {plan.intensity}, "
          f"{plan.num_classes} classes {list(plan.class_names)}")
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


# ------------------------------------------------------------------------------------------ main
_ADDERS: list = [_add_summary, _add_synth, _add_check, _add_plan, _add_preprocess]


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
    from unetr.errors import UnetrError

    try:
        return int(func(args) or 0)
    except (UnetrError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"unetr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unetr {args.command}: interrupted", file=sys.stderr)
        return 130
