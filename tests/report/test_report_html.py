"""report.html without a browser: self-contained, its data complete and valid JSON, within its size budget;
the attention maps; the CLI and the demo's report step. (The browser drives it in test_report_browser.py.)"""

import json
import math
import re

import numpy as np
import pytest

from unetr import metrics as M
from unetr.report import html as H
from unetr.report import volumes as V


def page_data(path):
    """The JSON document inlined in a written page."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert m, "no data element"
    assert "<" not in m.group(1)
    return json.loads(m.group(1))


def test_page_is_self_contained(tmp_path, known_case, tiny_run):
    image, ref, pred, spacing = known_case
    per_case = {"known": M.evaluate_case(pred, ref, spacing, 4)}
    path = H.write_html_report(tmp_path, run_dir=tiny_run, per_case=per_case, case_images={"known": known_case})
    text = path.read_text(encoding="utf-8")
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""<(script|img|link|iframe)[^>]+(src|href)\s*=""", text)  # nothing loaded from elsewhere
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)  # the SVG namespace is a name, not a fetch
    assert "@import" not in text and "url(" not in text
    assert "{{" not in text.replace("{{title}}", "")  # every placeholder filled
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_page_data_holds_scores_volumes_curves_and_model(tmp_path, known_case, phantom_cases, tiny_run, helpers):
    CLASS_NAMES = helpers.CLASS_NAMES
    cases = {"known": known_case, **phantom_cases}
    per_case = helpers.score(cases)
    path = H.write_html_report(tmp_path, run_dir=tiny_run, per_case=per_case, case_images=cases)
    data = page_data(path)
    assert [c["name"] for c in data["classes"]] == list(CLASS_NAMES)
    assert len({c["color"] for c in data["classes"][1:]}) == 3
    means = [c["mean_dice"] for c in data["cases"]]
    assert means == sorted(means)  # worst first
    assert {c["name"] for c in data["cases"]} == set(cases) and all(c["has_volume"] for c in data["cases"])
    assert data["cases"][0]["scores"]["1"]["dice"] == pytest.approx(
        per_case[data["cases"][0]["name"]][1].dice, abs=1e-12)
    v = data["volumes"]["known"]
    np.testing.assert_array_equal(V.decode(v["prediction"], v["shape"]), known_case[2])
    assert v["spacing"] == list(known_case[3])
    assert data["summary"]["cases"] == 4 and [c["name"] for c in data["summary"]["classes"]] == list(CLASS_NAMES[1:])
    assert data["validation"]["best"]["iteration"] == 300 and data["validation"]["num_folds"] == 5
    assert data["training"]["columns"][0] == "iteration" and len(data["training"]["rows"]) == 30
    facts = dict(data["model"]["facts"])
    assert facts["preset"] == "tiny" and int(facts["parameters"].replace(",", "")) > 10_000
    assert "64 × 64 × 48" in facts["input"] and "1.5 × 1.5 × 2 mm" == facts["spacing"]


def test_nan_scores_become_null_and_names_cannot_break_the_page(tmp_path, known_case):
    image, ref, _, spacing = known_case
    empty = np.zeros_like(ref)
    per_case = {"x</script><b>": M.evaluate_case(empty, empty, spacing, 3)}  # nothing in either: NaN everywhere
    path = H.write_html_report(tmp_path, per_case=per_case, class_names=["bg", "a", "b"],
                               case_images={"x</script><b>": (image, empty, empty, spacing)}, title="<T&>")
    text = path.read_text(encoding="utf-8")
    assert "<title>&lt;T&amp;&gt;</title>" in text
    data = page_data(path)
    assert data["cases"][0]["name"] == "x</script><b>" and data["cases"][0]["mean_dice"] is None
    assert data["cases"][0]["scores"]["1"]["hd95"] is None and data["summary"]["mean"]["dice"] is None
    assert data["training"] is None and data["model"] is None and data["attention"] is None


