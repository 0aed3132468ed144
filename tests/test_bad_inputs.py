"""Bad inputs and careless commands, as a new user would give them: each fails with one clear line.

Every row runs one command in-process (``unetr.cli.main``) in a folder holding copies of a small dataset,
a trained run and its predictions, plus the bad thing the row sets up. For each row:

- the exit code is non-zero (2 for a user's problem; 1 where a command reports per-case failures);
- no traceback anywhere, and the lines that report the failure (the ``unetr CMD:`` line, or the per-case
  lines of predict/preprocess) name the file and the problem;
- no partial output: nothing new appears but what the row declares (e.g. evaluate's summary listing a miss,
  the predictions of the cases that did work);
- every file that was there before is unchanged (hashed before and after).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import pytest

from unetr import cli

TRAIN = ["--no-progress", "--num-workers", "0", "--precision", "fp32", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A phantom dataset (5 training, 2 test cases), a tiny run trained on it and the run's predictions."""
    from unetr.data.synthetic import make_phantom_dataset

    w = tmp_path_factory.mktemp("world")
    make_phantom_dataset(w / "ds", cases=5, test_cases=2, seed=3)
    assert cli.main(["train", str(w / "ds"), "-o", str(w / "run"), "--preset", "tiny", "--roi", "32", "--iterations",
                     "1", "--val-every", "1", "--set", "samples_per_volume=1", "--set", "tensorboard=false",
                     "--set", "model.hidden_size=48", "--set", "model.mlp_dim=96", *TRAIN]) == 0
    assert cli.main(["predict", "-m", str(w / "run"), "-i", str(w / "ds" / "imagesTs"), "-o", str(w / "pred"),
                     "--no-progress"]) == 0
    return w


# ------------------------------------------------------------------------------------------ making bad things


def _nifti(path: Path, array, affine=None) -> None:
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))


def _first_image(t: Path) -> Path:
    return t / "ds" / "imagesTr" / "phantom_000_0000.nii.gz"


def _first_label(t: Path) -> Path:
    return t / "ds" / "labelsTr" / "phantom_000.nii.gz"


def _edit_label(t: Path, change: Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]) -> None:
    img = nib.load(str(_first_label(t)))
    data, affine = change(np.asarray(img.dataobj), img.affine.copy())
    _nifti(_first_label(t), data, affine)


def _dataset_json(t: Path, **changes) -> None:
    path = t / "ds" / "dataset.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _huge_header(path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_data_dtype(np.float32)
    with gzip.open(path, "wb") as f:  # a 352-byte header that promises 256 GB of voxels, and 16 bytes of them
        f.write(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 16)


def _two_classes_plan(t: Path) -> None:
    plan = json.loads((t / "run" / "plan.json").read_text())
    plan.update(num_classes=2, class_names=["background", "liver"])
    (t / "plan2.json").write_text(json.dumps(plan))


def _train_settings(t: Path) -> None:
    (t / "train.yaml").write_text("lr: [1, 2]\n")


def _hold_lock(t: Path, ctx) -> None:
    """A live process holding the run's lock, as a `unetr train` would (flock and the recorded holder)."""
    code = ("import fcntl, json, os, socket, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'host': socket.gethostname(), "
            "'pid': os.getpid()}).encode()); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(t / "run" / "train.lock")], stdout=subprocess.PIPE,
                         text=True)
    ctx.processes.append(p)
    assert p.stdout.readline().strip() == "held"


def _out_of_memory_for(case: str, where: str):
    """Patch ``where`` (module, function) to run out of memory, as numpy does, for ``case`` only."""
    module, name = where.rsplit(".", 1)

    def patch(t: Path, ctx) -> None:
        import importlib

        mod = importlib.import_module(module)
        real = getattr(mod, name)

        def short(*args, **kwargs):
            if case in str(args[0]):
                raise MemoryError("Unable to allocate 63.6 GiB for an array with shape (4000, 4000, 1067) and "
                                  "data type float32")
            return real(*args, **kwargs)

        ctx.monkeypatch.setattr(mod, name, short)
    return patch


def _torch_out_of_memory(*args, **kwargs):
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
                       "tried to allocate 17179869184 bytes.")


def _disk_full(t: Path, ctx) -> None:
    """Every flush of a temporary file fails as on a full disk (the writer learns it at fsync or close)."""
    real = os.fsync

    def fsync(fd):
        if ".tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    ctx.monkeypatch.setattr(os, "fsync", fsync)


def _flip_prediction(t: Path) -> None:
    path = t / "pred" / "phantom_005.nii.gz"
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[0] *= -1
    _nifti(path, np.asarray(img.dataobj), affine)


