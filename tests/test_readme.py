"""Every command of the README runs, as written, on stand-in data laid out as the README says.

The README's examples name the MSD spleen task, BTCV and the official BTCV checkpoint, which cannot be
downloaded here. This test lays out stand-ins with the same paths and formats (phantoms in the MSD v1
layout, a MONAI <= 0.8 checkpoint built from MONAI's UNETR) and runs each README command in order. Only
the compute budget is changed, by options appended to the command (argparse keeps the last occurrence):
the model preset, crop size and iteration counts, so the test takes a minute instead of days. The
multi-node torchrun command runs its two node ranks on this machine against 127.0.0.1.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Budget options appended per subcommand (never changing what the command does, only how much).
BUDGET = {
    "plan": ["--preset", "tiny", "--roi", "32"],
    "train": ["--iterations", "2", "--val-every", "2", "--checkpoint-every", "2", "--num-workers", "0",
              "--no-progress"],
    "demo": ["--iterations", "2", "--cases", "2", "--test-cases", "1"],
    "summary": ["--no-flops"],
}


def readme_commands():
    """The shell commands of the README's bash blocks, in order (comments and blank lines dropped)."""
    text = README.read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    return cmds


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _msd_spleen(root: Path):
    """Phantoms laid out as the MSD's Task09_Spleen (dataset.json v1, images without channel suffix)."""
    from unetr.data.synthetic import make_phantom_dataset

    src = make_phantom_dataset(root / "_phantoms", cases=5, test_cases=2, seed=5)
    task = root / "data" / "Task09_Spleen"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    training, test = [], []
    for f in sorted((src / "imagesTr").glob("*.nii.gz")):
        case = f.name.replace("_0000.nii.gz", ".nii.gz")
        shutil.copy(f, task / "imagesTr" / case)
        shutil.copy(src / "labelsTr" / case, task / "labelsTr" / case)
        training.append({"image": f"./imagesTr/{case}", "label": f"./labelsTr/{case}"})
    for f in sorted((src / "imagesTs").glob("*.nii.gz")):
        case = f.name.replace("_0000.nii.gz", ".nii.gz")
        shutil.copy(f, task / "imagesTs" / case)
        test.append(f"./imagesTs/{case}")
    labels = json.loads((src / "dataset.json").read_text())["labels"]
    (task / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "modality": {"0": "CT"}, "labels": {str(v): k for k, v in labels.items()},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }))
    btcv = root / "data" / "BTCV" / "imagesTs"
    btcv.mkdir(parents=True)
    shutil.copy(task / "imagesTs" / Path(test[0]).name, btcv / "img0061.nii.gz")
    shutil.rmtree(src)


def _official_btcv_checkpoint(path: Path):
    """A MONAI <= 0.8 UNETR checkpoint as the official BTCV one is laid out (perceptron, 14 classes, 96³)."""
    from monai.networks.nets import UNETR

    m = UNETR(in_channels=1, out_channels=14, img_size=96, proj_type="perceptron")
    sd = {k: v for k, v in m.state_dict().items() if "cross_attn" not in k}
    sd["vit.patch_embedding.cls_token"] = torch.zeros(1, 1, 768)
    for k in ("encoder2.blocks.0.1", "encoder2.blocks.1.1", "encoder3.blocks.0.1"):
        c = sd[f"{k}.conv1.conv.weight"].shape[0]
        sd[f"{k}.conv3.conv.weight"] = torch.zeros(c, c, 1, 1, 1)
    torch.save({"epoch": 5000, "best_acc": 0.8, "state_dict": sd}, path)


def _argv(cmd: str):
    parts = cmd.split()
    exe = Path(sys.executable).parent
    if parts[0] in ("unetr", ".venv/bin/unetr"):
        argv = [str(exe / "unetr"), *parts[1:]]
        sub = parts[1]
    elif parts[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *parts[1:]]
        sub = parts[parts.index("unetr") + 1]
    else:
        pytest.fail(f"README command of an unknown kind: {cmd}")
    argv += BUDGET.get(sub, [])
    if sub == "train" and "--plan" not in argv:
        argv += ["--preset", "tiny", "--roi", "32"]
    return argv, sub


def _run(argv, cwd, env):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    pytest.importorskip("monai")
    _msd_spleen(tmp_path)
    _official_btcv_checkpoint(tmp_path / "UNETR_model_best_acc.pth")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmds = readme_commands()
    subs = set()
    assert cmds, "no commands found in the README"
    for cmd in cmds:
        if cmd.startswith("make "):
            continue  # the quick start: `make demo` is the demo itself, `make test` is this suite
        argv, sub = _argv(cmd)
        subs.add(sub)
        if "--nnodes=2" in cmd:
            port = _free_port()
            argv = [a.replace("HOST:29500", f"127.0.0.1:{port}") for a in argv]
            argv = [re.sub(r"--nproc_per_node=\d+", "--nproc_per_node=1", a) for a in argv]
            ranks = [[re.sub(r"--node_rank=\d+", f"--node_rank={r}", a) for a in argv] for r in (0, 1)]
            procs = [subprocess.Popen(a, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True) for a in ranks]
            outs = [p.communicate(timeout=600)[0] for p in procs]
            assert all(p.returncode == 0 for p in procs), f"{cmd}\n" + "\n".join(o[-3000:] for o in outs)
            continue
        if cmd.startswith("torchrun"):
            argv = [re.sub(r"--nproc_per_node=\d+", "--nproc_per_node=2", a) for a in argv]
        res = _run(argv, tmp_path, env)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    # what the commands were meant to produce is there
    assert (tmp_path / "runs/spleen/model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "preds/spleen").glob("*.nii.gz")) == sorted(
        p.name for p in (tmp_path / "data/Task09_Spleen/imagesTs").glob("*.nii.gz"))
    assert (tmp_path / "preds/spleen_train/eval/metrics.csv").is_file()
    assert (tmp_path / "reports/spleen/report.md").is_file()
    assert (tmp_path / "runs/spleen/model.onnx").is_file()
    assert (tmp_path / "preds/btcv/img0061.nii.gz").is_file()
    assert (tmp_path / "demo-brain/report/report.md").is_file()
    assert {"check", "plan", "preprocess", "train", "predict", "evaluate", "report", "export", "summary",
            "demo"} <= subs
