"""The parent run's reports, on a small in-memory study with constraints and per-block params."""

import json
import re

import numpy as np
import optuna
import pytest

from autocompress.controller.pareto import BASELINE_ATTR, COLUMNS, front_rows
from autocompress.controller.study import DIRECTIONS
from autocompress.tracking.reports import _layer_grid, progress_series, write_reports
from autocompress.tracking.runs import PARAMS_ATTR

INT8 = {"dev_accuracy": 0.89, "test_accuracy": 0.88, "size_bytes": 23e6, "latency_ms": 5.0, "speedup": 2.0}
BASELINE = {"dev_accuracy": 0.90, "test_accuracy": 0.89, "latency_ms": 10.0, "size_bytes": 90e6, "int8": INT8}
REFERENCE = [0.80, 1.0, 90.0]  # teacher dev accuracy - 0.10, the teacher's latency, the teacher's MB
FILES = {"pareto.html", "pareto.png", "front_layers.png", "progress.png", "progress.json", "front.html"}


def block_params(bits=(8, 8, 8), kept=(True, True, True)):
    params = {"scheme": "linear", "num_blocks": len(bits)}
    for i, (b, k) in enumerate(zip(bits, kept)):
        params |= {f"block{i}.bits": b, f"block{i}.prune_ratio": 0.0, f"block{i}.heads": 12 - i, f"block{i}.ffn": 1536, f"block{i}.kept": k}
    return params


def add(study, dev_accuracy, speedup, size_mb, feasible=True, params=None, scores=None, metric="accuracy"):
    """A told trial; ``scores`` are its other metrics (``dev_macro_f1``, ...), ``metric`` the one its objective is."""
    trial = study.ask()
    attrs = {
        "policy": {"layers": {}}, "dev_accuracy": dev_accuracy, "test_accuracy": dev_accuracy - 0.01,
        "latency_ms": 10.0 / speedup, "reference_latency_ms": 10.0, "speedup": speedup, "speedup_vs_int8": speedup / 2,
        "relative_latency_ci_low": 0.9 / speedup, "relative_latency_ci_high": 1.1 / speedup,
        "size_bytes": size_mb * 1e6, "size_is_estimate": False, "sparsity": 0.0, "seed": trial.number,
        PARAMS_ATTR: block_params() if params is None else params, "scores": scores or {},
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("accuracy_drop", -0.01 if feasible else 0.01)
    study.tell(trial, (dev_accuracy if metric == "accuracy" else scores[f"dev_{metric}"], 1 / speedup, size_mb))


def new_study():
    study = optuna.create_study(study_name="reports", directions=list(DIRECTIONS))
    study.set_user_attr(BASELINE_ATTR, BASELINE)
    return study


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    study = new_study()
    add(study, 0.89, 8.0, 5.0, feasible=False)  # 0: dominates everything, but infeasible
    add(study, 0.70, 5.0, 10.0)                 # 1: feasible, fastest, below the reference accuracy
    add(study, 0.85, 2.0, 30.0)                 # 2: box 0.05 x 0.5 x 60 = 1.5
    # 3: adds its box 0.08 x 0.2 x 30 less the overlap with 2's, 0.05 x 0.2 x 30
    add(study, 0.88, 1.25, 60.0, params=block_params(bits=(4, "mixed", 8), kept=(True, True, False)))
    add(study, 0.84, 1.6, 40.0)                 # 4: dominated by 2
    rows = front_rows(study)
    folder = tmp_path_factory.mktemp("reports")
    return study, rows, write_reports(study, rows, folder)


def read(paths, name):
    return next(p for p in paths if p.name == name).read_text()


def test_every_report_is_written_and_returned(written):
    study, rows, paths = written
    assert [r["trial"] for r in rows] == [1, 2, 3]
    assert {p.name for p in paths} == FILES and all(p.stat().st_size > 0 for p in paths)


def test_pareto_html_is_offline_with_hover_text_for_every_front_trial(written):
    _, rows, paths = written
    page = read(paths, "pareto.html")
    assert "plotly.js v" in page and not re.search(r"<script[^>]*\bsrc=", page)  # the bundle inline, no CDN
    assert "speed-up over the teacher (paired, batch 1)" in page and '"dev accuracy"' in page
    for name in ("Pareto front", "feasible trials", "infeasible trials", "teacher", "ORT dynamic int8"):
        assert f'"name":"{name}"' in page

    def hover(n, acc, speedup, size, ok):
        text = (f"trial {n}<br>dev acc {acc:.4f}<br>test acc {acc - 0.01:.4f}<br>speed-up {speedup:.2f}x"
                f"<br>vs int8 {speedup / 2:.2f}x<br>size {size:.2f} MB<br>feasible {ok}")
        return text.replace("<", "\\u003c").replace(">", "\\u003e")  # as plotly escapes it in the page

    for row in rows:
        assert hover(row["trial"], row["dev_accuracy"], row["speedup"], row["size_mb"], "yes") in page
    assert hover(0, 0.89, 8.0, 5.0, "NO") in page


def test_front_table_has_the_columns_then_teacher_int8_and_the_front(written):
    _, rows, paths = written
    page = read(paths, "front.html")
    assert "<script" not in page
    assert re.findall(r"<th>(.*?)</th>", page) == [title for _, title, _ in COLUMNS]
    table = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page) if "<td>" in row]
    assert [cells[0] for cells in table] == ["teacher", "ORT int8"] + [str(r["trial"]) for r in rows]
    assert all(len(cells) == len(COLUMNS) for cells in table)
    trial_3 = table[2 + [r["trial"] for r in rows].index(3)]
    assert trial_3[1:3] == ["yes", "0.8800"] and trial_3[COLUMNS.index(("speedup", "speed-up", "{:.2f}x"))] == "1.25x"


