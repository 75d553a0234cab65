"""The OpenMIC evaluation protocol and friends, in numpy.

OpenMIC macro F1 (the paper's and the authors' code's metric): for each instrument, over the
test items whose label is known, binarise targets and scores at 0.5 and take the mean F1 of the
classes present (negative and positive; sklearn's ``classification_report`` 'macro avg'); then
average over instruments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _f1(truth: np.ndarray, pred: np.ndarray, positive: bool) -> float:
    t, p = truth == positive, pred == positive
    tp = float(np.sum(t & p))
    denom = 2 * tp + float(np.sum(~t & p)) + float(np.sum(t & ~p))
    return 2 * tp / denom if denom else 0.0


def class_f1(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(mean of the present classes' F1, positive-class F1) for boolean arrays."""
    present = [c for c in (False, True) if np.any(truth == c) or np.any(pred == c)]
    if not present:
        return float("nan"), float("nan")
    return float(np.mean([_f1(truth, pred, c) for c in present])), _f1(truth, pred, True)


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall step curve (sklearn's definition); nan without positives."""
    n_pos = int(truth.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], truth[order].astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tied score
    tps = np.cumsum(t)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class Report:
    labels: tuple[str, ...]
    f1_macro: np.ndarray  # per label: mean of negative/positive F1 (OpenMIC protocol)
    f1_positive: np.ndarray
    ap: np.ndarray
    support: np.ndarray  # labelled items per label
    positives: np.ndarray

    @property
    def macro_f1(self) -> float:
        return float(np.nanmean(self.f1_macro))

    @property
    def positive_f1(self) -> float:
        return float(np.nanmean(self.f1_positive))

    @property
    def mean_ap(self) -> float:
        return float(np.nanmean(self.ap)) if np.any(~np.isnan(self.ap)) else float("nan")

    def summary(self) -> dict[str, float]:
        return {"macro_f1": self.macro_f1, "positive_f1": self.positive_f1, "mAP": self.mean_ap}

    def table(self) -> str:
        width = max(10, *(len(label) for label in self.labels))
        lines = [f"{'instrument'.ljust(width)}  {'F1':>6}  {'F1+':>6}  {'AP':>6}  {'labelled':>8}  {'positive':>8}"]
        for i, label in enumerate(self.labels):
            lines.append(f"{label.ljust(width)}  {self.f1_macro[i]:6.3f}  {self.f1_positive[i]:6.3f}  "
                         f"{self.ap[i]:6.3f}  {self.support[i]:8d}  {self.positives[i]:8d}")
        lines.append(f"{'mean'.ljust(width)}  {self.macro_f1:6.3f}  {self.positive_f1:6.3f}  {self.mean_ap:6.3f}")
        return "\n".join(lines)


def evaluate(labels, y_true: np.ndarray, y_mask: np.ndarray, scores: np.ndarray,
             thresholds: np.ndarray | float = 0.5) -> Report:
    """Per-label metrics over labelled items; targets binarised at 0.5, scores at ``thresholds``."""
    k = y_true.shape[1]
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (k,))
    f1m, f1p, ap = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
    support, positives = np.zeros(k, int), np.zeros(k, int)
    for i in range(k):
        rows = y_mask[:, i].astype(bool)
        truth = y_true[rows, i] >= 0.5
        support[i], positives[i] = rows.sum(), truth.sum()
        if not rows.any():
            continue
        f1m[i], f1p[i] = class_f1(truth, scores[rows, i] >= thr[i])
        ap[i] = average_precision(truth, scores[rows, i])
    return Report(tuple(labels), f1m, f1p, ap, support, positives)


def tune_thresholds(y_true: np.ndarray, y_mask: np.ndarray, scores: np.ndarray,
                    grid: np.ndarray | None = None) -> np.ndarray:
    """Per-label decision threshold maximising that label's OpenMIC F1 on (validation) data;
    0.5 where a label has no labelled item. Ties go to the threshold nearest 0.5."""
    grid = np.round(np.arange(0.02, 0.99, 0.01), 2) if grid is None else np.asarray(grid)
    grid = grid[np.argsort(np.abs(grid - 0.5), kind="mergesort")]
    out = np.full(y_true.shape[1], 0.5)
    for i in range(y_true.shape[1]):
        rows = y_mask[:, i].astype(bool)
        if not rows.any():
            continue
        truth = y_true[rows, i] >= 0.5
        best = -1.0
        for t in grid:
            f1 = class_f1(truth, scores[rows, i] >= t)[0]
            if f1 > best + 1e-12:
                best, out[i] = f1, t
    return out
