"""Reports on a finished (or resumed) search, written as files for the MLflow parent run.

MLflow shows a run's artifacts but not an Optuna study, so the search writes
what a reader needs to judge it: the front as an interactive plot (self-contained
HTML, so it opens offline inside MLflow's artifact viewer), the same as a PNG
and as a table, the front's per-block policies, and the search's progress
(hypervolume and best-so-far values per trial number, also as JSON so it can be
logged as step metrics). Like ``autocompress.controller.pareto`` everything is read back
from the study, the source of truth. Plots use matplotlib's Agg backend: a
search runs headless.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from autocompress.controller.pareto import BASELINE_ATTR, MB, columns, format_table, plot_front, trial_row
from autocompress.controller.study import is_feasible, study_metric
from autocompress.tracking.runs import PARAMS_ATTR

ACCURACY_MARGIN = 0.10
"""The hypervolume's reference score lies this far below the teacher's on the dev metric (accuracy, f1 or macro_f1)."""
LAYER_QUANTITIES = (("bits", "weight bits"), ("heads", "attention heads kept"), ("ffn", "FFN width kept"), ("kept", "block kept"))
"""Per-block keys of a trial's MLflow params shown in ``front_layers.png``, with panel titles."""
MIXED = "mixed"
SPEEDUP_AXIS = "speed-up over the teacher (paired, batch 1)"


