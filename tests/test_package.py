"""The one-file model package: what it holds, and what it refuses (tampered members, code, other formats)."""

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from unetr.cli import main
from unetr.config import Plan, preset
from unetr.errors import CheckpointError
from unetr.export import export_model
from unetr.inference.describe import describe_model
from unetr.inference.ensemble import load_member
from unetr.model import build_model, save_run
from unetr.package import MANIFEST, open_model, read_package, write_package

ROI = (32, 32, 32)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(folder, seed):
    plan = Plan(target_spacing=(2.0, 2.0, 2.0), roi=ROI, num_classes=3, class_names=("bg", "a", "b"), preset="tiny")
    torch.manual_seed(seed)
    cfg = preset("tiny", in_channels=1, out_channels=3, img_size=ROI)
    save_run(folder, build_model(cfg), cfg, plan=plan.to_dict())
    return folder


@pytest.fixture
def folds(tmp_path):
    root = tmp_path / "runs" / "x"
    for k in range(2):
        _run(root / f"fold_{k}", seed=k)
    (root / "postprocessing.json").write_text(json.dumps(
        {"format": "unetr-postprocessing", "version": 1, "steps": [{"target": "foreground", "op": "largest"}]}))
    return root


def _rewrite(src, dst, change):
    """Copy a zip, passing each entry's bytes through ``change(name, data)``."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            b.writestr(info.filename, change(info.filename, a.read(info)))


def test_the_package_holds_every_member_and_what_prediction_needs(folds, tmp_path):
    res = export_model(folds, tmp_path / "x.zip", format="zip")
    assert res.format == "zip" and res.max_abs_diff == 0.0
    src = read_package(tmp_path / "x.zip")
    assert [m.name for m in src.members] == ["fold_0", "fold_1"] and src.kind == "package"
    assert src.postprocessing["steps"] == [{"target": "foreground", "op": "largest"}]
    assert src.plan["class_names"] == ["bg", "a", "b"] and {"unetr", "torch", "python"} <= set(src.versions)
    with zipfile.ZipFile(tmp_path / "x.zip") as z:
        manifest = json.loads(z.read(MANIFEST))
        for m in manifest["members"]:
            assert hashlib.sha256(z.read(m["weights"])).hexdigest() == m["sha256"]
    for a, b in zip(open_model(folds).members, src.members):  # the same weights, loaded from the zip
        wa, wb = load_member(a).state_dict(), load_member(b).state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(CheckpointError, match="exists"):
        export_model(folds, tmp_path / "x.zip", format="zip")
    export_model(folds, tmp_path / "x.zip", format="zip", overwrite=True)
    default = export_model(folds, format="zip").path
    assert default == folds / "x.unetr.zip" and default.is_file()


def test_a_tampered_member_is_refused(folds, tmp_path, capsys):
    write_package(tmp_path / "x.zip", [open_model(folds)])

    def flip_one_byte(name, data):
        if name.endswith("fold_1.safetensors"):
            data = bytearray(data)
            data[-3] ^= 0xFF  # inside the last tensor's values
            return bytes(data)
        return data

    _rewrite(tmp_path / "x.zip", tmp_path / "bad.zip", flip_one_byte)
    fold_1 = read_package(tmp_path / "bad.zip").members[1]
    with pytest.raises(CheckpointError, match="fold_1 fails its checksum"):
        load_member(fold_1)
    image = tmp_path / "ct.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), str(image))
    code = main(["predict", "-m", str(tmp_path / "bad.zip"), "-i", str(image), "-o", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 2 and "fails its checksum" in capsys.readouterr().err
    assert not (tmp_path / "o" / "ct.nii.gz").exists()


def test_a_member_is_hashed_once_per_process_until_its_zip_changes(folds, tmp_path, monkeypatch):
    """An ensemble reads each member again for every case: the SHA-256 is checked on the first read only,
    and again once the zip changed."""
    import unetr.package as P

    write_package(tmp_path / "x.zip", [open_model(folds)])
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(P.hashlib, "sha256", lambda data: hashed.append(len(data)) or real(data))
    member = read_package(tmp_path / "x.zip").members[0]
    first = member.read_bytes()
    assert member.read_bytes() == first and len(hashed) == 1
    os.utime(tmp_path / "x.zip", ns=(0, 0))  # the zip changed: checked again
    assert member.read_bytes() == first and len(hashed) == 2


def test_loading_never_runs_code(folds, tmp_path):
    """A member replaced by a pickle that would create a file when unpickled, with a matching checksum (an
    attacker who rewrites the manifest too): it is refused as not safetensors, and nothing ran."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import io
    import pickle

    buf = io.BytesIO()
    pickle.dump(Payload(), buf)
    evil = buf.getvalue()
    write_package(tmp_path / "x.zip", [open_model(folds)])

    def swap(name, data):
        if name.endswith("fold_0.safetensors"):
            return evil
        if name == MANIFEST:
            doc = json.loads(data)
            doc["members"][0].update(sha256=hashlib.sha256(evil).hexdigest(), size=len(evil))
            return json.dumps(doc).encode()
        return data

    _rewrite(tmp_path / "x.zip", tmp_path / "evil.zip", swap)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_member(read_package(tmp_path / "evil.zip").members[0])
    assert not marker.exists()


@pytest.mark.parametrize("change,match", [
    (lambda d: {**d, "format": "other"}, "not a unetr model package"),
    (lambda d: {**d, "version": 99}, "package version 99"),
    (lambda d: {**d, "members": [{"name": "x"}]}, "malformed manifest"),
    (lambda d: {**d, "members": []}, "without members"),
])
def test_bad_manifests_are_refused(folds, tmp_path, change, match):
    write_package(tmp_path / "x.zip", [open_model(folds)])
    _rewrite(tmp_path / "x.zip", tmp_path / "bad.zip",
             lambda n, d: json.dumps(change(json.loads(d))).encode() if n == MANIFEST else d)
    with pytest.raises(CheckpointError, match=match):
        read_package(tmp_path / "bad.zip")


def test_a_zip_that_is_not_a_package(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a unetr model package"):
        open_model(tmp_path / "other.zip")
    with pytest.raises(CheckpointError, match="not a run directory .*, nor a folder of folds"):
        open_model(tmp_path)


def test_info_on_runs_folders_and_checkpoints(folds, capsys):
    assert main(["info", str(folds)]) == 0
    out = capsys.readouterr().out
    assert "folder of 2 folds" in out and "classes: 0 bg, 1 a, 2 b" in out and "post-processing: the foreground" in out
    assert "ViT hidden 192, 4 layers, 4 heads" in out
    text = describe_model(folds / "fold_0")
    assert "run directory" in text and "members (1): fold_0" in text and "none decided" in text
    assert "checkpoint" in describe_model(folds / "fold_0" / "model.safetensors")
