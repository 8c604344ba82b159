"""Task metrics from predictions and labels: accuracy, and F1 (binary) or macro-F1 (multi-class).

Accuracy hides a collapsed minority class on an imbalanced task, so every
score also carries the task's F1: of label 1, the positive class, when there
are two labels; the unweighted mean of the per-class F1 over all labels when
there are more. ``task.metric`` picks the one the search optimizes, and it is
always recorded, even where it is not the task's own (macro-F1 of a binary
task). F1 is scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import f1_score

from autocompress.config import TASK_METRICS

METRICS: tuple[str, ...] = TASK_METRICS["sequence-classification"]


def task_metrics(num_labels: int, selected: str = "accuracy") -> tuple[str, ...]:
    """The metrics recorded for a task of ``num_labels`` classes: accuracy and its F1, then ``selected`` if neither."""
    check_metric(selected, num_labels)
    names = ("accuracy", "f1" if num_labels == 2 else "macro_f1")
    return names if selected in names else (*names, selected)


def check_metric(metric: str, num_labels: int) -> None:
    """Raise ``ValueError`` for an unknown metric, or ``f1`` (one positive class) on a task of more than two labels."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if metric == "f1" and num_labels != 2:
        allowed = ", ".join(m for m in METRICS if m != "f1")
        raise ValueError(f"f1 is the F1 of label 1 and needs 2 labels, this task has {num_labels}; allowed: {allowed}")


def classification_scores(predictions: ArrayLike, labels: ArrayLike, *, num_labels: int, metric: str = "accuracy") -> dict[str, float]:
    """Every metric of ``task_metrics(num_labels, metric)`` for these predicted and true class ids.

    Macro-F1 averages over all ``num_labels`` classes, so a class never
    predicted counts with F1 0; a class absent from both the labels and the
    predictions (a small dev split) also counts as 0 — the same for every
    model scored on those rows, so comparisons between them are unaffected.
    """
    predicted, truth = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if predicted.shape != truth.shape or not len(truth):
        raise ValueError(f"predictions {predicted.shape} and labels {truth.shape} must be equally long and not empty")
    scores = {}
    for name in task_metrics(num_labels, metric):
        if name == "accuracy":
            scores[name] = float((predicted == truth).mean())
        elif name == "f1":
            scores[name] = float(f1_score(truth, predicted, pos_label=1, average="binary", zero_division=0.0))
        else:
            scores[name] = float(f1_score(truth, predicted, labels=list(range(num_labels)), average="macro", zero_division=0.0))
    return scores


def split_scores(split: str, scores: Mapping[str, float]) -> dict[str, float]:
    """``scores`` other than accuracy keyed by split (``dev_f1``): accuracy has its own ``dev_accuracy`` fields."""
    return {f"{split}_{name}": value for name, value in scores.items() if name != "accuracy"}
