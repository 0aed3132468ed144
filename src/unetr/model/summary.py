"""A layer table (layer, output shape, parameters), the total parameters and the forward FLOPs of a model."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from unetr.config import ModelConfig
from unetr.model.checkpoint import build_model


def _own_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def layer_table(model: nn.Module, x: torch.Tensor, depth: int = 3, flops: bool = True
                ) -> Tuple[List[Tuple[str, str, int]], int, Optional[int]]:
    """Run one forward pass and collect ``(name, output shape, parameters)`` rows down to ``depth``.

    A row's parameter count includes its children that are not shown (deeper than ``depth``).

    Returns:
        ``(rows, total_parameters, forward_flops or None)``.
    """
    shapes: dict = {}
    hooks = []
    names = {}
    for name, mod in model.named_modules():
        level = 0 if name == "" else name.count(".") + 1
        if level <= depth:
            names[mod] = (name or type(model).__name__, level)

            def hook(m, _inp, out, key=name):
                if isinstance(out, torch.Tensor):
                    shapes[key] = list(out.shape)
                elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
                    shapes[key] = list(out[0].shape)

            hooks.append(mod.register_forward_hook(hook))
    total_flops = None
    try:
        with torch.no_grad():
            if flops:
                from torch.utils.flop_counter import FlopCounterMode

                counter = FlopCounterMode(display=False)
                with counter:
                    model(x)
                total_flops = int(counter.get_total_flops())
            else:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, mod in model.named_modules():
        if mod not in names or names[mod][1] > depth:
            continue
        level = names[mod][1]
        if level == depth:
            n = sum(p.numel() for p in mod.parameters())
        else:
            n = _own_params(mod)
        label = ("    " * max(level - 1, 0) + ("└─" if level else "") + f"{type(mod).__name__}"
                 + (f" ({name.rsplit('.', 1)[-1]})" if name else ""))
        shape = str(shapes.get(name, "--"))
        rows.append((label, shape, n))
    total = sum(p.numel() for p in model.parameters())
    return rows, total, total_flops


def summarize(config: ModelConfig, depth: int = 3, flops: bool = True, batch: int = 1) -> str:
    """The printable summary of the model a config builds, for one input of the config's ROI."""
    model = build_model(config).eval()
    x = torch.zeros(batch, config.in_channels, *config.img_size)
    rows, total, total_flops = layer_table(model, x, depth=depth, flops=flops)
    w = max(50, max(len(r[0]) for r in rows) + 2)
    line = "=" * (w + 42)
    out = [line, f"{'Layer (type)':<{w}}{'Output Shape':<28}{'Param #':>14}", line]
    for label, shape, n in rows:
        out.append(f"{label:<{w}}{shape:<28}{(f'{n:,}' if n else '--'):>14}")
    out.append(line)
    out.append(f"Total params: {total:,}")
    out.append(f"Trainable params: {sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    out.append(f"Input: {list(x.shape)}   preset variant: {config.variant}")
    if total_flops is not None:
        out.append(f"Forward FLOPs: {total_flops / 1e9:,.3f} GFLOP (torch.utils.flop_counter; multiply-add = 2)")
    out.append(f"Params size (MB): {total * 4 / 1e6:,.2f}")
    out.append(line)
    return "\n".join(out)
