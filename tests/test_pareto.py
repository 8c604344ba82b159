"""The front, the selection rule and the table, on a real Optuna study with constraints."""

import optuna
import pytest

from autocompress.config import Selection
from autocompress.pareto import BASELINE_ATTR, format_table, front_rows, select
from autocompress.search import DIRECTIONS

BASELINE = {"accuracy": 0.90, "latency_ms": 10.0, "size_bytes": 90e6}


def add(study, accuracy, latency, size_mb, max_drop=0.01):
    trial = study.ask()
    trial.set_user_attr("policy", {"layers": {}})
    for key, value in {"accuracy": accuracy, "latency_ms": latency, "size_bytes": size_mb * 1e6}.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("accuracy_drop", (BASELINE["accuracy"] - accuracy) - max_drop)
    study.tell(trial, (accuracy, latency, size_mb))


@pytest.fixture()
def study():
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_user_attr(BASELINE_ATTR, BASELINE)
    add(study, 0.895, 5.0, 30.0)  # 0: feasible, front
    add(study, 0.899, 8.0, 60.0)  # 1: feasible, front (most accurate)
    add(study, 0.894, 6.0, 40.0)  # 2: dominated by 0
    add(study, 0.70, 1.0, 5.0)    # 3: infeasible (20 pt drop) though fastest
    add(study, 0.892, 4.0, 45.0)  # 4: feasible, front (fastest feasible)
    return study


def test_front_holds_only_feasible_non_dominated_trials(study):
    rows = front_rows(study)
    assert sorted(r["trial"] for r in rows) == [0, 1, 4]
    row = next(r for r in rows if r["trial"] == 0)
    assert row["speedup"] == pytest.approx(2.0) and row["compression"] == pytest.approx(3.0)
    assert row["accuracy_drop"] == pytest.approx(0.005) and row["feasible"]


def test_selection_rules(study):
    rows = front_rows(study)
    assert select(rows, Selection.FASTEST, 0.01)["trial"] == 4
    assert select(rows, Selection.SMALLEST, 0.01)["trial"] == 0
    assert select(rows, Selection.MOST_ACCURATE, 0.01)["trial"] == 1
    assert select(rows, Selection.FASTEST, 0.002)["trial"] == 1  # only trial 1 is within 0.2 pt
    assert select([], Selection.FASTEST, 0.01) is None


def test_table_lists_teacher_then_front(study):
    table = format_table(front_rows(study), BASELINE).splitlines()
    assert "speed-up" in table[0] and table[1].split()[0] == "teacher"
    assert [line.split()[0] for line in table[2:]] == ["4", "0", "1"]
