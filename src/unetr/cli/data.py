"""Subcommands on datasets: summary, synth, check, convert, plan, preprocess, mni."""

from __future__ import annotations

from unetr.cli.common import _refuse_non_empty, _roi


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
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already has files")
    p.set_defaults(func=_run_synth)

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
