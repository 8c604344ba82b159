"""Task metrics (accuracy, F1, macro-F1), task.metric in the config and the study, and an objective that optimizes it."""

import threading
from dataclasses import fields

import optuna
import pytest
import torch

from autocompress.config import ConfigError, parse_config
from autocompress.controller.study import check_resumable, open_study, signature, study_metric
from autocompress.tasks.metrics import check_metric, classification_scores, task_metrics

# label 1: TP 2 (rows 0, 1), FN 2 (rows 2, 7), FP 1 (row 3) -> F1 = 4 / 7; label 0: TP 3, FP 2, FN 1 -> 6 / 9
BINARY_LABELS = [1, 1, 1, 0, 0, 0, 0, 1]
BINARY_PREDICTIONS = [1, 1, 0, 1, 0, 0, 0, 0]


def test_binary_f1_is_the_f1_of_label_1():
    scores = classification_scores(BINARY_PREDICTIONS, BINARY_LABELS, num_labels=2)
    assert scores == pytest.approx({"accuracy": 5 / 8, "f1": 4 / 7})
    with_macro = classification_scores(BINARY_PREDICTIONS, BINARY_LABELS, num_labels=2, metric="macro_f1")
    assert with_macro == pytest.approx({"accuracy": 5 / 8, "f1": 4 / 7, "macro_f1": (4 / 7 + 6 / 9) / 2})
    swapped = classification_scores([1 - p for p in BINARY_PREDICTIONS], [1 - t for t in BINARY_LABELS], num_labels=2)
    assert swapped["f1"] == pytest.approx(6 / 9)  # the positive class is label 1, whatever its frequency


def test_macro_f1_averages_every_class_and_a_never_predicted_one_counts_zero():
    labels, predictions = [0, 0, 1, 1, 2, 2], [0, 0, 1, 0, 1, 1]  # class 2 is never predicted
    # class 0: TP 2, FP 1, FN 0 -> 0.8; class 1: TP 1, FP 2, FN 1 -> 0.4; class 2: TP 0 -> 0
    assert classification_scores(predictions, labels, num_labels=3) == pytest.approx({"accuracy": 0.5, "macro_f1": 1.2 / 3})
    # a fourth class of the head, absent from both labels and predictions, also counts as 0
    assert classification_scores(predictions, labels, num_labels=4)["macro_f1"] == pytest.approx(1.2 / 4)


def test_a_task_has_accuracy_its_f1_and_the_selected_metric():
    assert task_metrics(2) == ("accuracy", "f1") and task_metrics(5) == ("accuracy", "macro_f1")
    assert task_metrics(2, "macro_f1") == ("accuracy", "f1", "macro_f1") and task_metrics(3, "macro_f1") == ("accuracy", "macro_f1")
    check_metric("macro_f1", 2)
    with pytest.raises(ValueError, match="needs 2 labels, this task has 3; allowed: accuracy, macro_f1"):
        check_metric("f1", 3)
    with pytest.raises(ValueError):
        classification_scores([0, 1], [0], num_labels=2)


