"""The Pareto front of a study: rows, the selection rule, a table and a plot.

Everything is read back from the Optuna study (its storage is the source of
truth), so ``autocompress pareto`` shows the same front as the search printed.
The front is chosen on the dev split's ``task.metric`` (accuracy, f1 or
macro_f1); the test split's, from rows the search never read, is reported
beside it. Rows carry every metric a trial recorded (``dev_f1``, ...).
Speed-ups are paired ratios (each trial timed beside the teacher and ORT's
dynamic int8); sizes are the shipped file's bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.config import ConfigError, Selection
from autocompress.controller.study import FINAL_OF_ATTR, is_feasible, study_metric
from autocompress.paths import write_json
from autocompress.policy import Policy, field_of

BASELINE_ATTR = "baseline"
MB = 1e6


def trial_row(trial: FrozenTrial, baseline: dict[str, Any]) -> dict[str, Any]:
    """One trial's measurements, with ratios to the teacher and to ORT's dynamic int8 (and, on a final training, the trial it trains again)."""
    row = measured_row(trial.user_attrs, baseline, trial=trial.number, feasible=is_feasible(trial))
    if FINAL_OF_ATTR in trial.user_attrs:
        row[FINAL_OF_ATTR] = trial.user_attrs[FINAL_OF_ATTR]
    return row


def measured_row(attrs: Mapping[str, Any], baseline: dict[str, Any], *, trial: int | str, feasible: bool | str) -> dict[str, Any]:
    """A measured model's row (a trial's attributes, or an applied policy's measurement with ``policy`` and ``seed``).

    Besides accuracy it carries the task's other metrics (``dev_f1``,
    ``test_macro_f1``, ...) and their drops from the teacher (``f1_drop``,
    ``test_f1_drop``); trials made before ``task.metric`` have none.
    """
    size = attrs["size_bytes"]
    scores = attrs.get("scores") or {}
    return {
        "trial": trial,
        "feasible": feasible,
        "dev_accuracy": attrs.get("dev_accuracy"),
        "test_accuracy": attrs.get("test_accuracy"),
        **accuracy_drops(attrs, baseline),
        **scores,
        **score_drops(scores, baseline),
        "latency_ms": attrs["latency_ms"],
        "reference_latency_ms": attrs["reference_latency_ms"],
        "speedup": attrs["speedup"],
        "speedup_ci": [1 / attrs["relative_latency_ci_high"], 1 / attrs["relative_latency_ci_low"]],
        "speedup_vs_int8": attrs["speedup_vs_int8"],
        "size_bytes": size,
        "size_mb": size / MB,
        "size_is_estimate": attrs["size_is_estimate"],
        "compression": baseline["size_bytes"] / size,
        "size_vs_int8": baseline["int8"]["size_bytes"] / size,
        "sparsity": attrs["sparsity"],
        **({"index_bytes_per_vector": attrs["index_bytes_per_vector"]} if attrs.get("index_bytes_per_vector") else {}),
        "seed": attrs["seed"],
        "policy": attrs["policy"],
        "artifact": attrs.get("artifact"),
    }


def accuracy_drops(measured: Any, baseline: Mapping[str, Any]) -> dict[str, float]:
    """A classifier's ``accuracy_drop`` and ``test_accuracy_drop`` from the teacher (a measurement or a trial's attributes); none for a task without accuracy."""
    get = measured.get if isinstance(measured, Mapping) else lambda name: getattr(measured, name)
    if get("dev_accuracy") is None or "dev_accuracy" not in baseline:
        return {}
    return {"accuracy_drop": baseline["dev_accuracy"] - get("dev_accuracy"), "test_accuracy_drop": baseline["test_accuracy"] - get("test_accuracy")}


def score_drops(scores: Mapping[str, float], baseline: Mapping[str, Any]) -> dict[str, float]:
    """The teacher's score minus each of ``scores`` it also has: ``dev_f1`` -> ``f1_drop``, ``test_f1`` -> ``test_f1_drop``."""
    return {f"{key.removeprefix('dev_')}_drop": baseline[key] - value for key, value in scores.items() if key in baseline}


