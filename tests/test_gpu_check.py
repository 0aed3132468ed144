"""benchmarks/gpu_check.py: the CPU smoke run (``--device cpu --quick``) goes through every section, and the
row machinery reports a failing or erroring row without stopping the others."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Dict, List

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
REPO_RESULTS = ROOT / "benchmarks" / "RESULTS-gpu.md"


@pytest.fixture(scope="module")
def gc():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(SCRIPT.parent))


def tables(text: str) -> Dict[int, Dict[str, List[str]]]:
    """``{section number: {row name: [status, cells..., notes]}}`` from the Markdown of RESULTS-gpu.md."""
    out: Dict[int, Dict[str, List[str]]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("## ") and line[3:4].isdigit():
            section = int(line[3])
            out[section] = {}
        elif line.startswith("## "):
            section = None
        elif section is not None and line.startswith("| ") and not line.startswith("| what |"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[section][cells[0]] = cells[1:]
    return out


@pytest.mark.slow
def test_quick_cpu_run_goes_through_every_section(tmp_path, gc):
    before = REPO_RESULTS.read_bytes() if REPO_RESULTS.exists() else None
    results = tmp_path / "out" / "RESULTS-gpu.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread is fastest on a shared CPU
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--results", str(results),
                        "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    text = results.read_text()
    assert "not yet run on a gpu" in text.lower() and "smoke run" in text
    t = tables(text)
    assert sorted(t) == [1, 2, 3, 4, 5]

    # 1. every check that ran passed: tiny in three precisions and both layouts, and predict_volume
    for precision in ("fp32", "bf16", "fp16"):
        for layout in ("last", "first"):
            assert t[1][f"`tiny` forward+backward, {precision}, channels-{layout}"][0] == "pass"
            assert t[1][f"`paper` forward+backward, {precision}, channels-{layout}"][0] == "skipped"
    predict = [v for k, v in t[1].items() if k.startswith("`predict_volume` of a 96x96x40 CT")]
    assert len(predict) == 1 and predict[0][0] == "pass"

    # 2. every speed row is there: forward, training (compiled rows only on a GPU), prediction
    for batch in (1, 4):
        for precision in ("fp32", "bf16"):
            assert t[2][f"forward `tiny` 32³, batch {batch}, {precision}"][0] == "measured"
    for (_cl, comp), name in gc.train_names("bf16").items():
        assert t[2][name][0] == ("n/a" if comp else "measured"), name
    for name in gc.train_names("fp16").values():
        assert t[2][name][0] == "n/a"  # fp16 training needs CUDA, as `unetr train` says
    names = gc.prediction_names(gc.QUICK)
    assert t[2][names[0]][0] == t[2][names[1]][0] == "measured"
    assert t[2][names[2]][0] == "pass"  # equal labels: unetr --geometry monai and MONAI's chain

    # 3. two gloo processes: the run finished and the replicas agree
    run_name, equal_name = gc.torchrun_names(2, cuda=False)
    assert t[3][run_name][0] == "pass" and t[3][equal_name][0] == "pass"
    assert "weights identical" in t[3][equal_name][1]

    # 4. data loading: every row measured
    assert set(t[4]) == set(gc.data_names())
    assert all(v[0] in ("measured", "met", "not met") for v in t[4].values())
    assert "the default (`num_workers` -1) gives 0" in t[4]["loader workers needed"][1]

    # 5. the defaults: layout and windows per batch timed on the CPU too, the copies and compile only on a GPU
    names = gc.defaults_names()
    assert list(t[5]) == list(names)
    assert t[5][names[0]][0] in ("met", "not met") and "channels-first" in t[5][names[0]][2]
    assert t[5][names[1]][0] in ("met", "not met") and t[5][names[1]][1] == "1"  # one window per pass on a CPU
    assert "1: " in t[5][names[1]][2] and "4: " in t[5][names[1]][2]
    assert all(t[5][n][0] == "n/a" for n in names[2:])

    assert (REPO_RESULTS.read_bytes() if REPO_RESULTS.exists() else None) == before


def test_a_raising_row_is_reported_and_the_next_one_runs(gc):
    rec = gc.Recorder()
    budget = gc.Budget(60)

    def boom():
        raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    rec.run(1, "bad check", boom, check=True, budget=budget)
    rec.run(1, "good check", lambda: gc.Outcome(gc.PASS), check=True, budget=budget)
    rec.run(2, "bad timing", boom, check=False, budget=budget)
    assert [r.outcome.status for r in rec.rows] == [gc.ERROR, gc.PASS, gc.ERROR]
    assert rec.rows[0].outcome.note == "RuntimeError: CUDA error: an illegal memory access"
    assert [r.what for r in rec.failed()] == ["bad check"]  # a timing row's error is no failed check


def test_rows_measured_together_all_report_an_error(gc):
    rec = gc.Recorder()
    rec.run_many(2, [("a", False), ("b", True)], lambda: 1 / 0, budget=gc.Budget(60))
    assert [(r.what, r.outcome.status) for r in rec.rows] == [("a", gc.ERROR), ("b", gc.ERROR)]
    assert [r.what for r in rec.failed()] == ["b"]


def test_rows_after_the_budget_are_skipped_not_run(gc):
    rec = gc.Recorder()
    ran = []
    rec.run(1, "late", lambda: ran.append(1) or gc.Outcome(gc.PASS), check=True, budget=gc.Budget(-1))
    assert not ran and rec.rows[0].outcome.status == gc.SKIPPED and not rec.failed()


def test_a_failed_check_makes_the_exit_status_1(tmp_path, gc, monkeypatch):
    def fake_correctness(rec, ctx, budget):
        rec.run(1, "a check that fails", lambda: gc.Outcome(gc.FAIL, {"measured": "logits 1.0e+00"}), check=True,
                budget=budget)

    monkeypatch.setattr(gc, "section_correctness", fake_correctness)
    results = tmp_path / "R.md"
    assert gc.main(["--device", "cpu", "--sections", "1", "--results", str(results)]) == 1
    t = tables(results.read_text())
    assert t[1]["a check that fails"][:2] == ["FAIL", "logits 1.0e+00"]
    assert "--sections 1" in results.read_text()


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--budget-s", "0"], ["--threads", "0"]])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, gc, argv):
    results = tmp_path / "R.md"
    assert gc.main([*argv, "--results", str(results)]) == 2
    assert not results.exists()


def test_forward_backward_check_catches_a_wrong_model(gc):
    from unetr import build_model

    sizes = dataclasses.replace(gc.QUICK, roi=16, check_batch=1)
    ref = gc.reference("tiny", sizes)
    cpu = torch.device("cpu")
    same = gc._loaded(build_model(ref["cfg"], channels_last=True), ref, cpu)
    assert gc.check_forward_backward(ref, same, cpu, "fp32").status == gc.PASS
    with torch.no_grad():
        dict(same.named_parameters())["out.conv.conv.weight"].mul_(1.01)  # the output head 1 % off
    out = gc.check_forward_backward(ref, same, cpu, "fp32")
    assert out.status == gc.FAIL and "logits" in out.cells["measured"]


def test_the_compiled_training_step_is_what_unetr_train_compiles(gc, monkeypatch):
    import unetr.accel

    compiled = []
    monkeypatch.setattr(unetr.accel, "compile_model", lambda m, d: compiled.append((m, d)) or m)
    model = torch.nn.Conv3d(1, gc.K, 1)
    cpu = torch.device("cpu")
    gc.ours_step(model, cpu, "fp32", compiled=True)
    gc.ours_step(model, cpu, "fp32")
    assert compiled == [(model, cpu)]
    assert [comp for _, comp in gc.train_names("bf16")] == [False, False, True]  # compiled: channels-last only


@pytest.mark.parametrize("cuda", [False, True])
def test_header_names_the_card_or_says_no_gpu_ran(gc, cuda):
    rec = gc.Recorder()
    rec.rows.append(gc.Row(1, "x", gc.Outcome(gc.PASS), True))
    info = {"torch": "2.13.0", "MONAI": "1.6.1", "cpu": "EPYC", "cores": "2", "threads": "1",
            "card": "NVIDIA H200", "capability": "9.0", "memory": "140 GiB", "gpus": "1", "driver": "570.1",
            "cuda": "12.8", "cudnn": "91000"}
    text = gc.render(rec, types.SimpleNamespace(cuda=cuda, quick=not cuda), info, "python benchmarks/gpu_check.py", 1.0)
    assert ("not yet run on a gpu" in text.lower()) is not cuda
    for name in ("NVIDIA H200", "driver 570.1", "CUDA 12.8"):
        assert (name in text) is cuda
    assert "torch 2.13.0" in text and ("EPYC" in text) is not cuda
    assert "| x | pass |" in text
