"""The front, the selection rule, feasibility and the table, on a real Optuna study with constraints."""

import optuna
import pytest

from autocompress.config import Selection
from autocompress.controller.pareto import BASELINE_ATTR, format_table, front_rows, select
from autocompress.controller.study import DIRECTIONS

INT8 = {"dev_accuracy": 0.89, "test_accuracy": 0.88, "size_bytes": 23e6, "latency_ms": 5.0, "speedup": 2.0}
BASELINE = {"dev_accuracy": 0.90, "test_accuracy": 0.89, "latency_ms": 10.0, "size_bytes": 90e6, "int8": INT8}


def add(study, dev_accuracy, speedup, size_mb, max_drop=0.01, test_accuracy=None, scores=None, metric="accuracy"):
    """A told trial; ``scores`` are its other metrics (``dev_macro_f1``, ...), ``metric`` the one its objective is."""
    trial = study.ask()
    attrs = {
        "policy": {"layers": {}}, "dev_accuracy": dev_accuracy, "test_accuracy": test_accuracy or dev_accuracy - 0.01,
        "latency_ms": 10.0 / speedup, "reference_latency_ms": 10.0, "speedup": speedup, "speedup_vs_int8": speedup / 2,
        "relative_latency_ci_low": 0.9 / speedup, "relative_latency_ci_high": 1.1 / speedup,
        "size_bytes": size_mb * 1e6, "size_is_estimate": False, "sparsity": 0.0, "seed": trial.number,
    }
    if scores is not None:
        attrs["scores"] = scores
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("accuracy_drop", (BASELINE["dev_accuracy"] - dev_accuracy) - max_drop)
    study.tell(trial, (dev_accuracy if metric == "accuracy" else scores[f"dev_{metric}"], 1 / speedup, size_mb))


@pytest.fixture()
def study():
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_user_attr(BASELINE_ATTR, BASELINE)
    add(study, 0.895, 2.0, 30.0)   # 0: feasible, front
    add(study, 0.899, 1.25, 60.0)  # 1: feasible, front (most accurate)
    add(study, 0.894, 1.6, 40.0)   # 2: dominated by 0
    add(study, 0.70, 10.0, 5.0)    # 3: infeasible (20 pt drop) though fastest
    add(study, 0.892, 2.5, 45.0)   # 4: feasible, front (fastest feasible)
    return study


def test_front_holds_only_feasible_non_dominated_trials(study):
    rows = front_rows(study)
    assert sorted(r["trial"] for r in rows) == [0, 1, 4]
    row = next(r for r in rows if r["trial"] == 0)
    assert row["speedup"] == pytest.approx(2.0) and row["compression"] == pytest.approx(3.0)
    assert row["accuracy_drop"] == pytest.approx(0.005) and row["feasible"]
    assert row["test_accuracy_drop"] == pytest.approx(0.89 - 0.885) and row["size_vs_int8"] == pytest.approx(23 / 30)
    assert row["speedup_ci"] == pytest.approx([2.0 / 1.1, 2.0 / 0.9])


def test_selection_rules(study):
    rows = front_rows(study)
    assert select(rows, Selection.FASTEST, 0.01)["trial"] == 4
    assert select(rows, Selection.SMALLEST, 0.01)["trial"] == 0
    assert select(rows, Selection.MOST_ACCURATE, 0.01)["trial"] == 1
    assert select(rows, Selection.FASTEST, 0.002)["trial"] == 1  # only trial 1 is within 0.2 pt
    assert select([], Selection.FASTEST, 0.01) is None


def test_selection_reads_dev_accuracy_never_test(study):
    rows = front_rows(study)
    boosted = [{**r, "test_accuracy": 1.0} if r["trial"] == 0 else r for r in rows]
    assert select(boosted, Selection.MOST_ACCURATE, 0.01)["trial"] == 1


def test_table_lists_teacher_int8_then_front_with_feasibility(study):
    table = format_table(front_rows(study), BASELINE).splitlines()
    assert "speed-up" in table[0] and "vs int8" in table[0] and "test acc" in table[0]
    assert table[1].split()[0] == "teacher" and table[2].split()[:2] == ["ORT", "int8"]
    assert [line.split()[0] for line in table[3:]] == ["4", "0", "1"]
    assert all(line.split()[1] == "yes" for line in table[3:])


def test_without_feasible_trials_the_front_is_marked_infeasible():
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_user_attr(BASELINE_ATTR, BASELINE)
    add(study, 0.70, 3.0, 20.0)
    add(study, 0.60, 4.0, 10.0)
    rows = front_rows(study)
    assert [r["trial"] for r in rows] == [1, 0] and not any(r["feasible"] for r in rows)
    assert "NO" in format_table(rows, BASELINE).splitlines()[3].split()


