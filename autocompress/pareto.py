"""The Pareto front of a study: rows, the selection rule, a table and a plot.

Everything is read back from the Optuna study (its storage is the source of
truth), so ``autocompress pareto`` shows the same front as the search printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.config import ConfigError, Selection

BASELINE_ATTR = "baseline"
MB = 1e6


def trial_row(trial: FrozenTrial, baseline: dict[str, float]) -> dict[str, Any]:
    """One trial's measurements, relative to the uncompressed teacher measured in the same run."""
    attrs = trial.user_attrs
    accuracy, latency, size = attrs["accuracy"], attrs["latency_ms"], attrs["size_bytes"]
    return {
        "trial": trial.number,
        "accuracy": accuracy,
        "accuracy_drop": baseline["accuracy"] - accuracy,
        "latency_ms": latency,
        "latency_p90_ms": attrs.get("latency_p90_ms"),
        "speedup": baseline["latency_ms"] / latency,
        "size_mb": size / MB,
        "compression": baseline["size_bytes"] / size,
        "feasible": all(value <= 0 for value in trial.constraints.values()),
        "policy": attrs["policy"],
        "artifact": attrs.get("artifact"),
    }


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated trials among feasible ones (Optuna's rule); all trials if none is feasible."""
    front = study.best_trials
    if front:
        return sorted(front, key=lambda t: t.number)
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return sorted(optuna.study._multi_objective._get_pareto_front_trials_by_trials(completed, study.directions), key=lambda t: t.number)


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    baseline = study.user_attrs.get(BASELINE_ATTR)
    if baseline is None:
        raise ConfigError(f"study {study.study_name!r} has no baseline; was it created by autocompress search?")
    rows = [trial_row(t, baseline) for t in front_trials(study)]
    return sorted(rows, key=lambda r: r["latency_ms"])


def select(rows: list[dict[str, Any]], rule: Selection, max_accuracy_drop: float | None) -> dict[str, Any] | None:
    """The chosen trial: fastest or smallest within the accuracy budget, or the most accurate."""
    if not rows:
        return None
    if rule is Selection.MOST_ACCURATE:
        return max(rows, key=lambda r: (r["accuracy"], -r["latency_ms"]))
    budget = float("inf") if max_accuracy_drop is None else max_accuracy_drop + 1e-12
    within = [r for r in rows if r["accuracy_drop"] <= budget] or [max(rows, key=lambda r: r["accuracy"])]
    key = "latency_ms" if rule is Selection.FASTEST else "size_mb"
    return min(within, key=lambda r: (r[key], -r["accuracy"]))


COLUMNS = (
    ("trial", "trial", "{:d}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("accuracy_drop", "Δacc (pt)", "{:+.2f}"),
    ("latency_ms", "latency ms", "{:.2f}"),
    ("speedup", "speed-up", "{:.2f}x"),
    ("size_mb", "size MB", "{:.2f}"),
    ("compression", "compression", "{:.2f}x"),
)


def format_table(rows: list[dict[str, Any]], baseline: dict[str, float] | None = None) -> str:
    """A plain-text table of the front, teacher first when given."""
    lines = []
    if baseline is not None:
        lines.append(_format_row({"trial": "teacher", "accuracy": baseline["accuracy"], "accuracy_drop": 0.0, "latency_ms": baseline["latency_ms"], "speedup": 1.0, "size_mb": baseline["size_bytes"] / MB, "compression": 1.0}))
    lines += [_format_row(row) for row in rows]
    headers = [title for _, title, _ in COLUMNS]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)] if lines else [len(h) for h in headers]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    out += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _format_row(row: dict[str, Any]) -> list[str]:
    cells = []
    for key, _, fmt in COLUMNS:
        value = row[key]
        if key == "accuracy_drop":
            value = -100 * value + 0.0  # shown as a signed change; + 0.0 turns -0.0 into 0.0
        cells.append(fmt.format(value) if not isinstance(value, str) else value)
    return cells


def plot_front(study: optuna.Study, rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against latency for every completed trial, the front highlighted, size as marker area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = study.user_attrs[BASELINE_ATTR]
    trials = [trial_row(t, baseline) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["latency_ms"] for r in trials], [r["accuracy"] for r in trials], s=[8 + 4 * r["size_mb"] for r in trials], alpha=0.35, label="trials")
    ax.plot([r["latency_ms"] for r in rows], [r["accuracy"] for r in rows], "o-", color="C3", label="Pareto front")
    ax.scatter([baseline["latency_ms"]], [baseline["accuracy"]], marker="*", s=160, color="k", label="teacher")
    ax.set_xlabel("batch-1 latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"study {study.study_name}: marker area ~ size")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
