"""The whole pipeline from the CLI on the real model and data, with tiny budgets."""

import json
import os

import mlflow
import optuna
import pytest
import yaml

from autocompress.cli import main
from autocompress.policy import Policy

pytestmark = pytest.mark.slow


@pytest.fixture()
def tiny_config(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    config = {
        "task": {"data_root": str(data_root), "train_subset": 256, "validation_subset": 96, "max_length": 48},
        "teacher": {"steps": 6, "batch_size": 16, "learning_rate": 1e-4},
        "space": {"weight_bits": [4, 8, 32], "group_size": [None, 32], "prune_ratios": [0.0, 0.5], "embedding_bits": [4, 8, 32]},
        "search": {"n_trials": 3, "study_name": "tiny", "storage": f"sqlite:///{tmp_path}/study.db", "population_size": 2,
                   "constraints": {"max_accuracy_drop": None}},
        "latency": {"sentences": 4, "warmup": 2, "repeats": 8},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tiny"},
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def child_runs(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    parents = [r for r in runs if r.info.run_name == "search-tiny"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id and r.info.run_name.startswith("trial-")]
    teachers = [r for r in runs if r.info.run_name == "teacher"]
    return parents, children, teachers


def test_search_tracks_every_trial_and_resumes_the_same_study(tiny_config, tmp_path, capsys):
    assert main(["search", str(tiny_config)]) == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "speed-up" in printed

    front = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert front and {"trial", "accuracy", "latency_ms", "size_mb", "policy"} <= set(front[0])
    for row in front:
        Policy.from_dict(row["policy"])
        assert row["latency_ms"] > 0 and row["size_mb"] > 0
        assert row["artifact"].endswith(".onnx") and os.path.getsize(row["artifact"]) > 1e6  # the file that was timed
    chosen = Policy.load(tmp_path / "out" / "best_policy.json")
    assert chosen in [Policy.from_dict(r["policy"]) for r in front]
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parents, children, teachers = child_runs(uri)
    assert len(parents) == 1 and len(children) == 3 and len(teachers) == 1
    params = children[0].data.params
    assert params["bert.encoder.layer.5.output.dense.bits"] in {"4", "8", "32"}
    assert {"accuracy", "latency_ms", "size_bytes", "speedup"} <= set(children[0].data.metrics)
    tags = {r.data.tags["optuna.trial_number"]: r.data.tags.get("pareto") for r in children}
    assert {int(n) for n, t in tags.items() if t == "true"} == {r["trial"] for r in front}
    assert "teacher_accuracy" in parents[0].data.metrics

    # Second run: the cached teacher is reused (no new teacher run) and trials join the same study.
    assert main(["search", str(tiny_config), "--n-trials", "2"]) == 0
    parents, children, teachers = child_runs(uri)
    assert len(parents) == 1 and len(children) == 5 and len(teachers) == 1
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    assert len(study.trials) == 5
    # a new study starts from the uniform policies (all int8 per channel, all int4); a resumed one does not again
    assert ["fixed_params" in t.system_attrs for t in study.trials] == [True, True, False, False, False]
    assert {study.trials[0].params[f"block{i}.bits"] for i in range(6)} == {8} and study.trials[0].params["group_size"] is None
    assert {study.trials[1].params[f"block{i}.bits"] for i in range(6)} == {4} and study.trials[1].params["group_size"] == 32
    assert study.trials[1].params["embedding_bits"] == 4 and study.trials[1].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[1].user_attrs["artifact_bytes"] < 0.2 * study.user_attrs["baseline"]["artifact_bytes"]

    capsys.readouterr()
    assert main(["pareto", "--storage", f"sqlite:///{tmp_path}/study.db", "--study-name", "tiny", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in again] == [r["trial"] for r in json.loads((tmp_path / "out" / "pareto.json").read_text())]


def test_pareto_of_unknown_study_exits_2(tmp_path, capsys):
    assert main(["pareto", "--storage", f"sqlite:///{tmp_path}/none.db", "--study-name", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_joint_search_distills_students_and_logs_recovery_curves(tiny_config, tmp_path, capsys):
    config = yaml.safe_load(tiny_config.read_text())
    config["space"].update({"weight_bits": [4, 32], "group_size": [32], "num_blocks": [3], "heads": [6, 12], "ffn_widths": [768], "recovery_steps": [8]})
    config["recovery"] = {"train_subset": 64, "batch_size": 16, "eval_every": 4, "eval_subset": 32, "pruner": "none"}
    config["search"].update({"n_trials": 2, "study_name": "joint"})
    config["tracking"]["experiment"] = "joint"
    tiny_config.write_text(yaml.safe_dump(config))
    assert main(["search", str(tiny_config)]) == 0
    front = json.loads((tmp_path / "out" / "pareto.json").read_text())
    for row in front:
        policy = Policy.from_dict(row["policy"])
        assert policy.kept_blocks == (1, 3, 5) and policy.recovery_steps == 8 and set(policy.ffn.values()) == {768}
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    runs = [r for r in mlflow.search_runs(experiment_names=["joint"], output_format="list") if r.info.run_name.startswith("trial-")]
    assert len(runs) == 2
    curve = client.get_metric_history(runs[0].info.run_id, "recovery_accuracy")
    assert [m.step for m in curve] == [4, 8]
    assert len(client.get_metric_history(runs[0].info.run_id, "recovery_loss")) == 8
