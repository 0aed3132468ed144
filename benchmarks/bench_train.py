"""Training step throughput: unetr against MONAI's UNETR + DiceCELoss + AdamW, in one run.

One training step = forward, Dice+CE loss, backward, AdamW step, zeroing the gradients, on a batch of
4 crops of 96^3 (1 channel, 14 classes: the BTCV recipe), with

- ours:  ``unetr.model.build_model`` of the preset, ``unetr.training.DiceCELoss``,
  ``unetr.training.build_optimizer`` (AdamW, fused kernel) -- what ``unetr.training.fit`` runs with its
  defaults (a channels-last decoder; ``--channels-first`` runs ours in PyTorch's default layout instead);
- MONAI: ``monai.networks.nets.UNETR`` with the same architecture, ``monai.losses.DiceCELoss(to_onehot_y=True,
  softmax=True)``, ``torch.optim.AdamW`` -- as MONAI's UNETR tutorial writes it.

Both run under the best precision the device supports (:func:`unetr.training.resolve_precision`: bf16
autocast on CPUs with AVX-512 BF16 and on recent GPUs, fp32 on a CPU without native bf16 -- AVX2-only, or
a process whose ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` hold the kernels below AVX-512 -- where
bf16 would be emulated and timing it would say nothing; the ``--precision`` option overrides it for both).
The table names the CPU's flags and the precision, and a run without native bf16 writes its own section
(``## Training without native bf16``), so the figures of both kinds of CPU stay side by side.
MONAI's UNETR hard-codes 12 blocks with skips after blocks 4, 7 and 10; for the ``small`` preset (8 blocks,
skips 2, 4, 6) its blocks are truncated to 8 and its own modules are called in its own order with the skips
of the preset, so both sides compute the same network.

Repeats alternate between the two sides (after one warm-up step each) and the medians are reported with
the ratio; the ``## Training (bench_train.py)`` section of ``benchmarks/RESULTS.md`` is rewritten (other
sections are left alone).

Usage:
    python benchmarks/bench_train.py [--presets paper small] [--repeats 3] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

HERE = Path(__file__).resolve().parent
SECTION = "## Training (bench_train.py)"
SECTION_NO_BF16 = "## Training without native bf16 (bench_train.py)"
BATCH, ROI, IN_CH, K = 4, (96, 96, 96), 1, 14
LR, WD = 1e-4, 1e-5


def ours(preset_name: str, device: torch.device, precision: str,
         channels_last: bool = True) -> Callable[[torch.Tensor, torch.Tensor], float]:
    from unetr.config import preset
    from unetr.device import autocast
    from unetr.model import build_model
    from unetr.training import DiceCELoss, build_optimizer

    model = build_model(preset(preset_name, in_channels=IN_CH, out_channels=K, img_size=ROI),
                        channels_last=channels_last).to(device)
    model.train()
    opt = build_optimizer(model, lr=LR, weight_decay=WD, device=device)
    loss_fn = DiceCELoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast(device, precision):
            logits = model(x)  # (B, K, X, Y, Z)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def monai(preset_name: str, device: torch.device, precision: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNETR

    from unetr.config import preset
    from unetr.device import autocast

    cfg = preset(preset_name, in_channels=IN_CH, out_channels=K, img_size=ROI)
    model = UNETR(in_channels=IN_CH, out_channels=K, img_size=ROI, feature_size=cfg.feature_size,
                  hidden_size=cfg.hidden_size, mlp_dim=cfg.mlp_dim, num_heads=cfg.num_heads, proj_type="conv",
                  norm_name="instance", res_block=True, dropout_rate=0.0).to(device)
    skips = [s - 1 for s in cfg.skip_layers]  # MONAI's hidden_states_out indices
    if cfg.num_layers != 12 or skips != [3, 6, 9]:
        model.vit.blocks = model.vit.blocks[: cfg.num_layers]
        forward = _monai_forward(model, skips)
    else:
        forward = model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast(device, precision):
            logits = forward(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    return step


def _monai_forward(m, skips: List[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """MONAI UNETR's own forward with other skip blocks (its modules, its order)."""

    def forward(x_in: torch.Tensor) -> torch.Tensor:
        x, hidden = m.vit(x_in)
        enc1 = m.encoder1(x_in)
        enc2 = m.encoder2(m.proj_feat(hidden[skips[0]]))
        enc3 = m.encoder3(m.proj_feat(hidden[skips[1]]))
        enc4 = m.encoder4(m.proj_feat(hidden[skips[2]]))
        dec3 = m.decoder5(m.proj_feat(x), enc4)
        dec2 = m.decoder4(dec3, enc3)
        dec1 = m.decoder3(dec2, enc2)
        return m.out(m.decoder2(dec1, enc1))

    return forward