def test_a_resumed_study_never_rescales_earlier_trials(study):
    """Speed-ups are each trial's own paired ratio: a new teacher timing (say, on a busy minute) changes none."""
    before = {r["trial"]: r["speedup"] for r in front_rows(study)}
    study.set_user_attr(BASELINE_ATTR, {**BASELINE, "latency_ms": 27.0})
    assert {r["trial"]: r["speedup"] for r in front_rows(study)} == before


def test_a_drop_of_exactly_the_budget_is_feasible():
    """0.901 - 0.891 - 0.01 is 8.7e-18 in floats; a user reads it as exactly 1 point, within a 1-point budget."""
    from dataclasses import fields

    from autocompress.config import parse_config
    from autocompress.controller.objective import _constraints
    from autocompress.controller.trial import Measurement

    values = {f.name: 0 for f in fields(Measurement)} | {"dev_accuracy": 0.891, "size_bytes": 10}
    config = parse_config({"search": {"constraints": {"max_accuracy_drop": 0.01}}})
    assert _constraints(Measurement(**values), {"dev_accuracy": 0.901}, config)["accuracy_drop"] <= 0
    assert _constraints(Measurement(**{**values, "dev_accuracy": 0.890}), {"dev_accuracy": 0.901}, config)["accuracy_drop"] > 0


def test_estimated_sizes_are_marked_in_the_table(study):
    rows = [{**r, "size_is_estimate": True} for r in front_rows(study)]
    line = format_table(rows).splitlines()[1]
    assert "~" in line and "~" not in format_table(front_rows(study)).splitlines()[1]


def test_selection_rows_and_table_follow_the_selected_metric():
    """Accuracy and macro-F1 disagree: task.metric macro_f1 budgets, selects and prints macro-F1; accuracy stays in the rows."""
    scored = {"dev_macro_f1": 0.80, "test_macro_f1": 0.78}
    baseline = {**BASELINE, **scored, "int8": {**INT8, "dev_macro_f1": 0.79, "test_macro_f1": 0.76}}
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_user_attr(BASELINE_ATTR, baseline)
    for dev_accuracy, macro_f1, speedup, size_mb in ((0.899, 0.70, 2.5, 30.0), (0.893, 0.795, 2.0, 40.0), (0.895, 0.79, 1.5, 35.0)):
        add(study, dev_accuracy, speedup, size_mb, max_drop=1.0, scores={"dev_macro_f1": macro_f1, "test_macro_f1": macro_f1 - 0.01},
            metric="macro_f1")
    rows = front_rows(study)
    by_trial = {r["trial"]: r for r in rows}
    assert by_trial[0]["dev_accuracy"] == 0.899 and by_trial[0]["dev_macro_f1"] == 0.70
    assert by_trial[0]["macro_f1_drop"] == pytest.approx(0.10) and by_trial[0]["test_macro_f1_drop"] == pytest.approx(0.09)
    assert select(rows, Selection.MOST_ACCURATE, None)["trial"] == 0
    assert select(rows, Selection.MOST_ACCURATE, None, "macro_f1")["trial"] == 1
    assert select(rows, Selection.FASTEST, 0.01)["trial"] == 0  # within 1 point of accuracy and the fastest
    assert select(rows, Selection.FASTEST, 0.01, "macro_f1")["trial"] == 1  # trial 0 drops 10 points of macro-F1
    assert select(rows, Selection.SMALLEST, 0.015, "macro_f1")["trial"] == 2
    table = format_table(rows, baseline, "macro_f1").splitlines()
    assert table[0].split()[2:6] == ["dev", "macro_f1", "test", "macro_f1"] and "acc" not in table[0]
    assert table[1].split()[1:4] == ["0.8000", "0.7800", "+0.00"] and table[2].split()[2:5] == ["0.7900", "0.7600", "-2.00"]
    assert next(line for line in table[3:] if line.split()[0] == "0").split()[2:5] == ["0.7000", "0.6900", "-9.00"]
    assert format_table(rows, baseline).splitlines()[0].split()[2:6] == ["dev", "acc", "test", "acc"]


def test_pareto_front_keeps_the_non_dominated_trials_and_with_constraints_only_the_feasible_ones():
    from optuna.study import StudyDirection
    from optuna.trial import create_trial

    from autocompress.controller.pareto import pareto_front

    up = [StudyDirection.MAXIMIZE, StudyDirection.MAXIMIZE]
    trials = [create_trial(values=[1.0, 2.0], constraints={"drop": 1.0}), create_trial(values=[2.0, 1.0], constraints={"drop": 0.0}),
              create_trial(values=[0.5, 0.5], constraints={"drop": 0.0})]  # all number 0, as created trials are
    assert [t.values for t in pareto_front(trials, up, constrained=False)] == [[1.0, 2.0], [2.0, 1.0]]
    assert [t.values for t in pareto_front(trials, up, constrained=True)] == [[2.0, 1.0]]
    assert pareto_front(trials[:1], up, constrained=True) == []