def write_reports(study: optuna.Study, rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Write the reports on ``study`` and its front ``rows`` (``pareto.front_rows``) into ``folder``; return the files.

    ``front_layers.png`` is left out when the front is empty or its trials
    predate per-block params.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = [_write_pareto_html(study, rows, folder / "pareto.html"), plot_front(study, rows, folder / "pareto.png")]
    grid = _layer_grid(study, rows)
    if grid is not None:
        written.append(_write_layers(grid, [f"trial {row['trial']}" for row in rows], folder / "front_layers.png"))
    steps = progress_series(study)
    written.append(_write_progress(study, steps, folder / "progress.png"))
    progress_json = folder / "progress.json"
    progress_json.write_text(json.dumps({"reference_point": _reference_point(study), "steps": steps}, indent=2) + "\n")
    written.append(progress_json)
    front_html = folder / "front.html"
    front_html.write_text(_front_table_html(study, rows))
    written.append(front_html)
    return written


def progress_series(study: optuna.Study) -> list[dict[str, Any]]:
    """Per completed trial, by trial number: hypervolume, best dev score and fastest speed-up of the feasible trials so far.

    The best score is the study's metric (``best_dev_accuracy``,
    ``best_dev_macro_f1``, ...). The hypervolume (Optuna's exact computation) is in units of that metric x
    relative latency x MB, measured from ``_reference_point``; feasible trials
    worse than it in any objective add nothing. Before any feasible trial the
    best values are ``None``.
    """
    hypervolumes = _hypervolume_history(study)
    best_score = fastest = None
    best_key = f"best_dev_{study_metric(study)}"
    steps = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_feasible(trial):
            score, relative_latency, _ = trial.values
            best_score = score if best_score is None else max(best_score, score)
            fastest = 1 / relative_latency if fastest is None else max(fastest, 1 / relative_latency)
        steps.append({"trial": trial.number, "hypervolume": hypervolumes.get(trial.number, 0.0), best_key: best_score, "fastest_speedup": fastest})
    return steps


def _hypervolume_history(study: optuna.Study) -> dict[int, float]:
    """Hypervolume of the feasible front after each completed trial, by number: Optuna's public computation, read from
    the trace of ``plot_hypervolume_history`` (Optuna 5 exposes no hypervolume function of its own)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figure = optuna.visualization.plot_hypervolume_history(study, reference_point=list(_reference_point(study).values()))
    trace = figure.data[0]
    return {int(number): float(value) for number, value in zip(trace.x, trace.y)}


def _reference_point(study: optuna.Study) -> dict[str, float]:
    """The hypervolume's reference, in objective order: a 10-point drop of the dev metric, the teacher's latency and size."""
    baseline, dev = study.user_attrs[BASELINE_ATTR], f"dev_{study_metric(study)}"
    return {dev: baseline[dev] - ACCURACY_MARGIN, "relative_latency": 1.0, "size_mb": baseline["size_bytes"] / MB}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hover(row: dict[str, Any], metric: str = "accuracy") -> str:
    short = "acc" if metric == "accuracy" else metric
    return "<br>".join((
        f"trial {row['trial']}", f"dev {short} {row[f'dev_{metric}']:.4f}", f"test {short} {row[f'test_{metric}']:.4f}",
        f"speed-up {row['speedup']:.2f}x", f"vs int8 {row['speedup_vs_int8']:.2f}x", f"size {row['size_mb']:.2f} MB",
        f"feasible {'yes' if row['feasible'] else 'NO'}",
    ))


def _write_pareto_html(study: optuna.Study, rows: list[dict[str, Any]], path: Path) -> Path:
    """Every completed trial, the front as its own trace, infeasible trials as crosses, marker area ~ file size."""
    baseline, metric = study.user_attrs[BASELINE_ATTR], study_metric(study)
    dev, test, short = f"dev_{metric}", f"test_{metric}", "acc" if metric == "accuracy" else metric
    on_front = {row["trial"] for row in rows}
    others = [trial_row(t, baseline) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number not in on_front]
    largest = max((row["size_mb"] for row in others + rows), default=1.0)
    fig = go.Figure(layout={
        "title": f"study {study.study_name}: marker area ~ file size (MB); crosses are infeasible",
        "xaxis": {"title": {"text": SPEEDUP_AXIS}}, "yaxis": {"title": {"text": f"dev {metric}"}},
        "template": "plotly_white", "hovermode": "closest",
    })

    def trials(group: list[dict[str, Any]], name: str, color: str, **extra: Any) -> go.Scatter:
        return go.Scatter(
            x=[r["speedup"] for r in group], y=[r[dev] for r in group], name=name, text=[_hover(r, metric) for r in group],
            hovertemplate="%{text}<extra></extra>", marker={
                "size": [r["size_mb"] for r in group], "sizemode": "area", "sizeref": 2 * largest / 30**2, "sizemin": 4,
                "symbol": ["circle" if r["feasible"] else "x" for r in group], "color": color,
            }, **extra)

    fig.add_trace(trials([r for r in others if r["feasible"]], "feasible trials", "rgba(31,119,180,0.45)", mode="markers"))
    fig.add_trace(trials([r for r in others if not r["feasible"]], "infeasible trials", "rgba(127,127,127,0.6)", mode="markers"))
    fig.add_trace(trials(rows, "Pareto front", "rgb(214,39,40)", mode="lines+markers", line={"color": "rgb(214,39,40)"}))
    int8 = baseline["int8"]
    references = (("teacher", baseline, 1.0, "star", "black"), ("ORT dynamic int8", int8, int8["speedup"], "x-thin-open", "green"))
    for name, model, speedup, symbol, color in references:
        text = (f"{name}<br>dev {short} {model[dev]:.4f}<br>test {short} {model[test]:.4f}"
                f"<br>speed-up {speedup:.2f}x<br>size {model['size_bytes'] / MB:.2f} MB")
        fig.add_trace(go.Scatter(x=[speedup], y=[model[dev]], name=name, mode="markers", text=[text],
                                 hovertemplate="%{text}<extra></extra>", marker={"symbol": symbol, "size": 16, "color": color, "line": {"width": 2, "color": color}}))
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def _layer_grid(study: optuna.Study, rows: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, list[list[str]]]] | None:
    """Per quantity, the front's values (trial x block; NaN where mixed or absent) and cell labels; None without per-block params."""
    if not rows:
        return None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    params = [trials[row["trial"]].user_attrs.get(PARAMS_ATTR, {}) for row in rows]
    if not all("num_blocks" in p and all(f"block{i}.{key}" in p for i in range(p["num_blocks"]) for key, _ in LAYER_QUANTITIES) for p in params):
        return None
    blocks = max(p["num_blocks"] for p in params)
    grid = {}
    for key, _ in LAYER_QUANTITIES:
        values, labels = np.full((len(rows), blocks), np.nan), [[""] * blocks for _ in rows]
        for r, p in enumerate(params):
            for i in range(p["num_blocks"]):
                value = p[f"block{i}.{key}"]
                if value != MIXED:
                    values[r, i] = float(value)
                labels[r][i] = ("yes" if value else "no") if key == "kept" else str(value)
        grid[key] = (values, labels)
    return grid


def _write_layers(grid: dict[str, tuple[np.ndarray, list[list[str]]]], trial_labels: list[str], path: Path) -> Path:
    """One heatmap panel per quantity, rows = front trials, columns = blocks; mixed cells hatched."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Rectangle

    norms = {"bits": LogNorm(2, 32), "heads": Normalize(0), "ffn": Normalize(0), "kept": Normalize(0, 1)}
    n_trials, n_blocks = grid["bits"][0].shape
    size = (max(6.0, 0.7 * n_blocks + 2), len(LAYER_QUANTITIES) * (0.35 * n_trials + 1.1))
    fig, axes = plt.subplots(len(LAYER_QUANTITIES), 1, figsize=size, squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    for ax, (key, title) in zip(axes[:, 0], LAYER_QUANTITIES):
        values, labels = grid[key]
        image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norms[key])
        for r in range(n_trials):
            for c in range(n_blocks):
                if labels[r][c] == MIXED:
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6", linewidth=0))
                dark = math.isfinite(values[r, c]) and image.norm(values[r, c]) < 0.55
                ax.text(c, r, labels[r][c], ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_title(title, fontsize=9)
        ax.set_yticks(range(n_trials), trial_labels, fontsize=7)
        ax.set_xticks(range(n_blocks), [str(c) for c in range(n_blocks)], fontsize=7)
    axes[-1, 0].set_xlabel("encoder block")
    fig.suptitle("the front's policies per block (hatched: the block's Linears differ)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_progress(study: optuna.Study, steps: list[dict[str, Any]], path: Path) -> Path:
    """Hypervolume, and best feasible dev score (the study's metric) and speed-up so far, against trial number."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    numbers = [s["trial"] for s in steps]

    def series(key: str) -> list[float]:
        return [math.nan if s[key] is None else s[key] for s in steps]

    reference, metric = _reference_point(study), study_metric(study)
    short = "acc" if metric == "accuracy" else metric
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(numbers, series("hypervolume"), drawstyle="steps-post", marker=".", color="C0")
    top.set_ylabel(f"hypervolume\n({metric} x rel. latency x MB)")
    top.set_title(f"feasible trials; reference: dev {short} {reference[f'dev_{metric}']:.3f}, "
                  f"the teacher's latency and {reference['size_mb']:.1f} MB", fontsize=9)
    bottom.plot(numbers, series(f"best_dev_{metric}"), drawstyle="steps-post", marker=".", color="C0", label=f"best dev {metric}")
    bottom.axhline(study.user_attrs[BASELINE_ATTR][f"dev_{metric}"], color="k", linestyle="--", linewidth=1, label=f"teacher dev {metric}")
    bottom.set_ylabel(f"dev {metric}")
    right = bottom.twinx()
    right.plot(numbers, series("fastest_speedup"), drawstyle="steps-post", marker=".", color="C3", label="fastest speed-up")
    right.set_ylabel(SPEEDUP_AXIS, fontsize=8)
    bottom.set_xlabel("trial number")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = bottom.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    bottom.legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _front_table_html(study: optuna.Study, rows: list[dict[str, Any]]) -> str:
    """``pareto.format_table`` (teacher, ORT int8, then the front) as a static HTML table, its cells cut at the header's column ends."""
    metric = study_metric(study)
    table = columns(metric)
    header, *lines = format_table(rows, study.user_attrs[BASELINE_ATTR], metric).splitlines()
    spans, start = [], 0
    for _, title, _ in table:
        end = header.index(title, start) + len(title)
        spans.append((start, end))
        start = end
    cells = [[line[a:b].strip() for a, b in spans] for line in lines]
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in table)
    body = "\n".join(
        ('<tr class="reference">' if i < 2 else "<tr>") + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for i, row in enumerate(cells)
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Pareto front of {html.escape(study.study_name)}</title>
<style>
body {{ font-family: sans-serif; }} table {{ border-collapse: collapse; }}
th, td {{ padding: 2px 10px; text-align: right; border-bottom: 1px solid #ddd; }} tr.reference {{ color: #555; font-style: italic; }}
</style></head><body>
<table>
<caption>Pareto front of study {html.escape(study.study_name)}, chosen on dev {html.escape(metric)}. Speed-ups are paired ratios
(each trial timed beside the teacher and ORT's dynamic int8, batch 1); ms is the trial's own median; ~ marks an estimated size.</caption>
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