def front_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """Non-dominated trials among feasible ones (Optuna's rule); with none feasible, among all (all infeasible).

    Once a final training has completed, the students judged on the search's
    short proxy budget leave the front: their dev scores stood in for a
    training they never got (short-trained students read higher on dev than
    on unseen rows), so only finished models (the finals and the trials
    without distillation) are left to choose from and to export.
    ``trials``: a snapshot of the study's trials to judge (default: read now).
    """
    snapshot = study.get_trials(deepcopy=False) if trials is None else trials
    completed = [t for t in snapshot if t.state == TrialState.COMPLETE]
    proxies = proxy_trials(completed)
    standing = [t for t in completed if t.number not in proxies]
    front = pareto_front(standing, study.directions, constrained=True) or pareto_front(standing, study.directions, constrained=False)
    return sorted(front, key=lambda t: t.number)


def pareto_front(trials: list[FrozenTrial], directions: list[optuna.study.StudyDirection], *, constrained: bool) -> list[FrozenTrial]:
    """The non-dominated ``trials`` (the feasible ones only when ``constrained``), by Optuna's own ``best_trials`` on a scratch study.

    Trials are matched back by position, not number: the trials of several studies may share numbers.
    """
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a "new study created in memory" line per front read
    try:
        scratch = optuna.create_study(directions=directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for index, trial in enumerate(trials):
        scratch.add_trial(optuna.trial.create_trial(
            values=trial.values, user_attrs={"index": index}, constraints=trial.constraints if constrained else None))
    return [trials[best.user_attrs["index"]] for best in scratch.best_trials]


def proxy_trials(completed: list[FrozenTrial]) -> set[int]:
    """Numbers of the short-trained students (distilled, not a final), once any final training has completed; else none."""
    if not any(FINAL_OF_ATTR in t.user_attrs for t in completed):
        return set()
    return {t.number for t in completed
            if FINAL_OF_ATTR not in t.user_attrs and field_of(t.user_attrs.get("policy", {}), "recovery_steps", 0) > 0}


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    baseline = study.user_attrs.get(BASELINE_ATTR)
    if baseline is None:
        raise ConfigError(f"study {study.study_name!r} has no baseline; was it created by autocompress search?")
    if not any(key.startswith("test_") for key in baseline):
        raise ConfigError(f"study {study.study_name!r} was made by an older autocompress (one split, unpaired latency); search again under a new study name")
    rows = [trial_row(t, baseline) for t in front_trials(study)]
    return sorted(rows, key=lambda r: -r["speedup"])


def select(rows: list[dict[str, Any]], rule: Selection, max_accuracy_drop: float | None, metric: str = "accuracy") -> dict[str, Any] | None:
    """The chosen trial: fastest or smallest within the budget on the dev ``metric`` (``task.metric``), or the best on it.

    ``max_accuracy_drop`` limits the drop of ``metric`` (the config field keeps its name).
    """
    if not rows:
        return None
    dev, drop = f"dev_{metric}", f"{metric}_drop"
    if rule is Selection.MOST_ACCURATE:
        return max(rows, key=lambda r: (r[dev], r["speedup"]))
    budget = float("inf") if max_accuracy_drop is None else max_accuracy_drop + 1e-12
    within = [r for r in rows if r[drop] <= budget] or [max(rows, key=lambda r: r[dev])]
    if rule is Selection.FASTEST:
        return max(within, key=lambda r: (r["speedup"], r[dev]))
    return min(within, key=lambda r: (r["size_bytes"], -r[dev]))


def columns(metric: str = "accuracy") -> tuple[tuple[str, str, str], ...]:
    """The table's (row key, title, format) columns, its dev/test scores those of ``metric`` (``dev acc``, ``dev macro_f1``)."""
    short = "acc" if metric == "accuracy" else metric
    return (
        ("trial", "trial", "{:d}"),
        ("feasible", "ok", "{}"),
        (f"dev_{metric}", f"dev {short}", "{:.4f}"),
        (f"test_{metric}", f"test {short}", "{:.4f}"),
        (f"test_{metric}_drop", "Δtest (pt)", "{:+.2f}"),
        ("latency_ms", "ms", "{:.2f}"),
        ("speedup", "speed-up", "{:.2f}x"),
        ("speedup_vs_int8", "vs int8", "{:.2f}x"),
        ("size_mb", "file MB", "{:.2f}"),
        ("compression", "compression", "{:.2f}x"),
    )


COLUMNS = columns()
"""The columns of a study that optimizes accuracy."""


def format_table(rows: list[dict[str, Any]], baseline: dict[str, Any] | None = None, metric: str = "accuracy") -> str:
    """A plain-text table of the front; the teacher and ORT's dynamic int8 first when a baseline is given.

    ``speed-up`` and ``vs int8`` are paired ratios (each trial timed beside
    both in one probe); ``ms`` is the trial's own median in that probe. The
    scores shown are ``metric``'s (``task.metric``), on dev and test.
    """
    table = columns(metric)
    dev, test = f"dev_{metric}", f"test_{metric}"
    lines = []
    if baseline is not None:
        int8 = baseline["int8"]
        for name, model, speedup in (("teacher", baseline, 1.0), ("ORT int8", int8, int8["speedup"])):
            lines.append(_format_row({
                "trial": name, "feasible": "", dev: model[dev], test: model[test],
                f"{test}_drop": baseline[test] - model[test], "latency_ms": model["latency_ms"],
                "speedup": speedup, "speedup_vs_int8": speedup / int8["speedup"], "size_mb": model["size_bytes"] / MB,
                "compression": baseline["size_bytes"] / model["size_bytes"], "size_is_estimate": model.get("size_is_estimate", False),
            }, table))
    lines += [_format_row(row, table) for row in rows]
    headers = [title for _, title, _ in table]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)] if lines else [len(h) for h in headers]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    out += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _format_row(row: dict[str, Any], table: tuple[tuple[str, str, str], ...] = COLUMNS) -> list[str]:
    cells = []
    for key, _, fmt in table:
        value = row[key]
        if key.endswith("_drop"):
            value = -100 * value + 0.0  # shown as a signed change; + 0.0 turns -0.0 into 0.0
        if key == "feasible" and isinstance(value, bool):
            value = "yes" if value else "NO"
        cell = fmt.format(value) if not isinstance(value, str) else value
        cells.append(f"~{cell}" if key == "size_mb" and row.get("size_is_estimate") else cell)
    return cells


