"""Post-processing of label maps by connected components, its file (``postprocessing.json``), and the rule
that decides it from cross-validation.

A :class:`PostProcessing` is a list of :class:`Step`: for the foreground as a whole (every non-zero label
together) or for one class, keep only the largest 26-connected component, or remove the components under a
size in mm³; the voxels removed become background. :func:`decide` picks the steps from out-of-fold Dice
figures alone (``unetr cv``); ``unetr predict`` applies the file it wrote.

Example:
    >>> pp = PostProcessing((Step("foreground", "largest"), Step(2, "largest")))
    >>> clean = pp.apply(labels, spacing=(0.8, 0.8, 2.5))   # (X, Y, Z) integer map -> a cleaned copy
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PP_FORMAT = "unetr-postprocessing"
OPS = ("largest", "min_size")
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity

Target = Union[str, int]  # "foreground" or a class index >= 1


# ----------------------------------------------------------------------------------------------- masks


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """``mask`` ``(X, Y, Z)`` bool with only its largest 26-connected component (a new array)."""
    from scipy import ndimage

    comp, n = ndimage.label(mask, structure=_STRUCTURE)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == int(sizes.argmax())


def keep_largest_component(labels: np.ndarray, classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """For each class, keep only its largest 26-connected component (the rest becomes background).

    Args:
        labels: ``(X, Y, Z)`` integer map; changed in place and returned.
        classes: the classes to clean (default: all foreground classes present).
    """
    from scipy import ndimage

    present = [int(c) for c in np.unique(labels) if c != 0] if classes is None else list(classes)
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False))
    for c in present:
        if c < 1 or c > len(boxes) or boxes[c - 1] is None:
            continue
        sub = labels[boxes[c - 1]]
        mask = sub == c
        sub[mask & ~keep_largest(mask)] = 0
    return labels


def drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask`` without its 26-connected components of fewer than ``min_voxels`` voxels (a new array)."""
    from scipy import ndimage

    comp, n = ndimage.label(mask, structure=_STRUCTURE)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(comp.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[comp]


def min_voxels(min_size_mm3: float, spacing: Sequence[float]) -> int:
    """The voxel count of ``min_size_mm3`` at ``spacing`` (rounded up)."""
    return max(1, math.ceil(min_size_mm3 / float(np.prod([float(s) for s in spacing])) - 1e-9))


# ----------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """One operation: ``op`` (``largest`` or ``min_size``) on ``target`` (``"foreground"`` or a class)."""

    target: Target
    op: str = "largest"
    min_size_mm3: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.target != "foreground" and (isinstance(self.target, bool) or not isinstance(self.target, int)
                                            or self.target < 1):
            raise ValueError(f"target must be 'foreground' or a class >= 1, got {self.target!r}")
        if self.op == "min_size" and not self.min_size_mm3 > 0:
            raise ValueError(f"min_size needs a positive size in mm3, got {self.min_size_mm3}")

    def mask_op(self, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """The operation on a boolean mask."""
        if self.op == "largest":
            return keep_largest(mask)
        return drop_small(mask, min_voxels(self.min_size_mm3, spacing))

    def apply(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """``labels`` ``(X, Y, Z)`` with the step applied (a new array; removed voxels become 0)."""
        out = np.array(labels, copy=True)
        if self.target == "foreground":
            mask = out > 0
            out[mask & ~self.mask_op(mask, spacing)] = 0
            return out
        box = _box(out == self.target)
        if box is None:
            return out
        sub = out[box]
        mask = sub == self.target
        sub[mask & ~self.mask_op(mask, spacing)] = 0
        return out

    def describe(self, class_names: Optional[Sequence[str]] = None) -> str:
        what = "the foreground" if self.target == "foreground" else _name(int(self.target), class_names)
        return f"{what}: " + ("largest component" if self.op == "largest" else f"no components < {self.min_size_mm3:g} mm3")

    def to_dict(self, class_names: Optional[Sequence[str]] = None) -> dict:
        d: dict = {"target": self.target, "op": self.op}
        if self.target != "foreground":
            d["name"] = _name(int(self.target), class_names)
        if self.op == "min_size":
            d["min_size_mm3"] = self.min_size_mm3
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Step:
        return cls(d["target"], str(d.get("op", "largest")), float(d.get("min_size_mm3", 0.0)))


def _name(c: int, class_names: Optional[Sequence[str]]) -> str:
    return class_names[c] if class_names is not None and c < len(class_names) else str(c)


def _box(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    from scipy import ndimage

    boxes = ndimage.find_objects(mask.astype(np.uint8))
    return boxes[0] if boxes else None


@dataclass(frozen=True)
class PostProcessing:
    """The steps ``unetr predict`` applies to each label map, in order (none: nothing changes).

    Attributes:
        steps: foreground steps first, then class steps.
        record: what :func:`decide` saw (figures before and after, the candidates tried); written to the file.
    """

    steps: Tuple[Step, ...] = ()
    record: Dict = field(default_factory=dict, compare=False)

    def apply(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """``labels`` ``(X, Y, Z)`` after every step (the input is not changed)."""
        out = labels
        for step in self.steps:
            out = step.apply(out, spacing)
        return out if self.steps else np.array(labels, copy=True)

    def describe(self, class_names: Optional[Sequence[str]] = None) -> str:
        return "; ".join(s.describe(class_names) for s in self.steps) if self.steps else "none"

    def to_dict(self, class_names: Optional[Sequence[str]] = None) -> dict:
        return {"format": PP_FORMAT, "version": 1, "steps": [s.to_dict(class_names) for s in self.steps],
                **self.record}

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "postprocessing.json") -> PostProcessing:
        """Read :meth:`to_dict`'s form.

        Raises:
            ValueError: not a post-processing file, or a malformed step (naming the file).
        """
        if not isinstance(data, Mapping) or data.get("format") != PP_FORMAT:
            raise ValueError(f"{source}: not a unetr post-processing file (format {PP_FORMAT!r})")
        try:
            steps = tuple(Step.from_dict(s) for s in data.get("steps", []))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: bad step ({e})") from None
        return cls(steps, {k: v for k, v in data.items() if k not in ("format", "version", "steps")})


# ----------------------------------------------------------------------------------------------- decision

DiceTable = Mapping[str, Mapping[int, float]]  # case -> class -> Dice (NaN: absent from both)


def class_means(table: DiceTable, classes: Sequence[int]) -> Dict[int, float]:
    """Per class, the mean Dice over cases with NaN left out (NaN when no case has a value)."""
    out = {}
    for c in classes:
        v = np.array([row[c] for row in table.values() if c in row], dtype=np.float64)
        v = v[~np.isnan(v)]
        out[c] = float(v.mean()) if v.size else float("nan")
    return out


def mean_dice(means: Mapping[int, float]) -> float:
    """The mean over classes of the class means, NaN left out (the rule of ``unetr evaluate``'s mean)."""
    v = [x for x in means.values() if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


@dataclass(frozen=True)
class Candidates:
    """Out-of-fold Dice of every candidate, per case and class, as :func:`decide` needs them.

    Attributes:
        base: Dice of the predictions as they are.
        foreground: per foreground step (``"largest"``, ``"min_size"``): Dice after it.
        by_class: ``(prefix, op) -> case -> class c -> Dice of c`` after class ``c``'s step ``op`` on top of
            ``prefix`` (``""``: the predictions as they are, or a foreground op's name); only class ``c``'s
            Dice changes under its own step (removed voxels become background).
    """

    base: DiceTable
    foreground: Mapping[str, DiceTable]
    by_class: Mapping[Tuple[str, str], DiceTable]


def decide(cands: Candidates, classes: Sequence[int], *, tolerance: float = 0.005, min_size_mm3: float = 0.0,
           class_names: Optional[Sequence[str]] = None) -> PostProcessing:
    """Choose post-processing from cross-validation: a step is kept only when it raises the mean Dice and
    lowers no class's mean Dice by more than ``tolerance``. The foreground step is decided first (the
    better of the accepted ones), then each class's step on top of it.

    Args:
        cands: the out-of-fold Dice of each candidate (see :class:`Candidates`).
        classes: the foreground classes.
        tolerance: the largest drop of any class's mean Dice a kept step may cause.
        min_size_mm3: the size of the ``min_size`` candidates (0: only ``largest`` is tried).
        class_names: for the record.

    Returns:
        The steps and their record (``dice_before``, ``dice_after``, ``tried``).
    """
    ops = ["largest"] + (["min_size"] if min_size_mm3 > 0 else [])
    table = {case: dict(row) for case, row in cands.base.items()}
    before = class_means(table, classes)
    current, prefix, steps, tried = before, "", [], []

    def judge(new: Dict[int, float]) -> Tuple[bool, str]:
        gain = mean_dice(new) - mean_dice(current)
        drops = {c: current[c] - new[c] for c in classes if not (math.isnan(current[c]) or math.isnan(new[c]))}
        worst = max(drops, key=drops.get) if drops else None
        if not gain > 1e-12:
            return False, f"mean Dice {gain:+.4f}"
        if worst is not None and drops[worst] > tolerance:
            return False, f"{_name(worst, class_names)} {-drops[worst]:+.4f} (tolerance {tolerance})"
        return True, f"mean Dice {gain:+.4f}"

    best = None
    for op in ops:
        new = class_means(cands.foreground[op], classes)
        ok, why = judge(new)
        tried.append({"target": "foreground", "op": op, "mean_dice": _clean(mean_dice(new)), "kept": ok, "why": why})
        if ok and (best is None or mean_dice(new) > mean_dice(best[1])):
            best = (op, new)
    if best is not None:
        prefix, current = best[0], best[1]
        table = {case: dict(row) for case, row in cands.foreground[prefix].items()}
        steps.append(Step("foreground", prefix, min_size_mm3 if prefix == "min_size" else 0.0))
    for c in classes:
        choice = None
        for op in ops:
            trial = {case: {**row, c: cands.by_class[(prefix, op)][case][c]} for case, row in table.items()}
            new = class_means(trial, classes)
            ok, why = judge(new)
            tried.append({"target": c, "name": _name(c, class_names), "op": op, "mean_dice": _clean(mean_dice(new)),
                          "kept": ok, "why": why})
            if ok and (choice is None or mean_dice(new) > mean_dice(choice[2])):
                choice = (op, trial, new)
        if choice is not None:
            steps.append(Step(c, choice[0], min_size_mm3 if choice[0] == "min_size" else 0.0))
            table, current = choice[1], choice[2]

    def figures(means: Dict[int, float]) -> dict:
        return {**{_name(c, class_names): _clean(means[c]) for c in classes}, "mean": _clean(mean_dice(means))}

    record = {"tolerance": tolerance, "min_size_mm3": min_size_mm3 or None, "cases": len(table),
              "dice_before": figures(before), "dice_after": figures(current), "tried": tried}
    return PostProcessing(tuple(steps), record)


def _clean(x: float) -> Optional[float]:
    return None if math.isnan(x) else round(float(x), 6)


def case_candidates(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], num_classes: int,
                    min_size_mm3: float = 0.0) -> Tuple[Dict[int, float], Dict[str, Dict[int, float]],
                                                         Dict[Tuple[str, str], Dict[int, float]]]:
    """One case's share of :class:`Candidates`: Dice per class as predicted, after each foreground step, and
    of each class after its own steps (on the prediction and on each foreground step's result).

    Args:
        pred / ref: ``(X, Y, Z)`` integer label maps on one grid.
        spacing: mm per voxel (for ``min_size``).
        num_classes: K, background included.
    """
    from unetr.metrics import confusion_matrix, dice_from_confusion

    ops = ["largest"] + (["min_size"] if min_size_mm3 > 0 else [])
    classes = range(1, num_classes)
    base = dice_from_confusion(confusion_matrix(pred, ref, num_classes))
    fg: Dict[str, Dict[int, float]] = {}
    results = {"": pred}
    for op in ops:
        cleaned = Step("foreground", op, min_size_mm3 if op == "min_size" else 0.0).apply(pred, spacing)
        results[op] = cleaned
        d = dice_from_confusion(confusion_matrix(cleaned, ref, num_classes))
        fg[op] = {c: float(d[c]) for c in classes}
    ref_counts = np.bincount(ref.ravel().astype(np.int64), minlength=num_classes)
    by_class: Dict[Tuple[str, str], Dict[int, float]] = {}
    for prefix, labels in results.items():
        for op in ops:
            step_dice = {}
            for c in classes:
                step = Step(c, op, min_size_mm3 if op == "min_size" else 0.0)
                step_dice[c] = _class_dice_after(labels, ref, c, step, spacing, int(ref_counts[c]))
            by_class[(prefix, op)] = step_dice
    return {c: float(base[c]) for c in classes}, fg, by_class


def _class_dice_after(labels: np.ndarray, ref: np.ndarray, c: int, step: Step, spacing: Sequence[float],
                      ref_count: int) -> float:
    """Dice of class ``c`` once ``step`` (a step on ``c``) cleaned ``labels``; computed in ``c``'s box."""
    box = _box(labels == c)
    if box is None:
        return float("nan") if ref_count == 0 else 0.0
    mask = step.mask_op(labels[box] == c, spacing)
    n_pred = int(mask.sum())
    tp = int((mask & (ref[box] == c)).sum())
    denom = n_pred + ref_count
    return float("nan") if denom == 0 else 2.0 * tp / denom


def merge_candidates(per_case: Mapping[str, Tuple[Dict, Dict, Dict]]) -> Candidates:
    """:class:`Candidates` from :func:`case_candidates` of every case (``case -> its result``)."""
    base = {case: r[0] for case, r in per_case.items()}
    keys_fg = {k for r in per_case.values() for k in r[1]}
    keys_cl = {k for r in per_case.values() for k in r[2]}
    fg = {k: {case: r[1][k] for case, r in per_case.items()} for k in keys_fg}
    cl = {k: {case: r[2][k] for case, r in per_case.items()} for k in keys_cl}
    return Candidates(base, fg, cl)


__all__ = ["OPS", "PP_FORMAT", "Candidates", "PostProcessing", "Step", "case_candidates", "class_means", "decide",
           "drop_small", "keep_largest", "keep_largest_component", "mean_dice", "merge_candidates", "min_voxels"]