def write_task(folder, classes=3):
    rows = "".join(f"sentence {i} of class {i % classes}\t{i % classes}\n" for i in range(8 * classes))
    for name in ("train.tsv", "test.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + rows)


def test_f1_on_a_multi_class_task_is_refused_in_one_line_before_training(tmp_path, monkeypatch):
    from autocompress.controller.preflight import preflight

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    write_task(tmp_path)
    task = {"data_root": str(tmp_path), "train": "train.tsv", "test": "test.tsv", "dev_size": 6}
    rest = {"search": {"storage": f"sqlite:///{tmp_path}/s.db"}, "teacher": {"batch_size": 8}}
    with pytest.raises(ConfigError) as error:
        preflight(parse_config({"task": {**task, "metric": "f1"}, **rest}, source="three.yaml"))
    message = str(error.value)
    assert message.startswith("three.yaml: field 'task.metric'") and "allowed: accuracy, macro_f1" in message and "\n" not in message
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing trained
    assert preflight(parse_config({"task": {**task, "metric": "macro_f1"}, **rest})).rows["dev"] == 6
    with pytest.raises(ConfigError, match="task.metric"):
        parse_config({"task": {"metric": "precision"}})


def test_a_study_names_its_metric_and_refuses_another_on_resume(tmp_path):
    settings = {"search": {"storage": f"sqlite:///{tmp_path}/s.db", "study_name": "m"}}
    macro = parse_config({**settings, "task": {"metric": "macro_f1"}}, source="macro.yaml")
    study = open_study(macro, signature(macro, "key"))
    assert study.metric_names == ["dev_macro_f1", "relative_latency", "size_mb"] and study_metric(study) == "macro_f1"
    plain = parse_config(settings, source="plain.yaml")
    with pytest.raises(ConfigError) as error:
        check_resumable(study, plain, signature(plain, "key"))
    assert "task.metric=\"macro_f1\", this config gives \"accuracy\"" in str(error.value) and "\n" not in str(error.value)

    # a study made before task.metric optimized accuracy: it resumes under accuracy, not under macro_f1
    old = optuna.create_study(study_name="old", storage=settings["search"]["storage"], directions=["maximize", "minimize", "minimize"])
    before = signature(plain, "key")
    old.set_user_attr("autocompress.signature", {**before, "task": {k: v for k, v in before["task"].items() if k != "metric"}})
    check_resumable(old, plain, signature(plain, "key"))
    assert study_metric(old) == "accuracy"
    with pytest.raises(ConfigError, match="task.metric"):
        check_resumable(old, macro, signature(macro, "key"))

    # so with every field a later release adds (task.test_size, latency.batch_size): an older study ran at their defaults
    older = optuna.create_study(study_name="older", storage=settings["search"]["storage"], directions=["maximize", "minimize", "minimize"])
    older.set_user_attr("autocompress.signature", {**before, "task": {k: v for k, v in before["task"].items() if k != "test_size"},
                                                   "latency": {k: v for k, v in before["latency"].items() if k != "batch_size"}})
    check_resumable(older, plain, signature(plain, "key"))
    batched = parse_config({**settings, "latency": {"batch_size": 32}}, source="batched.yaml")
    with pytest.raises(ConfigError, match="latency.batch_size=1, this config gives 32"):
        check_resumable(older, batched, signature(batched, "key"))


class OneMeasurement:
    """Workers that return a fixed measurement for every trial."""

    size = 1

    def __init__(self, measurement):
        self.measurement, self.cancelled = measurement, threading.Event()

    def run(self, request):
        from autocompress.controller.trial import TrialOutcome

        return TrialOutcome(self.measurement, None, None, "test:0", 0.1)


def test_the_objective_constraint_and_logged_metrics_use_the_selected_metric(model, tmp_path):
    from autocompress.controller.objective import make_objective
    from autocompress.controller.trial import Measurement, SearchContext
    from autocompress.cost import CostModelStore
    from autocompress.tasks import Logits
    from autocompress.tracking.runs import METRICS_ATTR

    baseline = {"dev_accuracy": 0.90, "test_accuracy": 0.89, "dev_macro_f1": 0.80, "test_macro_f1": 0.78, "size_bytes": 90e6,
                "int8": {"size_bytes": 23e6}}
    values = {f.name: 1.0 for f in fields(Measurement)} | {"size_bytes": 30_000_000, "artifact": None, "size_is_estimate": False}
    # accuracy is within 1 point of the teacher's, macro-F1 is 5 points below: infeasible under task.metric macro_f1
    measured = Measurement(**values | {"dev_accuracy": 0.895, "test_accuracy": 0.88, "relative_latency": 0.5,
                                       "scores": {"dev_macro_f1": 0.75, "test_macro_f1": 0.74}})
    config = parse_config({"task": {"metric": "macro_f1"}, "search": {"constraints": {"max_accuracy_drop": 0.01}}})
    context = SearchContext(config, None, model, None, [], [], [{"input_ids": torch.zeros(1, 16, dtype=torch.long)}], {}, tmp_path,
                            Logits("macro_f1"), CostModelStore(tmp_path / "costs"), {"cpu": "test"}, {}, baseline)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.optimize(make_objective(context, OneMeasurement(measured)), n_trials=1)
    trial = study.trials[0]
    assert trial.values == pytest.approx([0.75, 0.5, 30.0])
    assert trial.constraints == {"macro_f1_drop": pytest.approx(0.04)}
    assert trial.user_attrs["scores"] == {"dev_macro_f1": 0.75, "test_macro_f1": 0.74}
    logged = trial.user_attrs[METRICS_ATTR]
    assert logged["dev_accuracy"] == 0.895 and logged["dev_macro_f1"] == 0.75 and logged["test_macro_f1"] == 0.74
    assert logged["macro_f1_drop"] == pytest.approx(0.05) and logged["test_macro_f1_drop"] == pytest.approx(0.04)
    assert logged["accuracy_drop"] == pytest.approx(0.005)
