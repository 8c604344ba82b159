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
def tiny_config(tiny, tmp_path):
    return tiny(n_trials=3, storage=f"sqlite:///{tmp_path}/study.db", output=str(tmp_path / "out"),
                tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tiny"})


@pytest.fixture()
def tiny_bert_config(tiny, tmp_path):
    """The same search on a random 2-block BERT: for tests of how trials fail and what is recorded, not of the model."""
    return tiny(n_trials=3, storage=f"sqlite:///{tmp_path}/study.db", output=str(tmp_path / "out"),
                tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tiny"}, tiny_bert=True)


def child_runs(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    parents = [r for r in runs if r.info.run_name == "search-tiny"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id and r.info.run_name.startswith("trial-")]
    teachers = [r for r in runs if r.info.run_name == "teacher"]
    return parents, children, teachers


def test_search_tracks_every_trial_and_resumes_the_same_study(tiny_config, tmp_path, capsys):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")  # a process-wide URI the search must not write or register to
    assert main(["search", str(tiny_config)]) == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "ORT int8" in printed and "speed-up" in printed and "test acc" in printed

    out = tmp_path / "out"
    front = json.loads((out / "pareto.json").read_text())
    assert front and {"trial", "dev_accuracy", "test_accuracy", "speedup", "speedup_vs_int8", "size_bytes", "feasible", "seed", "policy"} <= set(front[0])
    for row in front:
        Policy.from_dict(row["policy"])
        assert row["latency_ms"] > 0 and row["speedup"] > 0 and row["speedup_vs_int8"] > 0 and row["feasible"]
        assert row["artifact"] == f"models/trial-{row['trial']}.onnx"  # copied into --output
        assert row["size_bytes"] == os.path.getsize(out / row["artifact"]) and not row["size_is_estimate"]  # size = the file that ships
    chosen = Policy.load(out / "best_policy.json")
    (marked,) = [r for r in front if r["chosen"]]  # pareto.json says which row was chosen
    assert chosen == Policy.from_dict(marked["policy"])
    assert (out / "best_model" / "model.onnx").stat().st_size > 1e6 and (out / "best_model" / "tokenizer.json").is_file()
    assert Policy.load(out / "best_model" / "policy.json") == chosen
    assert (out / "pareto.png").stat().st_size > 0
    (work,) = (tmp_path / "cache" / "work").iterdir()  # tracking.keep_artifacts: front
    assert sorted(p.name for p in work.iterdir()) == sorted(["references", "study.json", *(f"trial-{row['trial']}" for row in front)])

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parents, children, teachers = child_runs(uri)
    assert len(parents) == 1 and len(children) == 3 and len(teachers) == 1
    params = children[0].data.params
    assert params["block5.bits"] in {"4", "8", "32"} and int(params["seed"]) >= 0
    assert {"block0.prune_ratio", "block0.heads", "block0.ffn", "block0.kept", "kept_blocks", "embedding_bits"} <= set(params)
    assert params["block0.heads"] == "12" and params["block0.ffn"] == "1536" and params["block0.kept"] == "True"
    assert len({frozenset(r.data.params) for r in children}) == 1  # one set of keys: MLflow's compare view lines trials up
    assert {"dev_accuracy", "test_accuracy", "latency_ms", "size_bytes", "speedup", "speedup_vs_int8", "sparsity"} <= set(children[0].data.metrics)
    tags = {r.data.tags["optuna.trial_number"]: r.data.tags.get("pareto") for r in children}
    assert {int(n) for n, t in tags.items() if t == "true"} == {r["trial"] for r in front}
    assert {"teacher_dev_accuracy", "teacher_test_accuracy", "int8_size_bytes", "int8_speedup"} <= set(parents[0].data.metrics)
    assert parents[0].data.metrics["int8_speedup"] > 1  # ORT's int8 one-liner runs faster than the fp32 teacher
    experiment = mlflow.MlflowClient().get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the training-runs view
    reports = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "reports")}
    assert {f"reports/{n}" for n in ("pareto.html", "pareto.png", "front_layers.png", "progress.png", "front.html")} <= reports
    assert "plotly" in (out / "pareto.html").read_text()[:20000].lower()
    history = mlflow.MlflowClient().get_metric_history(parents[0].info.run_id, "search_hypervolume")
    assert [m.step for m in history] == [0, 1, 2] and history[-1].value >= history[0].value  # progress, charted per trial
    assert_champion_is_the_chosen_model(uri, "autocompress-tiny", out, children)

    storage = f"sqlite:///{tmp_path}/study.db"
    assert_exports_and_picks(uri, storage, out, children, capsys)
    study = optuna.load_study(study_name="tiny", storage=storage)
    first_artifact = study.trials[0].user_attrs["artifact"]
    first_bytes = open(first_artifact, "rb").read()

    # Second run: the cached teacher is reused (no new teacher run) and trials join the same study.
    assert main(["search", str(tiny_config), "--n-trials", "2"]) == 0
    parents, children, teachers = child_runs(uri)
    assert len(parents) == 1 and len(children) == 5 and len(teachers) == 1
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 5
    # a new study starts from the uniform policies (all int8 per channel, all int4); a resumed one does not again
    assert ["fixed_params" in t.system_attrs for t in study.trials] == [True, True, False, False, False]
    assert {study.trials[0].params[f"block{i}.bits"] for i in range(6)} == {8} and study.trials[0].params["group_size"] is None
    assert {study.trials[1].params[f"block{i}.bits"] for i in range(6)} == {4} and study.trials[1].params["group_size"] == 32
    assert study.trials[1].params["embedding_bits"] == 4 and study.trials[1].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[1].user_attrs["size_bytes"] < 0.2 * study.user_attrs["baseline"]["size_bytes"]
    assert len({t.user_attrs["seed"] for t in study.trials}) == 5  # each trial seeds itself

    capsys.readouterr()
    assert main(["pareto", "--storage", storage, "--study-name", "tiny", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in again] == [r["trial"] for r in json.loads((out / "pareto.json").read_text())]

    # A study of the same name in another storage keeps its artifacts apart; with nothing feasible, exit 3.
    config = yaml.safe_load(tiny_config.read_text())
    config["search"].update({"storage": f"sqlite:///{tmp_path}/other.db", "n_trials": 1, "start_uniform": False,
                             "constraints": {"max_accuracy_drop": None, "max_size_mb": 1.0}})
    config["output"] = str(tmp_path / "out2")
    tiny_config.write_text(yaml.safe_dump(config))
    assert main(["search", str(tiny_config)]) == 3
    assert "no trial met the constraints" in capsys.readouterr().out
    assert not (tmp_path / "out2" / "best_policy.json").exists() and not (tmp_path / "out2" / "best_model").exists()
    rows = json.loads((tmp_path / "out2" / "pareto.json").read_text())
    assert rows and not any(r["feasible"] for r in rows)
    other = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/other.db").trials[0].user_attrs["artifact"]
    assert os.path.dirname(os.path.dirname(other)) != os.path.dirname(os.path.dirname(first_artifact))
    assert open(first_artifact, "rb").read() == first_bytes


def assert_exports_and_picks(uri, storage, out, children, capsys):
    """The chosen trial is exported (onnx, hf) beside the front and on its MLflow run; pick and export work on the study."""
    chosen = json.loads((out / "best_policy.json").read_text())
    chosen_trial = next(row["trial"] for row in json.loads((out / "pareto.json").read_text()) if row.get("chosen"))
    for name in ("onnx", "hf"):
        report = json.loads((out / "exports" / name / "export_report.json").read_text())
        assert report["format"] == name and report["max_abs_diff"] <= report["tolerance"]
        assert report["origin"]["trial"] == chosen_trial and report["origin"]["recorded"]["dev_accuracy"] > 0  # which trial it is
        assert json.loads((out / "exports" / name / "policy.json").read_text()) == chosen
    champion = next(r for r in children if json.loads(mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/policy.json")) == chosen)
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(champion.info.run_id, "exports/hf")}
    assert {"exports/hf/config.json", "exports/hf/model.safetensors", "exports/hf/tokenizer.json"} <= logged

    capsys.readouterr()
    assert main(["pick", "--storage", storage, "--study-name", "tiny", "--rule", "smallest_within_budget", "--json"]) == 0
    picked = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="tiny", storage=storage)
    sizes = {t.number: t.user_attrs["size_bytes"] for t in study.trials if t.state.name == "COMPLETE"}
    assert picked["trial"] == min(sizes, key=sizes.get)
    assert main(["pick", "--storage", storage, "--study-name", "tiny", "--max-size-mb", "0.5"]) == 3  # nothing that small

    run = next(r for r in children if int(r.data.tags["optuna.trial_number"]) == picked["trial"])
    assert main(["export", "--run", run.info.run_id, "--tracking-uri", uri, "--format", "hf", "-o", str(out / "picked")]) == 0
    assert Policy.load(out / "picked" / "hf" / "policy.json") == Policy.from_dict(picked["policy"])
    assert main(["export", "--storage", storage, "--study-name", "tiny", "--trial", "99", "--format", "hf", "-o", str(out / "x")]) == 2
    assert "trial 99 is not a completed trial" in capsys.readouterr().err

    # apply: the chosen policy on the fine-tuned checkpoint (here the search's own teacher) measures what its trial did
    teacher = next((out.parent / "cache" / "teachers").iterdir())
    config = str(out.parent / "tiny.yaml")
    assert main(["apply", str(out / "best_policy.json"), "--model", str(teacher), "--config", config, "-o", str(out / "applied")]) == 0
    applied = json.loads((out / "applied" / "measurement.json").read_text())
    trial = next(t for t in study.trials if t.user_attrs.get("policy") == chosen)
    assert applied["dev_accuracy"] == trial.user_attrs["dev_accuracy"] and applied["size_bytes"] == trial.user_attrs["size_bytes"]
    (out / "wide.json").write_text(json.dumps(Policy.from_dict(chosen).replace(heads={0: 16}).to_dict()))
    assert main(["apply", str(out / "wide.json"), "--model", str(teacher), "--config", config, "-o", str(out / "wide")]) == 2
    assert "16" in capsys.readouterr().err and not (out / "wide").exists()


def assert_champion_is_the_chosen_model(uri, name, out, children):
    """The registered champion is the chosen trial's file: downloadable as a folder that runs, same logits."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    mlflow.set_tracking_uri(uri)
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    chosen = json.loads((out / "best_policy.json").read_text())
    by_run = {r.info.run_id: r for r in children}
    assert json.loads(mlflow.artifacts.load_text(f"runs:/{version.run_id}/policy.json")) == chosen
    assert by_run[version.run_id].data.tags["pareto"] == "true"
    folder = mlflow.artifacts.download_artifacts(f"models:/{name}@champion")
    assert {"MLmodel", "model.onnx"} <= set(os.listdir(folder)) and "CPUExecutionProvider" in open(f"{folder}/MLmodel").read()
    assert {"policy.json", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(f"{folder}/extra_files"))  # MLflow keeps extra files there
    assert json.load(open(f"{folder}/extra_files/policy.json")) == chosen
    requirements = open(f"{folder}/requirements.txt").read().split()  # what serving it installs: pinned to what ran here
    assert f"onnxruntime=={ort.__version__}" in requirements and f"numpy=={np.__version__}" in requirements
    encoded = AutoTokenizer.from_pretrained(f"{folder}/extra_files")(["a gripping, funny film", "dull"], padding=True, return_tensors="np")
    shipped = ort.InferenceSession(str(out / "best_model" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: encoded[i.name].astype(np.int64) for i in shipped.get_inputs()}
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(feed)
    np.testing.assert_allclose(next(iter(served.values())), shipped.run(None, feed)[0], rtol=1e-4, atol=1e-4)


def test_a_changed_space_or_a_bad_one_fails_before_training(tiny_config, tmp_path, capsys):
    config = yaml.safe_load(tiny_config.read_text())
    config["space"]["heads"] = [16]  # the model has 12
    tiny_config.write_text(yaml.safe_dump(config))
    assert main(["search", str(tiny_config)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "space.heads" in error and "16" in error
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing trained

    config["space"].pop("heads")
    tiny_config.write_text(yaml.safe_dump(config))
    assert main(["search", str(tiny_config), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "not cached: fine-tunes 6 steps" in plan and "new" in plan and "96 dev rows" in plan
    assert not (tmp_path / "cache" / "teachers").exists()
    assert not list(tmp_path.glob("study.db*"))  # a dry run creates no study file (nor its lock)

    storage = f"sqlite:///{tmp_path}/study.db"
    optuna.create_study(study_name="tiny", storage=storage, directions=["maximize", "minimize", "minimize"]).set_user_attr(
        "autocompress.signature", {"version": 2, "space": {"weight_bits": [8]}})
    assert main(["search", str(tiny_config)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--study-name" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "cache" / "teachers").exists()


def test_pareto_of_unknown_study_exits_2(tmp_path, capsys):
    assert main(["pareto", "--storage", f"sqlite:///{tmp_path}/none.db", "--study-name", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    for storage in ("postgresql://me:s3cret@127.0.0.1:1/optuna", "not-a-url"):  # nothing listens on port 1
        assert main(["pick", "--storage", storage, "--study-name", "nope"]) == 2
        error = capsys.readouterr().err
        assert "cannot open as an Optuna storage" in error and len(error.strip().splitlines()) == 1 and "s3cret" not in error


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


def test_a_trial_that_raises_returns_nan_or_runs_out_of_memory_fails_alone(tiny_bert_config, tmp_path, monkeypatch):
    import dataclasses
    import importlib

    trial_module = importlib.import_module("autocompress.controller.trial")  # the module, not a name the package may re-export
    real = trial_module.evaluate
    calls = []

    def flaky(policy, context, **options):
        calls.append(options["name"])
        if len(calls) == 1:
            raise RuntimeError("boom\nsecond line")
        if len(calls) == 2:
            return dataclasses.replace(real(policy, context, **options), dev_accuracy=float("nan"))
        if len(calls) == 3:
            raise MemoryError("out of memory")
        return real(policy, context, **options)

    monkeypatch.setattr(trial_module, "evaluate", flaky)
    config = yaml.safe_load(tiny_bert_config.read_text())
    config["search"].update({"n_trials": 4, "study_name": "faulty"})
    config["tracking"].update({"experiment": "faulty", "registry": "none", "export_formats": []})  # the trials are what is watched
    tiny_bert_config.write_text(yaml.safe_dump(config))
    assert main(["search", str(tiny_bert_config)]) == 0
    study = optuna.load_study(study_name="faulty", storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "FAIL", "COMPLETE"]
    reasons = [t.user_attrs["fail_reason"] for t in study.trials[:3]]
    assert reasons[0] == "RuntimeError: boom" and reasons[1].startswith("FloatingPointError: dev_accuracy not finite")
    assert reasons[2] == "MemoryError: out of memory" and not any(t.user_attrs["interrupted"] for t in study.trials[:3])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["faulty"], output_format="list")}
    assert [runs[f"trial-{i}"].info.status for i in range(4)] == ["FAILED", "FAILED", "FAILED", "FINISHED"]
    assert runs["trial-0"].data.tags["fail_reason"] == "RuntimeError: boom"
    assert runs["search-faulty"].info.status == "FINISHED"

    # the budget is the study's: a re-run with the same config has nothing left to do (failures count, they are not retried)
    assert main(["search", str(tiny_bert_config)]) == 0
    assert len(optuna.load_study(study_name="faulty", storage=f"sqlite:///{tmp_path}/study.db").trials) == 4


def test_a_macro_f1_search_optimizes_records_and_prints_its_metric(tiny_bert_config, tmp_path, capsys):
    config = yaml.safe_load(tiny_bert_config.read_text())
    config["task"]["metric"] = "macro_f1"
    config["search"].update({"n_trials": 2, "study_name": "macro", "constraints": {"max_accuracy_drop": 0.5}})
    config["tracking"].update({"experiment": "macro", "registry": "none", "export_formats": []})
    tiny_bert_config.write_text(yaml.safe_dump(config))
    assert main(["search", str(tiny_bert_config)]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["trial"])
    assert header.split()[2:6] == ["dev", "macro_f1", "test", "macro_f1"]

    study = optuna.load_study(study_name="macro", storage=f"sqlite:///{tmp_path}/study.db")
    assert study.metric_names == ["dev_macro_f1", "relative_latency", "size_mb"]
    baseline = study.user_attrs["baseline"]
    assert {"dev_f1", "test_f1", "dev_macro_f1", "test_macro_f1"} <= set(baseline) and "dev_macro_f1" in baseline["int8"]
    for trial in study.trials:
        scores = trial.user_attrs["scores"]
        assert trial.values[0] == scores["dev_macro_f1"] and set(scores) == {"dev_f1", "test_f1", "dev_macro_f1", "test_macro_f1"}
        assert trial.constraints == {"macro_f1_drop": pytest.approx(baseline["dev_macro_f1"] - scores["dev_macro_f1"] - 0.5, abs=1e-8)}
    front = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert {"dev_accuracy", "dev_f1", "dev_macro_f1", "test_macro_f1", "macro_f1_drop", "test_macro_f1_drop"} <= set(front[0])

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["macro"], output_format="list")}
    assert {"dev_accuracy", "dev_f1", "test_f1", "dev_macro_f1", "test_macro_f1", "macro_f1_drop"} <= set(runs["trial-0"].data.metrics)
    assert {"teacher_dev_macro_f1", "teacher_test_f1", "int8_dev_macro_f1"} <= set(runs["search-macro"].data.metrics)

    config["task"]["metric"] = "accuracy"  # the study optimized macro-F1: resuming it under accuracy is refused
    tiny_bert_config.write_text(yaml.safe_dump(config))
    assert main(["search", str(tiny_bert_config), "--n-trials", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "task.metric" in error and "--study-name" in error and len(error.splitlines()) == 1