def _evil_checkpoint(t: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {t / 'pwned'}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, t / "evil.pt")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


# ------------------------------------------------------------------------------------------ the table


@dataclass
class Bad:
    """One bad input or careless command.

    Attributes:
        argv: the command; ``{t}`` is the row's folder (holding ``ds``, ``run``, ``pred`` as ``uses`` says),
            ``{w}`` the shared originals (for a row that must not copy them; the command must not change them).
        says: what the failure lines must contain (the file, the problem, the fix).
        setup: makes the bad thing: ``setup(t)``, or ``setup(t, ctx)`` (``ctx.monkeypatch`` for conditions a
            test can only simulate, a full disk or too little memory; ``ctx.processes`` are killed afterwards).
        code: the exit code.
        creates: globs (relative to ``{t}``) of what may appear: the output a failure is meant to leave.
        uses: the parts of the world copied in.
    """

    argv: str
    says: Sequence[str]
    setup: Optional[Callable] = None
    code: int = 2
    creates: Sequence[str] = ()
    uses: Sequence[str] = ("ds",)


RUN_TRAIN = ("train {t}/ds -o {t}/run --preset tiny --roi 32 --set model.hidden_size=48 --set model.mlp_dim=96 "
             "--set samples_per_volume=1 --set tensorboard=false --iterations 2 --val-every 1 " + " ".join(TRAIN))

