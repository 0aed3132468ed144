"""The streamed soft inverse: the network's scores on the preprocessed grid back to the input file's grid,
with the argmax taken there (as MONAI and nnU-Net do), slab by slab as the sliding window emits them.

:func:`unetr.data.preprocess.invert_to_original` does the same on whole volumes (and is the reference the
tests compare with); this class never holds a full float volume on either grid.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from unetr.data.preprocess import PreprocessRecord, monai_inverse_taps, to_file_grid
from unetr.data.resample import linear_taps

_DENSE_FRACTION = 0.3  # above this fraction of mixed output voxels in a chunk, interpolate every voxel
_PAD_LABEL = 255  # the label of the zero padding around a crop (no class has it)


def _extend_high(lab: torch.Tensor) -> torch.Tensor:
    """``lab`` (Y, Z) with its last row and column repeated once (the clamped neighbours of the edge)."""
    lab = torch.cat([lab, lab[-1:]], 0)
    return torch.cat([lab, lab[:, -1:]], 1)


class SoftInverse:
    """Soft outputs on the preprocessed grid back to the input file's grid, with the argmax taken there
    (as MONAI and nnU-Net do), fed in order in slabs of planes along the first axis, so that neither grid
    ever holds a full float volume.

    With the ``extent`` geometry the softmax probabilities are resampled linearly on the crop (outside it
    the label is background); with ``monai`` the logits go back as MONAI's ``Invertd`` takes them (zero
    padding around the crop, border clamped). Memory: the label map, the slabs not yet used up and a few
    output planes at a time.

    With ``probabilities`` the slabs are probabilities (an ensemble's mean) and go back as they are.

    Example:
        >>> inv = SoftInverse(record, num_classes=4)
        >>> for slab in slabs:  # (K, n, Y, Z) float32, first-axis order
        ...     inv.push(slab)
        >>> labels = inv.result()  # (X, Y, Z) uint8 on the input file's grid
    """

    _CHUNK = 1 << 22  # floats per working array of a chunk of output planes

    def __init__(self, record: PreprocessRecord, num_classes: int, probabilities: bool = False) -> None:
        self.record = record
        self.k = int(num_classes)
        self.probabilities = probabilities  # the slabs are probabilities already (an ensemble's mean): no softmax
        if not 1 <= self.k < _PAD_LABEL:
            raise ValueError(f"SoftInverse handles 1 to {_PAD_LABEL - 1} classes, got {self.k}")
        n = record.shape
        self.monai = record.mode == "monai"
        self.grid = None
        if self.monai:  # indices into the array padded by one (zero) plane on each side
            self.region = tuple(slice(0, s) for s in record.ras_shape)
            taps = monai_inverse_taps(record)
            # the (y, z) taps as one grid_sample grid over the padded plane (align_corners=True)
            gy, gz = (np.where(i1 == i0, i0, i0 + w) / (size + 1) * 2 - 1
                      for (i0, i1, w), size in zip(taps[1:], n[1:]))
            grid = np.stack(np.broadcast_arrays(gz[None, :], gy[:, None]), -1)[None]
            self.grid = torch.from_numpy(grid.astype(np.float32))
        else:  # always inside the array; the same taps as resample_linear (torch's align_corners=False)
            self.region = record.crop
            taps = [linear_taps(a, b) for a, b in zip(n, record.crop_shape)]
            taps[0] = (taps[0][0] + 1, taps[0][1] + 1, taps[0][2])  # first axis: padded plane numbers
        self.n = n
        self.taps = [tuple(torch.from_numpy(np.ascontiguousarray(t)) for t in tp) for tp in taps]
        self.zero = torch.zeros((self.k, n[1], n[2]))
        self.zero_label = torch.full((n[1] + 2 * self.monai, n[2] + 2 * self.monai), _PAD_LABEL, dtype=torch.uint8)
        # by padded first-axis index: the (Y, Z) argmax of that plane (padded for monai), and (Y, Z) bool,
        # whether the 2x2x2 cell from there is mixed
        self.labels: Dict[int, torch.Tensor] = {}
        self.cells: Dict[int, torch.Tensor] = {}
        self.last = n[0] + 1 if self.monai else n[0]  # the last padded plane number the taps reach
        self.out = np.zeros(tuple(s.stop - s.start for s in self.region), dtype=np.uint8)
        size = self.out.shape[1:]  # output planes per chunk: working arrays of about _CHUNK floats
        self.step = max(1, self._CHUNK // (self.k * max(size[0], n[1] + 2) * max(size[1], n[2] + 2)))
        self.planes: Dict[int, torch.Tensor] = {}  # padded first-axis index -> (K, Y, Z)
        self.received = 0  # planes of the preprocessed grid received so far
        self.done = 0  # output planes written so far

    def _plane(self, p: int) -> torch.Tensor:
        return self.zero if p == 0 or p == self.n[0] + 1 else self.planes[p]

    def _label(self, p: int) -> torch.Tensor:
        return self.zero_label if p == 0 or p == self.n[0] + 1 else self.labels[p]

    def _cell(self, p: int) -> torch.Tensor:
        """Whether the labels of the cell ``{p, p+1} x {y, y+1} x {z, z+1}`` differ (indices clamped)."""
        if p not in self.cells:
            here, there = self._label(p), self._label(min(p + 1, self.last))
            mixed = torch.zeros(here.shape, dtype=torch.bool)
            for lab in (here, there):
                ext = _extend_high(lab)
                for dy in (0, 1):
                    for dz in (0, 1):
                        mixed |= ext[dy:dy + here.shape[0], dz:dz + here.shape[1]] != here
            self.cells[p] = mixed
        return self.cells[p]

    def push(self, slab: torch.Tensor) -> None:
        """Add the next planes ``(K, m, Y, Z)`` (logits, or probabilities) of the preprocessed grid."""
        slab = torch.as_tensor(slab, dtype=torch.float32)
        if slab.dim() != 4 or slab.shape[0] != self.k or tuple(slab.shape[2:]) != self.n[1:]:
            raise ValueError(f"slab must be ({self.k}, m, {self.n[1]}, {self.n[2]}), got {tuple(slab.shape)}")
        if self.received + slab.shape[1] > self.n[0]:
            raise ValueError(f"more than {self.n[0]} planes pushed")
        if not self.monai and not self.probabilities:
            slab = torch.softmax(slab, 0)
        labels = slab.max(0).indices.to(torch.uint8)  # (m, Y, Z) argmax (max's indices: 4-5x faster on CPUs)
        if self.monai:  # the zero padding around the crop is a label of its own: cells touching it are mixed
            labels = F.pad(labels, (1, 1, 1, 1), value=_PAD_LABEL)
        for j in range(slab.shape[1]):
            self.planes[self.received + 1 + j] = slab[:, j]
            self.labels[self.received + 1 + j] = labels[j]
        self.received += slab.shape[1]
        self._flush()

    def _ready(self, p: int) -> bool:
        return p == 0 or p == self.n[0] + 1 or p <= self.received

    def _flush(self) -> None:
        x0 = self.taps[0][0]
        total = self.out.shape[0]
        while self.done < total:
            hi = self.done
            while hi < total and hi - self.done < self.step and self._ready(min(int(x0[hi]) + 1, self.last)):
                hi += 1
            if hi == self.done:
                break
            self.out[self.done:hi] = self._chunk(slice(self.done, hi))
            self.done = hi
            keep = int(x0[hi]) if hi < total else self.n[0] + 2
            for p in [p for p in self.planes if p < keep]:
                del self.planes[p], self.labels[p]
                self.cells.pop(p, None)

    def _chunk(self, sl: slice) -> np.ndarray:
        """Output planes ``sl``: an output voxel whose 8 neighbours on the preprocessed grid share one argmax
        takes it (a weighted mean of score vectors whose largest entry is the same class keeps it); the
        interpolation runs on the other voxels only, or on all of them when most are mixed."""
        (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = self.taps
        xs = [int(p) for p in x0[sl]]
        out = torch.stack([self._label(p) for p in xs]).index_select(1, y0).index_select(2, z0)  # (m, Yo, Zo)
        mixed = torch.stack([self._cell(p) for p in xs]).index_select(1, y0).index_select(2, z0)
        if self.monai:
            out[out == _PAD_LABEL] = 0  # all eight corners in the zero padding: zero logits, class 0
        n_mixed = int(mixed.sum())
        if n_mixed == 0:
            return out.numpy()
        a = torch.stack([self._plane(p) for p in xs])  # (m, K, Y, Z)
        b = torch.stack([self._plane(int(p)) for p in x1[sl]])
        w = wx[sl]
        if n_mixed > _DENSE_FRACTION * mixed.numel():  # fragmented: interpolate everything
            v = torch.lerp(a, b, w.view(-1, 1, 1, 1))
            del a, b
            if self.monai:  # the taps of grid, one fused pass (7x faster than gathers)
                grid = self.grid.expand(v.shape[0], -1, -1, -1)
                v = F.grid_sample(F.pad(v, (1, 1, 1, 1)), grid, mode="bilinear", padding_mode="border",
                                  align_corners=True)
            else:  # the same taps, one fused pass
                v = F.interpolate(v, size=self.out.shape[1:], mode="bilinear", align_corners=False)
            return v.max(1).indices.to(torch.uint8).numpy()
        if self.monai:  # the taps index the plane padded with zeros
            a, b = F.pad(a, (1, 1, 1, 1)), F.pad(b, (1, 1, 1, 1))
        mo, mq, mr = torch.nonzero(mixed, as_tuple=True)
        score = torch.zeros((mo.numel(), self.k))
        for src, fx in ((a, 1 - w[mo]), (b, w[mo])):
            for ys, fy in ((y0[mq], 1 - wy[mq]), (y1[mq], wy[mq])):
                for zs, fz in ((z0[mr], 1 - wz[mr]), (z1[mr], wz[mr])):
                    score += src[mo, :, ys, zs] * (fx * fy * fz)[:, None]
        out[mo, mq, mr] = score.argmax(1).to(torch.uint8)
        return out.numpy()

    def result(self) -> np.ndarray:
        """The label map ``(X, Y, Z)`` uint8 on the input file's grid (after every plane was pushed)."""
        if self.received != self.n[0] or self.done != self.out.shape[0]:
            raise RuntimeError(f"{self.received} of {self.n[0]} planes pushed, {self.done} of "
                               f"{self.out.shape[0]} output planes written")
        full = np.zeros(self.record.ras_shape, dtype=np.uint8)
        full[self.region] = self.out
        return to_file_grid(full, self.record)


__all__ = ["SoftInverse"]