def test_an_unreadable_case_is_noted_not_fatal(tmp_path, known_case):
    def load(case):
        if case == "bad":
            raise FileNotFoundError("no image for bad")
        return known_case

    per = {c: M.evaluate_case(known_case[2], known_case[1], known_case[3], 3) for c in ("good", "bad")}
    data = page_data(H.write_html_report(tmp_path, per_case=per, load_case=load))
    assert set(data["volumes"]) == {"good"}
    assert {c["name"]: c["has_volume"] for c in data["cases"]} == {"good": True, "bad": False}
    assert any("no image for bad" in n for n in data["notes"])


def test_demo_sized_report_stays_under_10_mb(tmp_path):
    """The demo's four held-out phantoms (full resolution, as `unetr demo` writes them) with predictions."""
    from unetr.data.synthetic import make_phantom_dataset
    from unetr.report import load_case_from_files

    ds = make_phantom_dataset(tmp_path / "ds", cases=1, test_cases=4, seed=0)
    cases = {}
    for f in sorted((ds / "imagesTs").glob("*.nii.gz")):
        case = f.name.replace("_0000.nii.gz", "")
        image, ref, _, spacing = load_case_from_files(f, ds / "labelsTs" / f"{case}.nii.gz", None)
        cases[case] = (image, ref, np.roll(ref, 1, axis=0), spacing)
    path = H.write_html_report(tmp_path / "rep", per_case={c: M.evaluate_case(p, r, s, 4) for c, (_, r, p, s)
                                                           in cases.items()}, case_images=cases)
    size = path.stat().st_size
    assert len(page_data(path)["volumes"]) == 4
    assert size < 10e6, f"{size / 1e6:.1f} MB"


def test_attention_for_case(tiny_run, phantom_files):
    from unetr.report.attention import attention_for_case

    att = attention_for_case(tiny_run, phantom_files / "imagesTs" / "phantom_000_0000.nii.gz",
                             phantom_files / "labelsTs" / "phantom_000.nii.gz", case="phantom_000")
    assert att["shape"] == [64, 64, 48] and att["grid"] == [4, 4, 3] and att["layers"] == 4 and att["heads"] == 4
    n = 48
    w = V.decode(att["weights"], (4 * n * n, 1, 1)).reshape(4, n, n)
    assert (w.max(axis=-1) == 255).all()  # each query's row stretched to its strongest key
    lab = V.decode(att["label"], att["shape"])
    assert set(np.unique(lab)) <= {0, 1, 2, 3} and lab.any()
    assert all(0 <= p < s for p, s in zip(att["point"], att["shape"]))


def test_attention_payload_orders_rows_by_query(tiny_run):
    from unetr.report.attention import attention_payload, crop_window, stretch_rows

    weights = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    att = attention_payload(weights, np.zeros((32, 32, 32), np.float32), None, case="c", patch_size=16,
                            spacing=(1, 1, 1), start=(0, 0, 0))
    flat = V.decode(att["weights"], (2 * 8 * 8, 1, 1)).ravel()
    np.testing.assert_array_equal(flat.reshape(2, 8, 8), stretch_rows(weights))  # [layer][query][key]
    with pytest.raises(ValueError, match="weights must be"):
        attention_payload(weights[:, :4], np.zeros((32, 32, 32)), None, case="c", patch_size=16, spacing=(1, 1, 1),
                          start=(0, 0, 0))
    win, start = crop_window(np.ones((1, 10, 40, 20)), (5, 35, 2), (16, 16, 16))
    assert win.shape == (1, 16, 16, 16) and start == (0, 24, 0) and win[0, 10:].sum() == 0  # padded after the end


