"""The whole job on data the package makes itself: ``unetr demo`` (what ``make demo`` runs).

Each step is the same CLI command a user would type, run as its own process (``python -m unetr ...``; the
demo never imports the CLI), and each one reuses what an earlier run finished (the dataset, the plan and cache, the finished training, the predictions):

1. ``unetr synth``: phantom CT-like dataset (training and held-out cases), or ``unetr mni`` for the brain;
2. ``unetr train``: plan, preprocess (cached) and train the ``tiny`` preset on the CPU, within what is left of
   the demo's time budget (``--time-budget``: the iteration count is lowered only on a machine too slow for
   the recipe's);
3. ``unetr predict``: the held-out images, back in their original space;
4. ``unetr evaluate``: Dice, IoU, HD95, ASD, surface Dice per class and case;
5. ``unetr report``: ``report.html`` (open it in a browser: the case table, a slice viewer of every held-out
   case, the training curves, the model and its attention maps) and ``report.md`` with PNG overlays.

The recipe is the same on every CPU: one thread per free core for training and prediction
(:func:`demo_threads`: OpenMP threads on cores that other programs keep busy wait for each other, measured
2.5-15x slower than one thread on this project's shared 2-core machine), no data-loader worker (``unetr
train``'s CPU default), ``auto`` precision (bf16 where the CPU computes it natively, else fp32), and the
phantoms trained at 2.0 x 2.0 x 2.67 mm (4/3 of their median spacing) on 48 x 48 x 32 crops, which cover as
much of each body as 64 x 64 x 48 crops at the median spacing did, for 0.375x the voxels; predictions and
the evaluation are on the phantoms' own grids. Where the budget does not bind, a demo run is the same on a
given machine every time (see the README for the figures of both CPU kinds).

With ``folds`` (``unetr demo --folds 3``) step 2 trains every fold (``train --folds``), ``unetr cv`` decides the
post-processing from the folds' validation predictions, each fold and then the folds' ensemble predict and
evaluate the held-out cases, and the report shows the ensemble.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

from unetr.errors import UnetrError

log = logging.getLogger(__name__)

# Training settings of the demo: the `tiny` preset; reaches mean foreground Dice >= 0.85 on the held-out
# phantoms in a few minutes on 2 CPU cores of either kind (see README).
PHANTOM_TRAIN = ["--preset", "tiny", "--iterations", "800", "--val-every", "200", "--checkpoint-every", "200",
                 "--roi", "48", "48", "32", "--set", "plan.target_spacing=[2.0,2.0,2.67]", "--lr", "1e-3",
                 "--set", "warmup_iterations=20", "--set", "samples_per_volume=2", "--set", "val_sw_batch=2",
                 "--set", "batch_dice=true", "--set", "class_balanced=true"]
BRAIN_TRAIN = ["--preset", "tiny", "--iterations", "500", "--val-every", "100", "--checkpoint-every", "100",
               "--roi", "64", "64", "64", "--lr", "1e-3",
               "--set", "warmup_iterations=20", "--set", "samples_per_volume=2", "--set", "val_sw_batch=2",
               "--set", "batch_dice=true", "--set", "class_balanced=true"]
BUDGET_S = 8 * 60.0  # the demo's share of `make demo`'s 10 minutes (installation takes about 2)
AFTER_TRAIN_S = 60.0  # kept for predict, evaluate and report (~35 s measured on 2 AVX2 cores)


def demo_commands(out: Union[str, Path], *, data: str = "phantom", cases: int = 20, test_cases: int = 4,
                  seed: int = 0, train_args: Optional[Sequence[str]] = None, folds: int = 0) -> List[List[str]]:
    """The CLI commands (argument lists after ``unetr``) that the demo runs, in order (with ``folds``: the
    cross-validation's, :func:`fold_commands`)."""
    out = Path(out)
    ds, run, preds, ev, rep = (str(out / n) for n in ("data", "run", "predictions", "evaluation", "report"))
    if data == "phantom":
        make = ["synth", ds, "--cases", str(cases), "--test-cases", str(test_cases), "--seed", str(seed)]
        default_train = PHANTOM_TRAIN
    elif data == "brain":
        make = ["mni", ds, "--cases", str(cases), "--test-cases", str(test_cases), "--seed", str(seed)]
        default_train = BRAIN_TRAIN
    else:
        raise ValueError(f"data must be 'phantom' or 'brain', got {data!r}")
    num_folds = max(2, min(5, cases // 2))  # validation on a fifth of the cases, or half of very few
    train = ["train", ds, "--out", run, "--seed", str(seed), "--set", f"num_folds={num_folds}",
             *(default_train if train_args is None else train_args)]
    commands = [
        make,
        train,
        ["predict", "-m", run, "-i", str(Path(ds) / "imagesTs"), "-o", preds],
        ["evaluate", preds, str(Path(ds) / "labelsTs"), "--labels", str(Path(ds) / "dataset.json"), "-o", ev],
        ["report", "-o", rep, "--run", run, "--pred", preds, "--labels", str(Path(ds) / "labelsTs"), "--images",
         str(Path(ds) / "imagesTs"), "--metrics", str(Path(ev) / "metrics.csv")],
    ]
    return fold_commands(commands, folds) if folds else commands


def fold_commands(commands: List[List[str]], folds: int) -> List[List[str]]:
    """The demo's commands (:func:`demo_commands`) for ``folds``-fold cross-validation: ``train --folds``,
    ``unetr cv``, each fold's prediction and evaluation of the held-out cases (``predictions/fold_K``,
    ``evaluation/fold_K``), then the ensemble's (``predictions/ensemble``, ``evaluation``), which the report shows.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    make, train, predict, evaluate, report = commands
    run = train[train.index("--out") + 1]
    keep = [i for i, a in enumerate(train) if not (a.startswith("num_folds=") or
                                                     (a == "--set" and i + 1 < len(train)
                                                      and train[i + 1].startswith("num_folds=")))]
    train = [train[i] for i in keep] + ["--folds", str(folds)]
    preds, ev = Path(predict[predict.index("-o") + 1]), evaluate[evaluate.index("-o") + 1]

    flags = {"m": "-m", "o": "-o", "run": "--run", "pred": "--pred"}

    def with_(cmd: List[str], **values: str) -> List[str]:
        """``cmd`` with the values of some of its options replaced."""
        cmd = list(cmd)
        for key, value in values.items():
            cmd[cmd.index(flags[key]) + 1] = value
        return cmd

    per_fold: List[List[str]] = []
    for k in range(folds):
        fold_pred = str(preds / f"fold_{k}")
        per_fold.append(with_(predict, m=str(Path(run) / f"fold_{k}"), o=fold_pred))
        per_fold.append(with_([evaluate[0], fold_pred, *evaluate[2:]], o=str(Path(ev) / f"fold_{k}")))
    ensemble = str(preds / "ensemble")
    return [make, train, ["cv", run], *per_fold, with_(predict, o=ensemble), [evaluate[0], ensemble, *evaluate[2:]],
            with_(report, run=str(Path(run) / "fold_0"), pred=ensemble)]


def fold_summaries(out: Union[str, Path]) -> dict:
    """``{fold: summary.json}`` of each fold's held-out evaluation (``evaluation/fold_K``)."""
    found = sorted(Path(out, "evaluation").glob("fold_*/summary.json"), key=lambda p: int(p.parent.name[5:]))
    return {int(p.parent.name[5:]): json.loads(p.read_text()) for p in found}


def busy_cores(samples: int = 5, interval: float = 0.1) -> int:
    """Other programs' runnable threads now: the median over ``samples`` readings of ``procs_running`` in
    ``/proc/stat``, less this process (0 where there is no ``/proc/stat``)."""
    readings = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                readings.append(next(int(ln.split()[1]) for ln in f if ln.startswith("procs_running")) - 1)
        except (OSError, StopIteration, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(sorted(readings)[len(readings) // 2], 0)


def demo_threads(cores: int, busy: int) -> int:
    """Training threads: the cores that other programs leave free, at least one."""
    return max(1, cores - busy)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train_budget(train_cmd: List[str], seconds_left: float) -> List[str]:
    """``train_cmd`` with ``--time-budget`` set to what is left for training (at least a minute)."""
    return [*train_cmd, "--time-budget", f"{max(seconds_left, 60.0):.0f}s"]


def describe_cpu() -> str:
    """The CPU (flags, kernel level), the threads and the precision training takes there, for the log."""
    import torch

    from unetr.device import cpu_summary, explain_precision

    precision, why = explain_precision("auto", torch.device("cpu"))
    return f"{cpu_summary()}; {torch.get_num_threads()} threads: training in {precision} ({why})"


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_command(argv: Sequence[str], threads: Optional[int] = None) -> int:
    """Run ``unetr ARGV`` as a child process of this Python (its output goes to this terminal), with
    ``threads`` as PyTorch's default thread count there (``OMP_NUM_THREADS``) when given."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "unetr", *argv], check=False, env=env).returncode


def run_demo(out: Union[str, Path], *, data: str = "phantom", cases: int = 20, test_cases: int = 4, seed: int = 0,
             train_args: Optional[Sequence[str]] = None, fresh: bool = False, iterations: Optional[int] = None,
             budget_s: Optional[float] = BUDGET_S, runner: Optional[Callable[[List[str]], int]] = None,
             folds: int = 0) -> dict:
    """Run the demo's commands; returns ``{"seconds", "summary", "report", "steps", "folds"}`` (``report``: the
    path of ``report.html``; ``steps``: the ``(command, wall seconds, CPU seconds)`` of each step run; the CPU
    seconds of a one-thread step are what it takes on an idle core, whatever else the machine runs; ``folds``:
    each fold's held-out summary when ``folds``, and ``summary`` is then the ensemble's).

    Args:
        out: the demo folder (``data/``, ``run/``, ``predictions/``, ``evaluation/``, ``report/``).
        fresh: start again (remove ``out`` first) instead of reusing finished steps.
        iterations: training iterations instead of the demo's (validation every sixth of them).
        budget_s: seconds for the whole demo; training gets what the other steps leave (``unetr train
            --time-budget``), so the iterations are lowered on a machine too slow for them. None: no budget.
        runner: how a command runs (default: :func:`run_command`, ``python -m unetr`` in a child process
            with one thread per free core).
    """
    import shutil

    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    if iterations is not None:
        train_args = list(train_args if train_args is not None else (PHANTOM_TRAIN if data == "phantom" else BRAIN_TRAIN))
        every = str(max(1, iterations // 6))
        for flag, value in (("--iterations", str(iterations)), ("--val-every", every), ("--checkpoint-every", every)):
            train_args[train_args.index(flag) + 1] = value
    cmds = demo_commands(out, data=data, cases=cases, test_cases=test_cases, seed=seed, train_args=train_args,
                         folds=folds)
    cores, busy = usable_cores(), busy_cores()
    threads = demo_threads(cores, busy)
    log.info("[demo] %s; %d of %d cores free: training and prediction with %d thread(s)", describe_cpu(),
             cores - min(busy, cores), cores, threads)
    runner = runner or (lambda cmd: run_command(cmd, threads))
    steps = []
    for i, cmd in enumerate(cmds):
        if i == 0 and (out / "data" / "dataset.json").is_file():
            log.info("[demo] %s: reusing %s", cmd[0], out / "data")
            continue
        if cmd[0] == "train":
            cmd = [*cmd, "--threads", str(threads)] if "--threads" not in cmd else cmd
            if budget_s is not None and "--folds" not in cmd:  # the budget times one run, not the folds
                cmd = train_budget(cmd, budget_s - (time.perf_counter() - t0) - AFTER_TRAIN_S)
        log.info("[demo] step %d/%d: unetr %s", i + 1, len(cmds), " ".join(cmd))
        t_step, cpu_step = time.perf_counter(), _children_cpu()
        rc = runner(cmd)
        if rc != 0:
            raise UnetrError(f"demo step `unetr {' '.join(cmd)}` failed with exit code {rc}")
        steps.append((cmd[0], time.perf_counter() - t_step, _children_cpu() - cpu_step))
        log.info("[demo] step %d/%d (%s) took %.1f s (%.1f s of CPU)", i + 1, len(cmds), cmd[0], *steps[-1][1:])
    summary_path = out / "evaluation" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "summary": summary, "report": out / "report" / "report.html", "steps": steps,
            "folds": fold_summaries(out) if folds else {}}