def plot_front(study: optuna.Study, rows: list[dict[str, Any]], path: Path) -> Path:
    """The study's dev metric against paired speed-up for every completed trial, the front highlighted, file size as marker area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, metric = study.user_attrs[BASELINE_ATTR], study_metric(study)
    dev = f"dev_{metric}"
    trials = [trial_row(t, baseline) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["speedup"] for r in trials], [r[dev] for r in trials], s=[8 + 4 * r["size_mb"] for r in trials], alpha=0.35, label="trials")
    ax.plot([r["speedup"] for r in rows], [r[dev] for r in rows], "o-", color="C3", label="Pareto front")
    ax.scatter([1.0], [baseline[dev]], marker="*", s=160, color="k", label="teacher")
    ax.scatter([baseline["int8"]["speedup"]], [baseline["int8"][dev]], marker="X", s=120, color="C2", label="ORT dynamic int8")
    ax.set_xlabel("speed-up over the teacher (paired, batch 1)")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"study {study.study_name}: marker area ~ file size")
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _copy_models(output: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy each row's artifact to ``output/models`` (dropping stale copies); rows point at the copies."""
    models = output / "models"
    if models.exists():
        shutil.rmtree(models)
    copied = []
    for row in rows:
        source = row.get("artifact")
        if source and Path(source).is_file():
            target = models / f"trial-{row['trial']}.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            row = {**row, "artifact": str(target.relative_to(output))}
        copied.append(row)
    return copied


def write_front(
    output: Path, rows: list[dict[str, Any]], chosen: dict[str, Any] | None, *, tokenizer_dir: Path | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Write the front (the chosen row marked ``chosen``) and, if a trial was chosen, its policy and model; return the rows as written."""
    rows = [{**row, "chosen": chosen is not None and row["trial"] == chosen["trial"]} for row in _copy_models(output, rows)]
    write_json(output / "pareto.json", rows)
    best_policy, best_model = output / "best_policy.json", output / "best_model"
    best_policy.unlink(missing_ok=True)
    if best_model.exists():
        shutil.rmtree(best_model)
    if chosen is None:
        return rows, None
    chosen = next(row for row in rows if row["trial"] == chosen["trial"])
    policy = Policy.from_dict(chosen["policy"])
    policy.save(best_policy)
    best_model.mkdir(parents=True)
    policy.save(best_model / "policy.json")
    if chosen.get("artifact"):
        shutil.copy2(output / chosen["artifact"], best_model / "model.onnx")
    if tokenizer_dir is not None:
        from autocompress.models.loading import copy_tokenizer  # transformers: seconds that `status` need not pay

        copy_tokenizer(tokenizer_dir, best_model)
    return rows, chosen
