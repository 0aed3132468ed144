"""Metrics (definitions against MONAI, empty masks, bad arguments) and evaluation (files, table, folders)."""

import math

import numpy as np
import pytest
import torch

from unetr import evaluation as E
from unetr import metrics as M

SPACING = (0.8, 1.3, 2.5)
SHAPE = (40, 32, 24)


def _blobs(seed: int, k: int = 4, shape=SHAPE) -> np.ndarray:
    """A label map with k-1 random ellipsoids (overlapping ones overwrite) and speckle noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    lab = np.zeros(shape, np.int16)
    for c in range(1, k):
        centre = rng.uniform(0.2, 0.8, 3) * shape
        radii = rng.uniform(3, 9, 3)
        lab[(((grid - centre) / radii) ** 2).sum(-1) <= 1] = c
    noise = rng.random(shape) < 0.01
    lab[noise] = rng.integers(0, k, noise.sum())
    return lab


def _onehot(lab: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(lab.astype(np.int64)), k).permute(3, 0, 1, 2)[None].float()


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_monai_where_both_present(seed):
    from monai.metrics import (
        DiceMetric,
        HausdorffDistanceMetric,
        MeanIoU,
        SurfaceDiceMetric,
        SurfaceDistanceMetric,
    )

    k = 4
    pred, ref = _blobs(seed, k), _blobs(seed + 100, k)
    ours = M.evaluate_case(pred, ref, SPACING, k, tolerance_mm=2.0)
    yp, yr = _onehot(pred, k), _onehot(ref, k)
    dice = DiceMetric(include_background=False, reduction="none")(yp, yr)[0]
    iou = MeanIoU(include_background=False, reduction="none")(yp, yr)[0]
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(yp, yr, spacing=SPACING)[0]
    asd = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")(yp, yr, spacing=SPACING)[0]
    nsd = SurfaceDiceMetric([2.0] * (k - 1), include_background=False, reduction="none")(yp, yr, spacing=SPACING)[0]
    for c in range(1, k):
        s = ours[c]
        assert s.pred_voxels > 0 and s.ref_voxels > 0
        assert s.dice == pytest.approx(float(dice[c - 1]), rel=1e-5)
        assert s.iou == pytest.approx(float(iou[c - 1]), rel=1e-5)
        assert s.hd95 == pytest.approx(float(hd[c - 1]), rel=1e-4)
        assert s.asd == pytest.approx(float(asd[c - 1]), rel=1e-4)
        assert s.surface_dice == pytest.approx(float(nsd[c - 1]), rel=1e-5)


def test_surface_equals_scipy_erosion():
    from scipy.ndimage import binary_erosion

    m = _blobs(3, 2) == 1
    assert np.array_equal(M.surface(m), m ^ binary_erosion(m))


def test_identical_masks_are_perfect():
    lab = _blobs(4)
    for s in M.evaluate_case(lab, lab, SPACING, 4).values():
        assert (s.dice, s.iou, s.hd95, s.asd, s.surface_dice) == (1.0, 1.0, 0.0, 0.0, 1.0)


def test_known_shift_distances():
    # A slab shifted by one voxel along Z (2.5 mm): every distance is 0 or 2.5 mm.
    ref = np.zeros((12, 10, 16), np.uint8)
    ref[2:10, 2:8, 4:10] = 1
    pred = np.roll(ref, 1, axis=2)
    s = M.evaluate_case(pred, ref, SPACING, 2)[1]
    assert s.hd95 == pytest.approx(2.5)
    assert 0 < s.asd < 2.5
    assert 0 < s.surface_dice < 1.0  # tolerance 2 mm: the 2.5 mm distances fail
    assert M.evaluate_case(pred, ref, SPACING, 2, tolerance_mm=2.5)[1].surface_dice == 1.0


def test_absent_from_both_is_nan_and_left_out_of_means():
    ref = np.zeros((10, 12, 8), np.int16)
    ref[2:5, 2:6, 2:4] = 1
    scores = M.evaluate_case(ref, ref, (1, 1, 1), 3)
    assert all(math.isnan(getattr(scores[2], m)) for m in M.METRICS)
    other = M.evaluate_case(ref, ref, (1, 1, 1), 3)
    other_ref = ref.copy()
    other_ref[6:8, 6:8, 5:7] = 2
    other = M.evaluate_case(other_ref, other_ref, (1, 1, 1), 3)
    summary = M.summarize({"a": scores, "b": other})
    assert summary[2]["dice"]["mean"] == 1.0 and summary[2]["dice"]["n"] == 1


@pytest.mark.parametrize("missing", ["prediction", "reference"])
def test_miss_or_false_alarm_is_dice_zero_and_penalty(missing):
    lab = np.zeros((10, 12, 8), np.int16)
    lab[2:5, 2:6, 2:4] = 1
    empty = np.zeros_like(lab)
    pred, ref = (empty, lab) if missing == "prediction" else (lab, empty)
    s = M.evaluate_case(pred, ref, (1.0, 2.0, 3.0), 2)[1]
    diag = math.sqrt(10**2 + 24**2 + 24**2)
    assert (s.dice, s.iou, s.surface_dice) == (0.0, 0.0, 0.0)
    assert s.hd95 == pytest.approx(diag) and s.asd == pytest.approx(diag)
    # and the penalty counts in the mean (MONAI would drop it)
    good = M.evaluate_case(lab, lab, (1.0, 2.0, 3.0), 2)
    summary = M.summarize({"miss": {1: s}, "hit": good})
    assert summary[1]["hd95"]["mean"] == pytest.approx(diag / 2)
    assert summary[1]["dice"]["n"] == 2


def test_monai_drops_the_miss_we_do_not():
    from monai.metrics import HausdorffDistanceMetric

    lab = np.zeros((10, 12, 8), np.int16)
    lab[2:5, 2:6, 2:4] = 1
    with pytest.warns(UserWarning):
        hd = HausdorffDistanceMetric(percentile=95, reduction="none")(_onehot(np.zeros_like(lab), 2),
                                                                      _onehot(lab, 2))[0, 0]
    assert not math.isfinite(float(hd))
    assert math.isfinite(M.evaluate_case(np.zeros_like(lab), lab, (1, 1, 1), 2)[1].hd95)


def test_dice_only_mode_and_background():
    lab = _blobs(5)
    s = M.evaluate_case(lab, _blobs(6), SPACING, 4, classes=[0, 2], surface_metrics=False)
    assert sorted(s) == [0, 2]
    assert math.isnan(s[2].hd95) and 0 < s[2].dice < 1 and s[0].dice > 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(spacing=(1, 1)), "spacing"), (dict(spacing=(1, 0, 1)), "spacing"), (dict(percentile=101), "percentile"),
     (dict(tolerance_mm=-1), "tolerance"), (dict(classes=[5]), "class 5")],
)
def test_bad_arguments(kwargs, match):
    args = dict(spacing=(1, 1, 1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        M.evaluate_case(np.zeros((4, 5, 6), np.int16), np.zeros((4, 5, 6), np.int16), num_classes=3, **args)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        M.evaluate_case(np.zeros((4, 5, 6), int), np.zeros((4, 5, 7), int), (1, 1, 1))
    with pytest.raises(ValueError, match="integer"):
        M.evaluate_case(np.zeros((4, 5, 6)), np.zeros((4, 5, 6), int), (1, 1, 1))
    with pytest.raises(ValueError, match="outside"):
        M.evaluate_case(np.full((4, 5, 6), 3), np.zeros((4, 5, 6), int), (1, 1, 1), 2)
    with pytest.raises(ValueError, match="non-empty"):
        M.surface_distances(np.zeros((4, 5, 6), bool), np.ones((4, 5, 6), bool), (1, 1, 1))


def test_csv_json_table_round_trip(tmp_path):
    per_case = {"a": M.evaluate_case(_blobs(7), _blobs(8), SPACING, 4), "b": M.evaluate_case(_blobs(9), _blobs(9), SPACING, 4)}
    E.write_csv(tmp_path / "m.csv", per_case, ["bg", "liver", "spleen", "kidney"])
    back = E.read_csv(tmp_path / "m.csv")
    assert back.keys() == per_case.keys()
    assert back["a"][2].dice == pytest.approx(per_case["a"][2].dice, rel=1e-5)
    summary = M.summarize(per_case)
    E.write_summary_json(tmp_path / "s.json", summary, ["bg", "liver", "spleen", "kidney"])
    import json

    data = json.loads((tmp_path / "s.json").read_text())
    assert data["classes"]["spleen"]["dice"]["n"] == 2
    table = E.format_table(summary, ["bg", "liver", "spleen", "kidney"])
    assert "kidney" in table and "mean" in table.splitlines()[-1]


@pytest.mark.parametrize(
    "content,expected",
    [({"labels": {"0": "background", "1": "liver", "2": "spleen"}}, ["background", "liver", "spleen"]),
     ({"labels": {"background": 0, "spleen": 2, "liver": 1}}, ["background", "liver", "spleen"]),
     ({"plan": {"class_names": ["bg", "x"]}}, ["bg", "x"]), (["bg", "y"], ["bg", "y"])],
)
def test_read_class_names(tmp_path, content, expected):
    import json

    (tmp_path / "d.json").write_text(json.dumps(content))
    assert E.read_class_names(tmp_path / "d.json") == expected


@pytest.mark.parametrize("content,match", [
    ({"name": "x"}, "labels"), ({"labels": {"0": "bg", "2": "b"}}, "gaps"),
    ({"labels": {"background": 0, "b": 2}}, "gaps"),  # nnU-Net v2, as the datasets read it
    ({"labels": {"background": 0, "whole tumor": [1, 2, 3]}}, "only integer labels"),  # v2 regions
])
def test_read_class_names_bad(tmp_path, content, match):
    import json

    (tmp_path / "d.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        E.read_class_names(tmp_path / "d.json")


def _write_label(path, lab, spacing=(1.0, 1.0, 2.0), affine=None):
    from unetr.data.io import Geometry, write_label

    affine = np.diag([*spacing, 1.0]) if affine is None else affine
    write_label(path, lab, Geometry.from_affine(affine, lab.shape))


def test_evaluate_folders_and_cli_problems(tmp_path, capsys):
    from unetr.cli import main

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    a = _blobs(11, 3, shape=(20, 16, 12))
    _write_label(pred / "a.nii.gz", a)
    _write_label(ref / "a.nii.gz", a)
    _write_label(pred / "b.nii.gz", a)  # no reference
    _write_label(pred / "c.nii.gz", a)
    _write_label(ref / "c.nii.gz", a[:-1])  # other shape
    rc = main(["evaluate", str(pred), str(ref), "-o", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    assert rc == 1  # problems are reported, the good case scored
    assert "mean" in captured.out
    rows = E.read_csv(tmp_path / "ev" / "metrics.csv")
    assert list(rows) == ["a"] and rows["a"][1].dice == 1.0
    import json

    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert len(summary["problems"]) == 2 and summary["mean_dice"] == 1.0
    # spacing comes from the reference header: HD95 of a 1-voxel z shift is 2 mm
    b = np.zeros((20, 16, 12), np.uint8)
    b[5:10, 5:10, 3:6] = 1
    _write_label(pred / "a.nii.gz", np.roll(b, 1, axis=2))
    _write_label(ref / "a.nii.gz", b)
    (pred / "b.nii.gz").unlink()
    (pred / "c.nii.gz").unlink()
    assert main(["evaluate", str(pred), str(ref)]) == 1  # c's reference has no prediction any more
    assert main(["evaluate", str(pred), str(ref), "--allow-missing"]) == 0
    (ref / "c.nii.gz").unlink()
    assert main(["evaluate", str(pred), str(ref)]) == 0
    assert E.read_csv(pred / "metrics.csv")["a"][1].hd95 == pytest.approx(2.0)
    assert main(["evaluate", str(tmp_path / "nope"), str(ref)]) == 2


def test_missing_prediction_is_a_miss_not_dropped(tmp_path, capsys):
    from unetr.cli import main

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    a = _blobs(11, 3, shape=(20, 16, 12))
    _write_label(pred / "a.nii.gz", a)
    _write_label(ref / "a.nii.gz", a)
    _write_label(ref / "b.nii.gz", a)  # never predicted
    assert main(["evaluate", str(pred), str(ref), "-o", str(tmp_path / "ev")]) == 1
    assert "no prediction" in capsys.readouterr().err
    rows = E.read_csv(tmp_path / "ev" / "metrics.csv")
    assert sorted(rows) == ["a", "b"]
    diag = M.diagonal_mm((20, 16, 12), (1.0, 1.0, 2.0))
    assert all(rows["b"][k].dice == 0.0 and rows["b"][k].hd95 == pytest.approx(diag, rel=1e-4) for k in (1, 2))
    import json

    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["missing"] == ["b"] and summary["mean_dice"] == pytest.approx(0.5)


def test_prediction_on_another_grid_is_refused(tmp_path):
    from unetr.cli import main

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    a = _blobs(11, 3, shape=(20, 16, 12))
    _write_label(ref / "a.nii.gz", a)
    flipped = np.diag([-1.0, 1, 2, 1])
    flipped[0, 3] = 19.0  # voxel i of the flipped array sits where voxel 19 - i of the reference does
    _write_label(pred / "a.nii.gz", a[::-1], affine=flipped)  # right in the world, wrong on the reference's grid
    assert main(["evaluate", str(pred), str(ref), "-o", str(tmp_path / "ev")]) == 2
    assert not (tmp_path / "ev" / "metrics.csv").exists()


def test_workers_give_the_same_figures(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for i in range(3):
        _write_label(pred / f"c{i}.nii.gz", _blobs(i, 3, shape=(20, 16, 12)))
        _write_label(ref / f"c{i}.nii.gz", _blobs(i + 10, 3, shape=(20, 16, 12)))
    from unetr.data.io import read_label_for_scoring

    one, s1, _ = E.evaluate_folders(pred, ref, read_label=read_label_for_scoring, out_dir=tmp_path / "a")
    two, s2, _ = E.evaluate_folders(pred, ref, read_label=read_label_for_scoring, out_dir=tmp_path / "b", workers=2)
    assert s1 == s2 and list(one) == list(two)