CASES: Dict[str, Bad] = {
    # 1. export never replaces what it did not write
    "export over an existing file": Bad(
        "export {t}/run --format torchscript -o {t}/out/model.pt", ["out/model.pt", "exists", "--overwrite"],
        setup=lambda t: (t / "out").mkdir() or (t / "out" / "model.pt").write_text("mine"), uses=("run",)),
    "export over another run's config": Bad(
        "export {t}/run --format torchscript -o {t}/other/model.pt", ["other/model.pt.json", "exists"],
        setup=lambda t: shutil.copytree(t / "run", t / "other") and (t / "other" / "model.pt.json").write_text("{}"),
        uses=("run",)),
    "export onto the run's own weights": Bad(
        "export {t}/run --format torchscript -o {t}/run/model.safetensors --overwrite",
        ["model.safetensors", "the model's own file"], uses=("run",)),
    # 2. prediction never writes over its inputs
    "predict into the input folder": Bad(
        "predict -m {t}/run -i {t}/imgs -o {t}/imgs --overwrite", ["imgs/a.nii.gz", "would replace this input"],
        setup=lambda t: (t / "imgs").mkdir() or shutil.copy(t / "ds" / "imagesTs" / "phantom_005_0000.nii.gz",
                                                            t / "imgs" / "a.nii.gz"), uses=("ds", "run")),
    "predict into a file": Bad(
        "predict -m {t}/run -i {t}/ds/imagesTs -o {t}/taken", ["taken", "cannot write predictions there"],
        setup=lambda t: (t / "taken").write_text("x"), uses=("ds", "run")),
    "predict -o naming a file": Bad(  # before: a folder named a.nii.gz was made, holding phantom_005.nii.gz
        "predict -m {t}/run -i {t}/ds/imagesTs/phantom_005_0000.nii.gz -o {t}/a.nii.gz",
        ["a.nii.gz", "names the output folder, not a file", "predictions/phantom_005.nii.gz"], uses=("ds", "run")),
    # 3. one process per run directory; a rerun with other settings is refused
    "train while another process trains there": Bad(
        RUN_TRAIN, ["run", "another `unetr train` runs there", "PID"], setup=_hold_lock, uses=("ds", "run")),
    "rerun with another learning rate": Bad(
        RUN_TRAIN + " --lr 3e-3", ["train.lr 0.0001 -> 0.003", "--restart"], uses=("ds", "run")),
    "rerun with another model": Bad(
        RUN_TRAIN.replace("hidden_size=48", "hidden_size=96"), ["model.hidden_size 48 -> 96", "--restart"],
        uses=("ds", "run")),
    "rerun with another crop": Bad(
        RUN_TRAIN.replace("--roi 32", "--roi 48"), ["plan.roi [32, 32, 32] -> [48, 48, 48]"], uses=("ds", "run")),
    "rerun with another fold": Bad(
        RUN_TRAIN + " --fold 1", ["train.fold 0 -> 1", "data.train: 1 case(s) left out, 1 added"],
        uses=("ds", "run")),
    # 4. generated datasets go into empty folders
    "synth into a dataset": Bad("synth {t}/ds --cases 1", ["ds", "not empty", "--overwrite"]),
    "mni into a dataset": Bad("mni {t}/ds", ["ds", "not empty", "--overwrite"]),
    # 5. evaluation: a missing prediction is a miss, a misplaced one is refused
    "evaluate with a prediction missing": Bad(
        "evaluate {t}/pred {t}/ds/labelsTs -o {t}/eval", ["phantom_006", "no prediction"], code=1,
        setup=lambda t: (t / "pred" / "phantom_006.nii.gz").unlink(), creates=("eval", "eval/*"),
        uses=("ds", "pred")),
    "evaluate a flipped prediction": Bad(
        "evaluate {t}/pred {t}/ds/labelsTs -o {t}/eval", ["phantom_005", "affine"], code=1, setup=_flip_prediction,
        creates=("eval", "eval/*"), uses=("ds", "pred")),
    "evaluate a missing folder": Bad("evaluate {t}/nothing {t}/ds/labelsTs", ["nothing"]),
    "evaluate -o naming a file": Bad("evaluate {t}/pred {t}/ds/labelsTs -o {t}/scores.csv",
                                     ["scores.csv", "names the folder for metrics.csv", "not a file"], uses=("ds", "pred")),
    # 6. settings are typed
    "--set a float that is not one": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new") + " --set lr=fast",
                                         ["lr", "expected float", "'fast'"]),
    "--set a fractional batch": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new") + " --set batch_size=1.5",
                                    ["batch_size", "expected int", "1.5"]),
    "--set maybe for a switch": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new") + " --set channels_last=maybe",
                                    ["channels_last", "expected bool", "maybe"]),
    "--set an unknown model key": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new") + " --set model.bogus=1",
                                      ["model.bogus", "unknown ModelConfig field"]),
    "--set without a value": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new") + " --set lr", ["--set", "key=value"]),
    "YAML of the wrong type": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new") + " --config {t}/train.yaml",
                                  ["lr", "expected float", "[1, 2]"], setup=_train_settings),
    "YAML that is not UTF-8": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new") + " --config {t}/train.yaml",
                                  ["train.yaml", "not UTF-8"],
                                  setup=lambda t: (t / "train.yaml").write_bytes(b"lr: 1e-4 # caf\xe9\n")),
    # 7. options either do what they say or are refused
    "predict a run with another window": Bad("predict -m {t}/run -i {t}/ds/imagesTs -o {t}/p2 --roi 256",
                                             ["--roi", "is a run"], uses=("ds", "run")),
    "--roi 0": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new").replace("--roi 32", "--roi 0"),
                   ["--roi 0", "positive multiples of 16"]),
    "--roi -16": Bad("plan {t}/ds -o {t}/plan.json --roi -16", ["--roi -16", "positive multiples of 16"]),
    "--roi of two sizes": Bad("plan {t}/ds -o {t}/plan.json --roi 32 32", ["--roi 32 32", "one size"]),
    "predict --overlap 1.5": Bad("predict -m {t}/run -i {t}/ds/imagesTs -o {t}/p2 --overlap 1.5",
                                 ["overlap", "1.5"], uses=("ds", "run")),
    # 8. every failure is one line naming the file
    "dataset.json: labels a string": Bad("plan {t}/ds -o {t}/plan.json", ["dataset.json", "'labels'", "a string"],
                                         setup=lambda t: _dataset_json(t, labels="liver")),
    "dataset.json: channel names a list": Bad(
        "plan {t}/ds -o {t}/plan.json", ["dataset.json", "'channel_names'", "a list"],
        setup=lambda t: _dataset_json(t, channel_names=["CT"])),
    "dataset.json: channel names null": Bad(
        "plan {t}/ds -o {t}/plan.json", ["dataset.json", "'channel_names'", "null"],
        setup=lambda t: _dataset_json(t, channel_names=None)),
    "dataset.json: not UTF-8": Bad(
        "plan {t}/ds -o {t}/plan.json", ["dataset.json", "not UTF-8"],
        setup=lambda t: (t / "ds" / "dataset.json").write_bytes(b'{"name": "caf\xe9", "channel_names": {}}')),
    "dataset.json: not JSON": Bad("plan {t}/ds -o {t}/plan.json", ["dataset.json", "not valid JSON"],
                                  setup=lambda t: (t / "ds" / "dataset.json").write_text("{'name': 1,")),
    "train: truncated last.pt": Bad(RUN_TRAIN, ["last.pt", "truncated or corrupt", "--restart"],
                                    setup=lambda t: _truncate(t / "run" / "last.pt"), uses=("ds", "run")),
    "train: last.pt of junk": Bad(RUN_TRAIN, ["last.pt", "truncated or corrupt"],
                                  setup=lambda t: (t / "run" / "last.pt").write_bytes(b"\x00junk" * 99),
                                  uses=("ds", "run")),
    "predict: out of memory on one case": Bad(
        "predict -m {t}/run -i {t}/ds/imagesTs -o {t}/p2 --no-progress",
        ["phantom_005", "out of memory", "63.6 GiB", "--batch"], code=1,
        setup=_out_of_memory_for("phantom_005", "unetr.data.preprocess.preprocess_image_file"),
        creates=("p2", "p2/phantom_006.nii.gz"), uses=("ds", "run")),
    "predict with an ensemble: out of memory on one case": Bad(
        "predict -m {t}/run {t}/run -i {t}/ds/imagesTs -o {t}/p3 --no-progress",
        ["phantom_005", "out of memory", "63.6 GiB", "--batch"], code=1,
        setup=_out_of_memory_for("phantom_005", "unetr.data.preprocess.preprocess_image_file"),
        creates=("p3", "p3/phantom_006.nii.gz"), uses=("ds", "run")),
    "preprocess: out of memory on one case": Bad(
        "preprocess {t}/ds --plan {t}/run/plan.json --cache {t}/c --workers 0",
        ["phantom_002", "phantom_002_0000.nii.gz", "did not fit in memory", "63.6 GiB", "--workers"],
        setup=_out_of_memory_for("phantom_002", "unetr.data.preprocess.preprocess_files"),
        creates=("c", "c/*"), uses=("ds", "run")),
    "train: out of memory": Bad(
        RUN_TRAIN.replace("{t}/ds", "{w}/ds") + " --iterations 3", ["out of memory", "16.0 GiB", "--roi"],
        setup=lambda t, ctx: ctx.monkeypatch.setattr("unetr.training.trainer._train_step", _torch_out_of_memory),
        uses=("run",)),
    "preprocess: disk full": Bad("preprocess {t}/ds --plan {t}/run/plan.json --cache {t}/c --workers 0",
                                 ["disk full writing", "c/cache.json"], setup=_disk_full, creates=("c",),
                                 uses=("ds", "run")),
    "train: disk full": Bad(RUN_TRAIN.replace("{t}/run", "{t}/new"), ["disk full writing", "new/plan.json"],
                            setup=_disk_full),
    "predict: disk full": Bad("predict -m {t}/run -i {t}/ds/imagesTs -o {t}/p2 --no-progress",
                              ["phantom_005", "disk full writing", "p2/phantom_005.nii.gz"], code=1,
                              setup=_disk_full, creates=("p2",), uses=("ds", "run")),
    # 9. failures that exited 0
    "report on a missing run": Bad("report -o {t}/rep --run {t}/missing", ["--run", "missing", "no such folder"]),
    "preprocess labels outside the classes": Bad(
        "preprocess {t}/ds --plan {t}/plan2.json --cache {t}/c --workers 0",
        ["phantom_000.nii.gz", "outside the 2 declared classes"], setup=_two_classes_plan,
        creates=("c", "c/cache.json"), uses=("ds", "run")),
    # 12. early failures leave no empty run folder
    "train on too few cases for the folds": Bad(
        RUN_TRAIN.replace("{t}/run", "{t}/runs/new") + " --set num_folds=6", ["ds: 5 case(s)", "6 folds"]),
    "train with labels outside the declared classes": Bad(
        RUN_TRAIN.replace("{t}/run", "{t}/new"), ["ds", "[2, 3] outside the 2 declared classes"],
        setup=lambda t: _dataset_json(t, labels={"background": 0, "liver": 1})),
    "check names the file, not only the case": Bad(
        "check {t}/ds", ["phantom_000", "labelsTr/phantom_000.nii.gz", "label affine differs"], code=1,
        setup=lambda t: _edit_label(t, lambda a, m: (a, m @ np.diag([1, 1, 1.5, 1])))),
    "check: labels outside the declared classes": Bad(
        "check {t}/ds", ["labelsTr/phantom_000.nii.gz", "outside the 2 declared classes"], code=1,
        setup=lambda t: _dataset_json(t, labels={"background": 0, "liver": 1})),
    # what already worked, and must stay so
    "corrupt gzip": Bad("plan {t}/ds -o {t}/plan.json", ["phantom_000_0000.nii.gz"],
                        setup=lambda t: _first_image(t).write_bytes(_first_image(t).read_bytes()[:5000])),
    "not an image": Bad("plan {t}/ds -o {t}/plan.json", ["phantom_000_0000.nii.gz", "not"],
                        setup=lambda t: _first_image(t).write_bytes(gzip.compress(b"patient notes " * 100))),
    "a 2-D image": Bad("plan {t}/ds -o {t}/plan.json", ["phantom_000_0000.nii.gz", "2D"],
                       setup=lambda t: _nifti(_first_image(t), np.zeros((64, 64), np.int16))),
    "NaN voxels": Bad("plan {t}/ds -o {t}/plan.json", ["phantom_000_0000.nii.gz", "NaN"],
                      setup=lambda t: _nifti(_first_image(t), np.full((20, 20, 20), np.nan, np.float32))),
    "label of another shape": Bad("plan {t}/ds -o {t}/plan.json", ["phantom_000.nii.gz", "shape"],
                                  setup=lambda t: _edit_label(t, lambda a, m: (a[:-2], m))),
    "label of another affine": Bad(
        "preprocess {t}/ds --plan {t}/run/plan.json --cache {t}/c --workers 0", ["phantom_000.nii.gz", "affine"],
        setup=lambda t: _edit_label(t, lambda a, m: (a, m @ np.diag([1, 1, 1.5, 1]))),
        creates=("c", "c/cache.json"), uses=("ds", "run")),
    "negative labels": Bad("plan {t}/ds -o {t}/plan.json", ["phantom_000.nii.gz", "negative"],
                           setup=lambda t: _edit_label(t, lambda a, m: (a.astype(np.int16) - 1, m))),
    "a header promising 256 GB": Bad("plan {t}/ds -o {t}/plan.json", ["phantom_000_0000.nii.gz"],
                                     setup=lambda t: _huge_header(_first_image(t))),
    "a pickle that would run code": Bad("predict -m {t}/evil.pt -i {t}/ds/imagesTs -o {t}/p2 --spacing 1 1 1 "
                                        "--out-channels 2", ["evil.pt", "refused"], setup=_evil_checkpoint),
    "a run without weights": Bad("predict -m {t}/run -i {t}/ds/imagesTs -o {t}/p2", ["run", "not a run directory"],
                                 setup=lambda t: (t / "run" / "model.safetensors").unlink(), uses=("ds", "run")),
    "corrupt weights": Bad("predict -m {t}/run -i {t}/ds/imagesTs -o {t}/p2", ["model.safetensors"],
                           setup=lambda t: _truncate(t / "run" / "model.safetensors"), uses=("ds", "run")),
    "predict on nothing": Bad("predict -m {t}/run -i {t}/nowhere/*.nii.gz -o {t}/p2", ["nowhere", "no such file"],
                              uses=("run",)),
    "a dataset that is not one": Bad("plan {t}/ds/imagesTr -o {t}/plan.json", ["imagesTr", "no dataset.json"]),
}


