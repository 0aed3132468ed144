"""Prediction: geometry of the outputs, options, skipping, bad inputs, largest component, rank split."""

import numpy as np
import pytest
import torch

from unetr.config import InferConfig
from unetr.errors import CheckpointError
from unetr.inference import predict as P
from unetr.inference.inputs import find_inputs
from unetr.inference.postprocess import keep_largest_component

ROI = (32, 32, 32)


def _load(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def test_find_inputs_file_folder_glob_and_channels(tmp_path):
    for n in ("b_0000", "b_0001", "a_0000", "a_0001"):
        (tmp_path / f"{n}.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [c for c, _ in find_inputs(tmp_path, 2)] == ["a", "b"]
    assert [len(f) for _, f in find_inputs(tmp_path, 2)] == [2, 2]
    single = find_inputs(tmp_path, 1)  # two channel files per case are no one-channel cases: names kept
    assert [c for c, _ in single] == ["a_0000", "a_0001", "b_0000", "b_0001"]
    assert [c for c, _ in find_inputs(str(tmp_path / "a_*.nii.gz"), 2)] == ["a"]
    assert [c for c, _ in find_inputs(tmp_path / "b_0000.nii.gz", 1)] == ["b"]
    with pytest.raises(FileNotFoundError):
        find_inputs(tmp_path / "nothing*.nii.gz")


def test_predict_volume_argmax_equals_probabilities_path(run_dir):
    model, plan = P.load_predictor(run_dir)
    x = torch.randn(1, 40, 36, 20)
    labels, probs = P.predict_volume(model, x, ROI, InferConfig(device="cpu"), probabilities=True)
    only, none = P.predict_volume(model, x, ROI, InferConfig(device="cpu"))
    assert none is None and labels.shape == (40, 36, 20) and probs.shape == (3, 40, 36, 20)
    assert probs.dtype == torch.float16
    torch.testing.assert_close(probs.float().sum(0), torch.ones(40, 36, 20), atol=3e-3, rtol=0)
    assert (only == labels).float().mean() > 0.999


def test_tta_is_the_mean_over_eight_mirrors():
    import itertools

    net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()  # not mirror-symmetric: its kernel is random
    x = torch.randn(2, 1, 16, 12, 8)
    out = P.make_predictor(net, torch.device("cpu"), "fp32", tta=True)(x)
    with torch.no_grad():
        flips = [a for r in range(4) for a in itertools.combinations((2, 3, 4), r)]
        ref = sum(torch.flip(net(torch.flip(x, a)), a) if a else net(x) for a in flips) / 8
        plain = P.make_predictor(net, torch.device("cpu"), "fp32", tta=False)(x)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(plain, net(x))
    assert not torch.allclose(out, plain, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_context(precision):
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    out = P.make_predictor(net, torch.device("cpu"), precision)(x)
    assert out.dtype == torch.float32
    with torch.no_grad():
        ref = net(x)
    if precision == "fp32":
        torch.testing.assert_close(out, ref)
    else:
        assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=5e-2, rtol=5e-2)


def test_predict_files_writes_input_geometry_and_skips(run_dir, tmp_path, ct_writer):
    src = tmp_path / "in"
    src.mkdir()
    ct_writer(src / "ct_a.nii.gz", shape=(40, 36, 20), flip_x=True)
    ct_writer(src / "ct_b.nii.gz", shape=(30, 44, 18), spacing=(0.8, 1.1, 3.0), flip_x=False, seed=1)
    model, plan = P.load_predictor(run_dir)
    out = tmp_path / "out"
    res = P.predict_files(model, plan, src, out, InferConfig(device="cpu", largest_component=True),
                          probabilities=True, progress=False)
    assert [r.status for r in res] == ["done", "done"]
    for name in ("ct_a", "ct_b"):
        lab, img = _load(out / f"{name}.nii.gz")
        ref_arr, ref = _load(src / f"{name}.nii.gz")
        assert lab.shape == ref_arr.shape and lab.dtype == np.uint8
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        prob, pimg = _load(out / f"{name}_probabilities.nii.gz")
        assert prob.shape == ref_arr.shape + (3,)
        np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-2)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    again = P.predict_files(model, plan, src, out, InferConfig(device="cpu"), probabilities=True, progress=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    redo = P.predict_files(model, plan, src / "ct_a.nii.gz", out, InferConfig(device="cpu"), overwrite=True,
                           progress=False)
    assert [r.status for r in redo] == ["done"]


def test_bad_inputs_fail_per_case_and_others_finish(run_dir, tmp_path, ct_writer):
    src = tmp_path / "in"
    src.mkdir()
    ct_writer(src / "good.nii.gz")
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8bnot really gzip")
    ct_writer(src / "two_channels.nii.gz", channels=2)
    model, plan = P.load_predictor(run_dir)
    out = tmp_path / "out"
    res = {r.case: r for r in P.predict_files(model, plan, src, out, InferConfig(device="cpu"), progress=False)}
    assert res["good"].status == "done"
    assert res["broken"].status == "failed" and "broken.nii.gz" in res["broken"].message
    assert res["two_channels"].status == "failed" and "channel" in res["two_channels"].message
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"foo": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError):
        P.load_predictor(bad)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError):
        P.load_predictor(tmp_path / "empty_run")


