"""Export: ONNX and TorchScript outputs equal PyTorch's; bad format; no file left when the check fails."""

import json
import warnings

import pytest
import torch

from unetr.config import preset
from unetr.errors import UnetrError
from unetr.export import export_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from unetr.model import build_model, save_run

    torch.manual_seed(0)
    cfg = preset("tiny", in_channels=1, out_channels=2, img_size=(32, 16, 16), hidden_size=48, mlp_dim=96)
    d = tmp_path_factory.mktemp("run")
    save_run(d, build_model(cfg).eval(), cfg)
    return d


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(run_dir, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"m.{fmt}"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        res = export_model(run_dir, out, format=fmt)
    # the tracer's warnings describe what the export is (a graph for windows of one size); users saw four
    assert not [w for w in said if issubclass(w.category, torch.jit.TracerWarning)]
    assert res.path == out and out.stat().st_size > 0
    assert res.max_abs_diff <= 1e-3 and res.max_abs_logit > 0
    assert not (tmp_path / "config.json").exists()  # export writes only its own names
    side = json.loads((tmp_path / f"m.{fmt}.json").read_text())
    assert side["model"]["img_size"] == [32, 16, 16] and side["export"] == {"format": fmt, "file": out.name}


def test_export_never_replaces_what_it_did_not_write(run_dir, tmp_path):
    other_run = tmp_path / "other"
    other_run.mkdir()
    (other_run / "config.json").write_text("theirs")
    (other_run / "m.pt.json").write_text("mine?")
    out = other_run / "m.pt"
    with pytest.raises(UnetrError, match="exists; export elsewhere or add --overwrite"):
        export_model(run_dir, out, format="torchscript")
    assert (other_run / "m.pt.json").read_text() == "mine?" and not out.exists()
    export_model(run_dir, out, format="torchscript", overwrite=True)
    assert (other_run / "config.json").read_text() == "theirs"
    assert json.loads((other_run / "m.pt.json").read_text())["export"]["file"] == "m.pt"
    with pytest.raises(UnetrError, match="model's own file"):
        export_model(run_dir, run_dir / "config.json", format="torchscript", overwrite=True)


def test_both_exports_of_one_run_sit_side_by_side(run_dir, tmp_path):
    """The default names of the two formats, in one folder: each export keeps its own description (before:
    both were described by ``model.json``, and the second export was refused)."""
    pytest.importorskip("onnxruntime")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ts, onnx = export_model(run, format="torchscript"), export_model(run, format="onnx")
    assert (ts.path.name, onnx.path.name) == ("model.torchscript.pt", "model.onnx")
    for res in (ts, onnx):
        side = json.loads((run / f"{res.path.name}.json").read_text())
        assert side["export"] == {"format": res.format, "file": res.path.name}


def test_export_bad_format(run_dir):
    with pytest.raises(ValueError, match="format"):
        export_model(run_dir, format="tflite")


def test_failed_check_leaves_no_file(run_dir, tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(UnetrError, match="differs"):
        export_model(run_dir, out, format="torchscript", atol=-1.0)  # nothing passes a negative tolerance
    assert not list(tmp_path.iterdir())


def test_export_cli(run_dir, tmp_path, capsys):
    from unetr.cli import main

    out = tmp_path / "m.ts"
    assert main(["export", str(run_dir), "--format", "torchscript", "-o", str(out)]) == 0
    assert out.exists() and "max |diff|" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), "--format", "torchscript"]) == 2
