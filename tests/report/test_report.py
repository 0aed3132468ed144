"""Report: overlays, curves, the Markdown report, reading files for pictures, bad arguments."""

import math

import numpy as np
import pytest

from unetr import metrics as M
from unetr import report as R


def _case(seed=0, shape=(24, 20, 12)):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=shape).astype(np.float32)
    ref = np.zeros(shape, np.uint8)
    ref[4:14, 5:12, 3:8] = 1
    ref[15:20, 3:8, 2:6] = 2
    pred = np.roll(ref, seed, axis=0)
    return img, ref, pred


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_focus_point_is_centre_of_largest_class():
    _, ref, _ = _case()
    assert R.focus_point(None, ref) == (8, 8, 5)  # centre of class 1 (box 4:14, 5:12, 3:8), 8.5 rounds to 8
    assert R.focus_point(np.zeros((4, 6, 8), np.uint8)) == (2, 3, 4)


@pytest.mark.parametrize("with_pred", [True, False])
def test_overlay_figure_writes_png(tmp_path, with_pred):
    img, ref, pred = _case(1)
    out = R.overlay_figure(img, tmp_path / "o.png", reference=ref, prediction=pred if with_pred else None,
                           spacing=(0.8, 1.0, 3.0), class_names=["bg", "liver", "spleen"], title="case")
    assert _is_png(out)
    import matplotlib.image as mpimg

    h, w = mpimg.imread(out).shape[:2]
    assert w > (600 if with_pred else 400) and h > 600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overlay_bad_shapes(tmp_path):
    img, ref, _ = _case()
    with pytest.raises(ValueError, match="reference shape"):
        R.overlay_figure(img, tmp_path / "o.png", reference=ref[:-1])
    with pytest.raises(ValueError, match="image must be"):
        R.overlay_figure(img[0], tmp_path / "o.png")


def _metrics_csv(path, classes=("background", "liver")):
    cols = ["iteration", "train_loss", "lr"] + [f"val_dice_{c}" for c in classes] + ["val_mean_dice", "seconds"]
    rows = [",".join(cols)]
    for it in range(0, 100, 10):
        val = it % 20 == 0
        rows.append(",".join([str(it), f"{1 - it / 200:.3f}", "1e-4"] + [f"{it / 100:.2f}" if val else ""] * len(classes)
                             + [f"{it / 100:.2f}" if val else "", str(it)]))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_training_curves(tmp_path):
    csv = _metrics_csv(tmp_path / "metrics.csv")
    rows = R.read_metrics_csv(csv)
    assert len(rows) == 10 and math.isnan(rows[1]["val_mean_dice"])
    assert _is_png(R.plot_training_curves(csv, tmp_path / "c.png"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="iteration"):
        R.read_metrics_csv(tmp_path / "bad.csv")


def test_rank_cases_best_first_nan_last():
    per = {"a": M.evaluate_case(*_case(2)[1:][::-1], (1, 1, 1), 3), "b": M.evaluate_case(_case()[1], _case()[1], (1, 1, 1), 3),
           "empty": M.evaluate_case(np.zeros((4, 4, 4), int), np.zeros((4, 4, 4), int), (1, 1, 1), 3)}
    ranked = R.rank_cases(per)
    assert [c for c, _ in ranked] == ["b", "a", "empty"] and math.isnan(ranked[-1][1])


def test_make_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _metrics_csv(run / "metrics.csv")
    per_case, images = {}, {}
    for i in range(4):
        img, ref, pred = _case(i)
        per_case[f"c{i}"] = M.evaluate_case(pred, ref, (1, 1, 2), 3)
        images[f"c{i}"] = (img, ref, pred, (1, 1, 2))
    md = R.make_report(tmp_path / "rep", run_dir=run, per_case=per_case, class_names=["bg", "liver", "spleen"],
                       case_images=images, n_show=1)
    text = md.read_text()
    assert "training_curves.png" in text and "| liver |" in text
    assert "![c0](c0.png)" in text and "![c3](c3.png)" in text  # best (no shift) and worst (largest shift)
    assert "c1.png" not in text
    assert _is_png(tmp_path / "rep" / "c3.png")


def test_load_case_from_files_reorients_to_ras(tmp_path):
    from unetr.data.io import Geometry, write_image, write_label

    img, ref, _ = _case()
    affine = np.diag([-0.8, 1.0, 3.0, 1.0])  # x runs right-to-left (L): must be flipped
    g = Geometry.from_affine(affine, img.shape)
    write_image(tmp_path / "i.nii.gz", img, g)
    write_label(tmp_path / "r.nii.gz", ref, g)
    im2, r2, p2, spacing = R.load_case_from_files(tmp_path / "i.nii.gz", tmp_path / "r.nii.gz", tmp_path / "none.nii.gz")
    assert p2 is None and spacing == pytest.approx((0.8, 1.0, 3.0))
    np.testing.assert_array_equal(r2, ref[::-1])
    np.testing.assert_allclose(im2, img[::-1])