def _tree(root: Path) -> Dict[str, Optional[str]]:
    """Every file (its hash) and folder (None) below ``root``, by relative path."""
    out: Dict[str, Optional[str]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, world, tmp_path, monkeypatch, capsys, caplog):
    bad = CASES[name]
    t = tmp_path
    for part in bad.uses:
        shutil.copytree(world / part, t / part)
    ctx = SimpleNamespace(monkeypatch=monkeypatch, processes=[])
    try:
        if bad.setup is not None:
            args = (t, ctx)[: len(inspect.signature(bad.setup).parameters)]
            bad.setup(*args)
        before = _tree(t)
        argv = [a.replace("{t}", str(t)).replace("{w}", str(world)) for a in bad.argv.split()]
        world_before = _tree(world) if "{w}" in bad.argv else None
        caplog.set_level("INFO")
        code = cli.main(argv)
    finally:
        monkeypatch.undo()
        for p in ctx.processes:
            p.kill()
            p.wait()
    out, err = capsys.readouterr()
    logged = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    said = ([line for line in err.splitlines() if line.startswith(f"unetr {argv[0]}:")] + logged
            + [line for line in out.splitlines() if line.startswith("problem:")])  # `unetr check` lists them
    assert code == bad.code, (code, err, logged)
    assert "Traceback" not in out + err + caplog.text
    assert said and all("\n" not in line for line in said), (err, logged)
    for text in bad.says:
        assert any(text.replace("{t}", str(t)) in line for line in said), (text, said)
    after = _tree(t)
    changed = [k for k in before if after.get(k, "gone") != before[k]]
    assert not changed, f"changed or removed: {changed}"
    new = [k for k in after if k not in before and not any(fnmatch(k, g) for g in bad.creates)]
    assert not new, f"partial output: {new}"
    assert not (t / "pwned").exists()
    assert world_before is None or _tree(world) == world_before


def test_the_table_covers_enough():
    assert len(CASES) >= 40
