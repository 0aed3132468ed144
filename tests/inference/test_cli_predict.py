"""`unetr predict` end to end: run dir, bare checkpoint, bad inputs and exit codes, skipping."""

import logging
import shutil

import numpy as np
import pytest

from unetr.cli import main


def test_predict_cli_run_dir_bad_case_exit_code(run_dir, tmp_path, ct_writer, caplog):
    caplog.set_level(logging.INFO)
    src = tmp_path / "in"
    src.mkdir()
    ct_writer(src / "a.nii.gz")
    (src / "b.nii.gz").write_text("not an image")
    out = tmp_path / "out"
    rc = main(["predict", "-m", str(run_dir), "-i", str(src), "-o", str(out), "--device", "cpu", "--no-progress",
               "--overlap", "0.25", "--batch", "2"])
    assert rc == 1  # one case failed, the other was still done
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz"]
    assert "b: FAILED" in caplog.text and "a: 40x36x20" in caplog.text
    caplog.clear()
    rc = main(["predict", "-m", str(run_dir), "-i", str(src / "a.nii.gz"), "-o", str(out), "--device", "cpu",
               "--no-progress"])
    assert rc == 0 and "skipped" in caplog.text


def test_predict_cli_bare_checkpoint(run_dir, tmp_path, ct_writer, capsys):
    bare = tmp_path / "weights.safetensors"
    shutil.copy(run_dir / "model.safetensors", bare)
    img = ct_writer(tmp_path / "ct.nii.gz", shape=(30, 26, 14))
    out = tmp_path / "out"
    rc = main(["predict", "-m", str(bare), "-i", str(img), "-o", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 2 and "plan" in capsys.readouterr().err  # a bare checkpoint without preprocessing options
    rc = main(["predict", "-m", str(bare), "-i", str(img), "-o", str(out), "--device", "cpu", "--no-progress",
               "--spacing", "1.5", "1.5", "2", "--roi", "32", "--out-channels", "3", "--num-heads", "4"])
    assert rc == 0
    import nibabel as nib

    assert nib.load(str(out / "ct.nii.gz")).shape == (30, 26, 14)
    rc = main(["predict", "-m", str(bare), "-i", str(img), "-o", str(tmp_path / "o2"), "--spacing", "1.5", "1.5",
               "2", "--roi", "32", "--out-channels", "5", "--num-heads", "4", "--device", "cpu"])
    assert rc == 2 and "outputs" in capsys.readouterr().err  # the weights have 3 outputs, not 5


def test_predict_cli_not_a_model(tmp_path, ct_writer, capsys):
    img = ct_writer(tmp_path / "ct.nii.gz")
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    rc = main(["predict", "-m", str(tmp_path / "junk.pt"), "-i", str(img), "-o", str(tmp_path / "o")])
    assert rc == 2 and "junk.pt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_predict_cli_no_inputs(run_dir, tmp_path, capsys):
    rc = main(["predict", "-m", str(run_dir), "-i", str(tmp_path / "none*.nii.gz"), "-o", str(tmp_path / "o")])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_evaluate_and_report_cli_on_predictions(run_dir, tmp_path, ct_writer, capsys):
    from unetr.data.io import read_label, write_label

    src, refs, out = tmp_path / "in", tmp_path / "refs", tmp_path / "out"
    src.mkdir()
    refs.mkdir()
    for i in range(2):
        ct_writer(src / f"c{i}.nii.gz", shape=(28, 24, 12), seed=i)
    assert main(["predict", "-m", str(run_dir), "-i", str(src), "-o", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    for i in range(2):  # references: the prediction itself for c0, a box for c1
        lab, geom = read_label(out / f"c{i}.nii.gz")
        if i == 1:
            lab = np.zeros_like(lab)
            lab[5:15, 5:15, 3:8] = 1
        write_label(refs / f"c{i}.nii.gz", lab, geom)
    capsys.readouterr()
    assert main(["evaluate", str(out), str(refs), "--labels", str(run_dir / "config.json")]) == 0
    table = capsys.readouterr().out
    assert "liver" in table and (out / "metrics.csv").exists() and (out / "summary.json").exists()
    rep = tmp_path / "rep"
    assert main(["report", "-o", str(rep), "--run", str(run_dir), "--pred", str(out), "--labels", str(refs),
                 "--images", str(src), "--show", "1"]) == 0
    text = (rep / "report.md").read_text()
    assert "## Metrics" in text and ".png" in text


def test_predict_cli_geometry_and_inverse_options(run_dir, tmp_path, ct_writer, caplog):
    import nibabel as nib

    caplog.set_level(logging.INFO)
    img = ct_writer(tmp_path / "ct.nii.gz", shape=(30, 26, 14))
    outs = {}
    for name, extra in [("default", []), ("monai", ["--geometry", "monai"]), ("labels", ["--inverse", "labels"])]:
        rc = main(["predict", "-m", str(run_dir), "-i", str(img), "-o", str(tmp_path / name), "--device", "cpu",
                   "--no-progress", "--precision", "fp32", *extra])
        assert rc == 0
        outs[name] = np.asanyarray(nib.load(str(tmp_path / name / "ct.nii.gz")).dataobj)
        assert outs[name].shape == (30, 26, 14)
    assert "geometry monai in place of the plan's extent" in caplog.text
    assert not np.array_equal(outs["default"], outs["monai"])  # another grid: other labels at the edges
    with pytest.raises(SystemExit) as exc:
        main(["predict", "-m", str(run_dir), "-i", str(img), "-o", str(tmp_path / "x"), "--geometry", "nnunet"])
    assert exc.value.code == 2


def test_bare_checkpoint_gets_monai_geometry_unless_told(run_dir, tmp_path, ct_writer, monkeypatch):
    import unetr.inference.predict as P

    bare = tmp_path / "weights.safetensors"
    shutil.copy(run_dir / "model.safetensors", bare)
    img = ct_writer(tmp_path / "ct.nii.gz", shape=(30, 26, 14))
    seen = []
    monkeypatch.setattr(P, "predict_files", lambda model, plan, *a, **k: seen.append(plan.geometry) or [])
    common = ["predict", "-m", str(bare), "-i", str(img), "-o", str(tmp_path / "o"), "--spacing", "1.5", "1.5", "2",
              "--roi", "32", "--out-channels", "3", "--num-heads", "4", "--device", "cpu"]
    assert main(common) == 0 and main(common + ["--geometry", "extent"]) == 0
    assert seen == ["monai", "extent"]


def test_predict_cli_res_block_override(run_dir, tmp_path, ct_writer, capsys):
    """--res-block / --no-res-block set the decoder blocks of bare weights; against the weights' keys it is refused."""
    bare = tmp_path / "weights.safetensors"
    shutil.copy(run_dir / "model.safetensors", bare)
    img = ct_writer(tmp_path / "ct.nii.gz", shape=(30, 26, 14))
    common = ["-i", str(img), "--device", "cpu", "--no-progress", "--spacing", "1.5", "1.5", "2", "--roi", "32",
              "--out-channels", "3"]
    rc = main(["predict", "-m", str(bare), "-o", str(tmp_path / "a"), "--no-res-block", *common])
    err = capsys.readouterr().err
    assert rc == 2 and "unexpected keys" in err and "conv3" in err
    rc = main(["predict", "-m", str(bare), "-o", str(tmp_path / "b"), "--res-block", *common])
    assert rc == 0 and (tmp_path / "b" / "ct.nii.gz").is_file()
    rc = main(["predict", "-m", str(run_dir), "-i", str(img), "-o", str(tmp_path / "c"), "--no-res-block"])
    assert rc == 2 and "--no-res-block" in capsys.readouterr().err  # a run has its own architecture
