"""search.final_training: the front's best student distilled again on a longer budget, measured as a trial, exported without a third training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from families import TINY_TASK, TINY_TEACHER, save_tiny
from optuna.trial import TrialState

import autocompress.exporters.rebuild as rebuild_module
from autocompress.cli import main
from autocompress.config import ConfigError, load_config, parse_config
from autocompress.controller.final_training import enqueue_finals, final_candidates, final_stage_left, pending_finals
from autocompress.controller.pareto import BASELINE_ATTR, front_trials
from autocompress.controller.progress import summarize
from autocompress.controller.study import FINAL_OF_ATTR, RETRY_OF_ATTR, retry_all_interrupted, trials_done
from autocompress.exporters.rebuild import from_run, from_trial, rebuild
from autocompress.policy import Policy
from autocompress.tracking.runs import CURVES_ATTR, TRIAL_TAG

pytestmark = pytest.mark.slow


def test_the_chosen_student_is_trained_again_once_and_exported_from_its_kept_weights(tmp_path, data_root, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    config = {
        "model": str(save_tiny("bert", tmp_path / "bert")),
        "task": {"data_root": str(data_root), **TINY_TASK},
        "teacher": TINY_TEACHER,
        "space": {"weight_bits": [8], "group_size": [None], "prune_ratios": [0.0], "embedding_bits": [8], "heads": [2, 4],
                  "ffn_widths": [32], "num_blocks": [1], "recovery_steps": [2]},
        "recovery": {"train_subset": 16, "batch_size": 8, "eval_every": 2, "eval_subset": 16, "pruner": "none"},
        "search": {"n_trials": 2, "sampler": "random", "study_name": "final", "storage": "sqlite:///final.db", "start_uniform": False,
                   "constraints": {"max_accuracy_drop": None}, "final_training": {"top_k": 1, "recovery_steps": 6, "train_subset": 40, "hidden_weight": 1.0}},
        "latency": {"sentences": 2, "warmup": 1, "repeats": 2, "rounds": 1},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "final", "registry": "none", "export_formats": ["onnx", "hf"]},
        "output": "out",
    }
    path = tmp_path / "final.yaml"
    path.write_text(yaml.safe_dump(config))
    shutil.copy(mlflow_store, tmp_path / "mlflow.db")  # an empty store, as MLflow would create it
    assert main(["search", str(path)]) == 0

    study = optuna.load_study(study_name="final", storage="sqlite:///final.db")
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and trials_done(trials) == 2  # the final training is not a budget trial
    final = trials[2]
    origin = trials[final.user_attrs[FINAL_OF_ATTR]]
    assert final.params == origin.params  # the same student ...
    assert Policy.from_dict(final.user_attrs["policy"]) == Policy.from_dict(origin.user_attrs["policy"]).replace(recovery_steps=6)  # ... final budget
    assert len(final.user_attrs[CURVES_ATTR]["recovery_loss"]) == 6 and len(origin.user_attrs[CURVES_ATTR]["recovery_loss"]) == 2
    assert (tmp_path / "out" / "exports" / "hf" / "config.json").is_file()
    assert summarize(study).line().startswith("trials 2/2 + 1 final")
    front = {row["trial"] for row in json.loads((tmp_path / "out" / "pareto.json").read_text())}
    assert final.number in front and origin.number not in front  # after the final stage, proxies leave the front
    for trial in trials:  # only the front keeps its distilled weights: nothing else is ever exported
        assert Path(trial.user_attrs["trained_model"]).is_dir() == (trial.number in front)
    rows = {row["trial"]: row for row in json.loads((tmp_path / "out" / "pareto.json").read_text())}
    assert all(row.get(FINAL_OF_ATTR) == (origin.number if number == final.number else None) for number, row in rows.items())

    # a resumed search neither adds trials nor trains the student a third time
    assert main(["search", str(path)]) == 0
    assert len(optuna.load_study(study_name="final", storage="sqlite:///final.db").trials) == 3

    # the export loads the kept weights: with training made impossible it still rebuilds the model the trial measured
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    with monkeypatch.context() as patch:
        patch.setattr(rebuild_module, "_train_again", no_training)
        source = rebuild(from_trial(study, final.number))
        client = mlflow.MlflowClient("sqlite:///mlflow.db")
        run, = client.search_runs([client.get_experiment_by_name("final").experiment_id], f"tags.`{TRIAL_TAG}` = '{final.number}'")
        from_mlflow = rebuild(from_run(run.info.run_id, tracking_uri="sqlite:///mlflow.db"))  # the MLflow run knows the weights too
    np.testing.assert_allclose(from_mlflow.outputs, source.outputs, atol=1e-6)
    assert source.scores["accuracy"] == pytest.approx(final.user_attrs["dev_accuracy"], abs=1e-9)
    shorter = rebuild(from_trial(study, origin.number))  # dropped from the front with its weights: trained again, 2 steps
    assert not np.allclose(source.outputs, shorter.outputs, atol=1e-4)  # 6 steps moved the student beyond where 2 left it
    # without them it trains again on the final rows and budget: the same model
    shutil.rmtree(final.user_attrs["trained_model"])
    again = rebuild(from_trial(study, final.number))
    np.testing.assert_allclose(again.outputs, source.outputs, atol=1e-4)


def test_final_training_needs_a_space_of_students(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "default", "search": {"final_training": {"top_k": 2}}}))
    with pytest.raises(ConfigError, match=r"c.yaml: search.final_training.top_k > 0 needs space.recovery_steps above 0"):
        load_config(path)


def test_after_a_final_training_only_finished_models_stand_on_the_front():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])

    def add(dev: float, ratio: float, steps: int, final_of: int | None = None) -> None:
        attrs = {"policy": {"recovery_steps": steps}, **({FINAL_OF_ATTR: final_of} if final_of is not None else {})}
        study.add_trial(optuna.trial.create_trial(values=[dev, ratio, 5.0], user_attrs=attrs))

    add(0.80, 0.15, 0)  # post-training: its score is final as measured
    add(0.85, 0.40, 100)  # short-trained students
    add(0.84, 0.20, 100)
    assert [t.number for t in front_trials(study)] == [0, 1, 2]
    add(0.83, 0.45, 1000, final_of=1)  # trained long: lower on dev than its proxy, yet the finished model
    # both proxies leave, the faster one too though it had no final: its dev score stood for a training it never got
    assert [t.number for t in front_trials(study)] == [0, 3]


def test_students_short_of_the_accuracy_limit_fill_the_final_stage_most_accurate_first():
    def config(top_k: int):
        return parse_config({"model": "default", "space": {"recovery_steps": [100]}, "search": {
            "selection": "fastest_within_budget", "constraints": {"max_accuracy_drop": 0.01, "max_size_mb": 8},
            "final_training": {"top_k": top_k}}})

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr(BASELINE_ATTR, {"dev_accuracy": 0.90, "test_accuracy": 0.88, "size_bytes": 90e6, "int8": {"size_bytes": 23e6}})

    def add(dev: float, ratio: float, mb: float) -> None:
        attrs = {"policy": {"recovery_steps": 100}, "dev_accuracy": dev, "test_accuracy": dev, "latency_ms": ratio, "reference_latency_ms": 1.0,
                 "speedup": 1 / ratio, "relative_latency_ci_low": ratio, "relative_latency_ci_high": ratio, "speedup_vs_int8": 1 / ratio,
                 "size_bytes": mb * 1e6, "size_is_estimate": False, "sparsity": 0.0, "seed": 0}
        limits = {"accuracy_drop": round(0.90 - dev - 0.01, 9), "size_mb": mb - 8}
        study.add_trial(optuna.trial.create_trial(values=[dev, ratio, mb], user_attrs=attrs, constraints=limits))

    add(0.895, 0.50, 7)  # 0: feasible
    add(0.880, 0.30, 7)  # 1: 2 pt short on dev, fast
    add(0.885, 0.40, 7)  # 2: 1.5 pt short, more accurate than 1
    add(0.899, 0.20, 9)  # 3: accurate and fast, but over the size limit: more training will not shrink it
    add(0.870, 0.45, 7)  # 4: short of accuracy and dominated by 1
    assert final_candidates(study, config(3)) == [0, 2, 1]
    assert final_candidates(study, config(1)) == [0]


def test_a_final_waiting_in_the_queue_is_final_stage_left():
    config = parse_config({"model": "default"})  # no final stage configured: nothing to enqueue
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert not final_stage_left(study, config)
    study.enqueue_trial({}, user_attrs={FINAL_OF_ATTR: 0})  # e.g. the retry of an interrupted final
    assert final_stage_left(study, config)


@pytest.mark.parametrize("interrupted", [True, False])
def test_a_final_interrupted_on_every_attempt_is_trained_again_one_that_failed_on_its_own_is_not(interrupted):
    config = parse_config({"model": "default", "space": {"recovery_steps": [100]}, "search": {"final_training": {"top_k": 1}}})
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr(BASELINE_ATTR, {"dev_accuracy": 0.90, "test_accuracy": 0.88, "size_bytes": 90e6, "int8": {"size_bytes": 23e6}})
    attrs = {"policy": {"recovery_steps": 100}, "dev_accuracy": 0.89, "test_accuracy": 0.87, "latency_ms": 0.5, "reference_latency_ms": 1.0,
             "speedup": 2.0, "relative_latency_ci_low": 0.5, "relative_latency_ci_high": 0.5, "speedup_vs_int8": 1.2,
             "size_bytes": 7e6, "size_is_estimate": False, "sparsity": 0.0, "seed": 0}
    study.add_trial(optuna.trial.create_trial(values=[0.89, 0.5, 7.0], user_attrs=attrs))
    assert pending_finals(study, config) == [0]
    failure = {"interrupted": True, "fail_reason": "interrupted: its process 1 on host is gone"} if interrupted else {"fail_reason": "RuntimeError: out of range"}
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={FINAL_OF_ATTR: 0, **failure}))
    if interrupted:
        assert retry_all_interrupted(study) == [1] and pending_finals(study, config) == []  # its retry waits: not queued twice
        retry = study.ask()  # the retry starts, and is interrupted too (a machine stop): a retry is not retried
        retry.set_user_attr("interrupted", True)
        retry.set_user_attr("fail_reason", "interrupted: its process 2 on host is gone")
        study.tell(retry, state=TrialState.FAIL)
        assert study.trials[2].user_attrs[RETRY_OF_ATTR] == 1 and retry_all_interrupted(study) == []
        assert pending_finals(study, config) == [0]  # so the final stage trains the student again
        assert enqueue_finals(study, config) == 1 and pending_finals(study, config) == []
    else:
        assert pending_finals(study, config) == [] and not final_stage_left(study, config)  # a real failure is not re-run