def test_cli_report_writes_html_with_attention(tiny_run, phantom_files, tmp_path, capsys):
    from unetr.cli import main

    rep = tmp_path / "rep"
    rc = main(["report", "-o", str(rep), "--run", str(tiny_run), "--pred", str(phantom_files / "predictions"),
               "--labels", str(phantom_files / "labelsTs"), "--images", str(phantom_files / "imagesTs"),
               "--max-voxels", "50000"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "report.md" in out
    data = page_data(rep / "report.html")
    worst = data["cases"][0]["name"]
    assert data["attention"]["case"] == worst  # the worst case by default
    assert all(math.prod(v["shape"]) <= 50000 and v["note"] for v in data["volumes"].values())
    assert (rep / "report.md").is_file() and (rep / "metrics.csv").is_file()


def test_cli_report_attention_options(tiny_run, phantom_files, tmp_path, capsys):
    from unetr.cli import main

    common = ["--run", str(tiny_run), "--pred", str(phantom_files / "predictions"), "--labels",
              str(phantom_files / "labelsTs"), "--images", str(phantom_files / "imagesTs")]
    assert main(["report", "-o", str(tmp_path / "a"), *common, "--attention", "phantom_001"]) == 0
    assert page_data(tmp_path / "a" / "report.html")["attention"]["case"] == "phantom_001"
    assert main(["report", "-o", str(tmp_path / "b"), *common, "--attention", "none"]) == 0
    assert page_data(tmp_path / "b" / "report.html")["attention"] is None
    capsys.readouterr()
    assert main(["report", "-o", str(tmp_path / "c"), *common, "--attention", "nope"]) == 2
    assert "attention case 'nope' is not among the cases" in capsys.readouterr().err


def test_cli_report_class_names_from_dataset_json(phantom_files, tmp_path):
    """Without a run, the class names come from the dataset.json beside the labels folder."""
    from unetr.cli import main

    assert main(["report", "-o", str(tmp_path / "r"), "--pred", str(phantom_files / "predictions"), "--labels",
                 str(phantom_files / "labelsTs")]) == 0
    data = page_data(tmp_path / "r" / "report.html")
    assert [c["name"] for c in data["classes"]] == ["background", "liver", "spleen", "kidney"]
    assert data["volumes"] == {} and not any(c["has_volume"] for c in data["cases"])


def test_demo_names_the_html_report(tmp_path):
    from unetr.demo import run_demo

    calls = []
    result = run_demo(tmp_path / "d", runner=lambda cmd: calls.append(cmd) or 0)
    assert result["report"] == tmp_path / "d" / "report" / "report.html"
    assert calls[-1][0] == "report" and "--images" in calls[-1] and "--run" in calls[-1]


def test_class_names_sources(tiny_run, phantom_files, tmp_path):
    from unetr.report.folders import class_names_for

    (tmp_path / "ds.json").write_text('{"labels": {"0": "bg", "1": "a", "2": "b", "3": "c"}}')  # MSD style
    assert class_names_for(tmp_path / "ds.json", tiny_run, None) == ["bg", "a", "b", "c"]  # given first
    assert class_names_for(None, tiny_run, None)[1] == "liver"  # then the run's
    assert class_names_for(None, None, phantom_files / "labelsTs")[3] == "kidney"  # then beside the labels
    assert class_names_for(None, None, tmp_path / "labels") is None
    with pytest.raises(FileNotFoundError, match="no such file"):
        class_names_for(tmp_path / "missing.json", tiny_run, None)


def test_report_from_folders_bad_arguments(tmp_path, phantom_files):
    from unetr.report import report_from_folders

    with pytest.raises(ValueError, match="give a run"):
        report_from_folders(tmp_path)
    with pytest.raises(ValueError, match="max_voxels"):
        report_from_folders(tmp_path, pred=phantom_files / "predictions", labels=phantom_files / "labelsTs",
                            max_voxels=10)


def test_report_from_folders_scores_as_evaluate_does(tmp_path, phantom_files):
    """A prediction that lies elsewhere than its reference (same shape, affine shifted 10 mm) is a problem
    for `unetr evaluate`, and is not scored by the report either (before: the report compared shapes only and
    scored it)."""
    import nibabel as nib

    from unetr.report import report_from_folders

    pred = tmp_path / "pred"
    pred.mkdir()
    files = sorted((phantom_files / "predictions").glob("*.nii.gz"))
    for f in files:
        (pred / f.name).write_bytes(f.read_bytes())
    moved = nib.load(str(pred / files[0].name))
    affine = moved.affine.copy()
    affine[0, 3] += 10.0
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), affine, moved.header), str(pred / files[0].name))
    report_from_folders(tmp_path / "report", pred=pred, labels=phantom_files / "labelsTs")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["cases"] == len(files) - 1
    assert any(files[0].name in p and "not on the reference's grid" in p for p in summary["problems"])
    assert "not on the reference's grid" in (tmp_path / "report" / "report.html").read_text()  # a page note