def bench(preset_name: str, device: torch.device, precision: str, repeats: int,
          channels_last: bool = True) -> Dict[str, List[float]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, IN_CH, *ROI, generator=g).to(device)
    y = torch.randint(0, K, (BATCH, 1, *ROI), generator=g).to(device)
    sides = {"unetr": ours(preset_name, device, precision, channels_last),
             "MONAI": monai(preset_name, device, precision)}
    for step in sides.values():  # warm-up (allocator, oneDNN primitives, fused kernels)
        step(x, y)
    times: Dict[str, List[float]] = {n: [] for n in sides}
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            sides[name](x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
            print(f"  {preset_name} {name}: {times[name][-1]:.2f} s/step", flush=True)
    return times


def write_section(text: str, path: Path, section: str = SECTION) -> None:
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text, old)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> None:
    from unetr.device import cpu_summary, explain_precision

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["paper", "small"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--channels-first", action="store_true", help="our decoder in PyTorch's default layout")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    precision, why = explain_precision(args.precision, device)
    if args.precision == "auto" and device.type == "cpu" and precision == "fp32":
        print(f"no native bf16 ({why}): timing fp32 on both sides", flush=True)
    if precision == "fp16":
        precision = "fp32"  # a gradient scaler would be needed on both sides; keep the comparison simple
    import monai

    rows = []
    for name in args.presets:
        t = bench(name, device, precision, args.repeats, not args.channels_first)
        mo, us = statistics.median(t["MONAI"]), statistics.median(t["unetr"])
        rows.append((name, mo, us))
        print(f"{name}: MONAI {mo:.2f} s/step ({1 / mo:.3f} it/s), unetr {us:.2f} s/step ({1 / us:.3f} it/s), "
              f"{mo / us:.2f}x", flush=True)
    dev = (torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"{platform.machine()} CPU ({cpu_summary()})")
    section = SECTION if precision != "fp32" or args.precision != "auto" or device.type != "cpu" else SECTION_NO_BF16
    mode = (f"{precision} autocast on both sides" if precision != "fp32" else
            f"fp32 on both sides ({'asked for' if args.precision == 'fp32' else 'no native bf16: ' + why})")
    lines = [
        section, "",
        f"`python benchmarks/bench_train.py --presets {' '.join(args.presets)} --repeats {args.repeats} "
        f"--threads {args.threads}{' --channels-first' if args.channels_first else ''}` on {dev}, {args.threads} torch threads, torch {torch.__version__}, MONAI "
        f"{monai.__version__}, {mode}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"One step = forward + Dice/CE loss + backward + AdamW step on {BATCH} crops of "
        f"{ROI[0]}x{ROI[1]}x{ROI[2]}, 1 channel, {K} classes; medians of {args.repeats} alternating repeats "
        "after one warm-up step each.",
        "",
        "| preset | MONAI (s/step) | unetr (s/step) | MONAI (it/s) | unetr (it/s) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, mo, us in rows:
        lines.append(f"| {name} | {mo:.2f} | {us:.2f} | {1 / mo:.3f} | {1 / us:.3f} | {mo / us:.2f}x |")
    lines += ["", "- unetr: what `unetr train` runs by default: fused AdamW, Dice/CE from one log-softmax without "
                  "a one-hot tensor" + (", channels-first decoder" if args.channels_first else ", channels-last decoder")
              + "; MONAI: its UNETR, DiceCELoss and torch's AdamW as its tutorial uses them.",
              "- Both sides run in this one process with glibc's default allocator; absolute times move by about "
              "10 % between runs, the alternation keeps the ratio fair.", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text, HERE / "RESULTS.md", section)


if __name__ == "__main__":
    main()