def test_progress_counts_only_feasible_trials_that_beat_the_reference(written):
    _, _, paths = written
    progress = json.loads(read(paths, "progress.json"))
    assert list(progress["reference_point"].values()) == pytest.approx(REFERENCE)
    steps = progress["steps"]
    assert [s["trial"] for s in steps] == [0, 1, 2, 3, 4]
    hypervolume = [s["hypervolume"] for s in steps]
    assert hypervolume == pytest.approx([0.0, 0.0, 1.5, 1.5 + 0.48 - 0.3, 1.68])
    assert all(a <= b for a, b in zip(hypervolume, hypervolume[1:]))
    assert [s["best_dev_accuracy"] for s in steps] == [None, 0.70, 0.85, 0.88, 0.88]  # trial 0's 0.89 is infeasible
    assert [s["fastest_speedup"] for s in steps] == [None, pytest.approx(5.0)] + [pytest.approx(5.0)] * 3  # not trial 0's 8x


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_hypervolume_history_agrees_with_optunas_plot():
    study = new_study()
    rng = np.random.default_rng(0)
    for _ in range(30):
        add(study, rng.uniform(0.75, 0.9), rng.uniform(0.8, 4.0), rng.uniform(10, 100), feasible=rng.random() < 0.8)
    ours = [s["hypervolume"] for s in progress_series(study)]
    theirs = optuna.visualization.plot_hypervolume_history(study, REFERENCE).data[0].y
    assert ours[-1] > 0 and ours == pytest.approx(list(theirs))


def test_layer_grid_reads_the_per_block_params(written):
    study, rows, _ = written
    grid = _layer_grid(study, rows)
    bits, labels = grid["bits"]
    assert bits.shape == (3, 3) and labels[2] == ["4", "mixed", "8"] and np.isnan(bits[2, 1]) and bits[2, 0] == 4
    assert grid["kept"][1][2] == ["yes", "yes", "no"] and grid["heads"][0][0].tolist() == [12, 11, 10]


def test_old_studies_and_empty_fronts_get_no_layer_heatmap(tmp_path):
    study = new_study()
    add(study, 0.85, 2.0, 30.0, params={"scheme": "linear"})  # written before per-block params
    rows = front_rows(study)
    assert _layer_grid(study, rows) is None and _layer_grid(study, []) is None
    for front, folder in ((rows, tmp_path / "old"), ([], tmp_path / "empty")):
        paths = write_reports(study, front, folder)
        assert {p.name for p in paths} == FILES - {"front_layers.png"} and not (folder / "front_layers.png").exists()
        assert len(re.findall(r"<tr[^>]*>", read(paths, "front.html"))) == 3 + len(front)  # the header, teacher, ORT int8, the front


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_macro_f1_study_reports_its_metric(tmp_path):
    study = optuna.create_study(study_name="macro", directions=list(DIRECTIONS))
    study.set_metric_names(["dev_macro_f1", "relative_latency", "size_mb"])
    scored = {"dev_macro_f1": 0.85, "test_macro_f1": 0.84}
    study.set_user_attr(BASELINE_ATTR, {**BASELINE, **scored, "int8": {**INT8, "dev_macro_f1": 0.83, "test_macro_f1": 0.82}})
    for accuracy, macro_f1, speedup, size_mb in ((0.89, 0.80, 2.0, 30.0), (0.85, 0.84, 1.25, 60.0)):
        add(study, accuracy, speedup, size_mb, scores={"dev_macro_f1": macro_f1, "test_macro_f1": macro_f1 - 0.01}, metric="macro_f1")
    steps = progress_series(study)
    assert [s["best_dev_macro_f1"] for s in steps] == [0.80, 0.84] and "best_dev_accuracy" not in steps[0]
    paths = write_reports(study, front_rows(study), tmp_path)
    assert json.loads(read(paths, "progress.json"))["reference_point"] == pytest.approx({"dev_macro_f1": 0.75, "relative_latency": 1.0, "size_mb": 90.0})
    page = read(paths, "front.html")
    assert re.findall(r"<th>(.*?)</th>", page)[2:4] == ["dev macro_f1", "test macro_f1"] and "chosen on dev macro_f1" in page
    assert "<td>0.8000</td><td>0.7900</td>" in page  # trial 0's macro-F1, not its 0.89 accuracy
    assert "dev macro_f1 0.8400" in read(paths, "pareto.html")