def test_bare_checkpoint_needs_a_plan(run_dir, tmp_path, plan):
    import shutil

    bare = tmp_path / "bare.safetensors"
    shutil.copy(run_dir / "model.safetensors", bare)
    with pytest.raises(CheckpointError, match="plan"):
        P.load_predictor(bare, num_heads=4)
    model, got = P.load_predictor(bare, plan=plan, num_heads=4)
    assert got == plan
    wrong = plan.replace(num_classes=2, class_names=("bg", "fg"))
    with pytest.raises(CheckpointError, match="outputs"):
        P.load_predictor(bare, plan=wrong, num_heads=4)


def test_keep_largest_component():
    lab = np.zeros((12, 10, 8), np.uint8)
    lab[1:4, 1:4, 1:4] = 1
    lab[8:10, 7:9, 5:7] = 1  # smaller island
    lab[6:8, 1:3, 1:3] = 2
    out = keep_largest_component(lab.copy())
    assert (out == 1).sum() == 27 and (out == 2).sum() == 8


def test_rank_split(run_dir, tmp_path, ct_writer):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        ct_writer(src / f"c{i}.nii.gz", shape=(20, 18, 12), seed=i)
    model, plan = P.load_predictor(run_dir)
    r0 = P.predict_files(model, plan, src, tmp_path / "o", InferConfig(device="cpu"), rank=0, world_size=2,
                         progress=False)
    r1 = P.predict_files(model, plan, src, tmp_path / "o", InferConfig(device="cpu"), rank=1, world_size=2,
                         progress=False)
    assert [r.case for r in r0] == ["c0", "c2"] and [r.case for r in r1] == ["c1"]
    with pytest.raises(ValueError, match="rank"):
        P.predict_files(model, plan, src, tmp_path / "o", rank=2, world_size=2)


class _Bands(torch.nn.Module):
    """A smooth, confident predictor (class 1 near the body's value, 2 near the blob's): no near-ties."""

    img_size = ROI

    def forward(self, x):
        body, blob = (40 + 175) / 425, (200 + 175) / 425  # write_ct's HU in the default window
        return torch.cat([torch.zeros_like(x), 1 - ((x - body) / 0.2) ** 2, 1 - ((x - blob) / 0.2) ** 2], 1) * 4


@pytest.mark.parametrize("crop", [True, False])
def test_monai_geometry_gives_the_labels_of_a_monai_pipeline(plan, tmp_path, ct_writer, crop, monai_ct_chain):
    from monai.inferers import sliding_window_inference
    from monai.transforms import AsDiscreted, Compose, Invertd

    img = ct_writer(tmp_path / "ct.nii.gz", shape=(44, 36, 21), spacing=(1.1, 0.8, 2.6))
    pre = monai_ct_chain(plan.target_spacing, plan.window, crop)
    data = pre({"image": str(img)})
    with torch.inference_mode():
        data["pred"] = sliding_window_inference(data["image"][None], ROI, 4, _Bands(), overlap=0.5, mode="gaussian",
                                                sigma_scale=0.125)[0]
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                    AsDiscreted(keys="pred", argmax=True)])
    ref = post(data)["pred"][0].numpy()
    cfg = InferConfig(device="cpu", precision="fp32")
    ours = {}
    plan = plan.replace(crop_foreground=crop)
    for name, p, c in [("monai", plan.replace(geometry="monai"), cfg), ("extent", plan, cfg),
                       ("labels", plan, cfg.replace(inverse="labels"))]:
        res = P.predict_case(_Bands(), p, [img], tmp_path / name, c)
        assert res.status == "done", res.message
        ours[name] = _load(res.output)[0]
    assert (ours["monai"] == ref).mean() > 0.9999  # the same labels as MONAI's chain
    assert set(np.unique(ref)) == {0, 1, 2}
    for name in ("extent", "labels"):  # other grid or inverse: close, not equal
        assert 0.9 < (ours[name] == ref).mean() < 1.0
    # the streamed soft inverse gives the labels of the whole-volume one (the --probabilities path)
    res = P.predict_case(_Bands(), plan, [img], tmp_path / "probs", cfg, probabilities=True)
    assert np.array_equal(_load(res.output)[0], ours["extent"])


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_the_log_says_which_precision_and_why(run_dir, tmp_path, ct_writer, caplog, precision):
    import logging

    from unetr.device import explain_precision

    ct_writer(tmp_path / "ct.nii.gz", shape=(20, 20, 12))
    model, plan = P.load_predictor(run_dir)
    with caplog.at_level(logging.INFO, logger="unetr.inference.predict"):
        P.predict_files(model, plan, tmp_path / "ct.nii.gz", tmp_path / "out",
                        InferConfig(device="cpu", precision=precision), progress=False)
    chosen, why = explain_precision(precision, torch.device("cpu"), allow_fp16=False)
    assert f"precision {chosen} on cpu: {why}" in caplog.text
