"""An embedding search from the CLI on the real all-MiniLM-L6-v2 as it ships, with tiny budgets: no teacher is trained,
trials are scored by their agreement with its embeddings, and the chosen model ships as ONNX (pooled and normalized in
the graph) and as a sentence-transformers folder."""

import json
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import optuna
import pytest
import yaml

from autocompress.cli import main

pytestmark = pytest.mark.slow
LABELLED = Path(__file__).resolve().parents[1] / "data"


def test_an_embedding_search_runs_end_to_end(tiny, tmp_path, capsys):
    path = tiny("emb", n_trials=3, storage=f"sqlite:///{tmp_path}/study.db", output=str(tmp_path / "out"),
                tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "emb"})
    config = yaml.safe_load(path.read_text())
    config["task"] = {**config["task"], "type": "embedding", "train": "sst2/train.tsv", "test": None, "test_size": 64,
                      "dev_size": 48, "test_subset": None, "metric": "recall_at_10",
                      # labelled sets scored beside the texts (committed synthetic files, read where they lie)
                      "pairs": {"dev": str(LABELLED / "similarity/dev.jsonl"), "test": str(LABELLED / "similarity/test.jsonl")},
                      "retrieval": {"queries": str(LABELLED / "retrieval/queries.jsonl"), "corpus": str(LABELLED / "retrieval/corpus.jsonl"),
                                    "dev": str(LABELLED / "retrieval/qrels/dev.tsv"), "test": str(LABELLED / "retrieval/qrels/test.tsv")}}
    config["space"] = {"weight_bits": [8, 32], "group_size": [None], "embedding_bits": [32], "num_blocks": [3, 6], "recovery_steps": [0, 6],
                       "output_precision": ["int8"]}  # an index of int8 vectors: recall@10 is scored on them
    config["recovery"] = {"batch_size": 16, "train_subset": 96, "eval_every": 3, "eval_subset": 32}
    path.write_text(yaml.safe_dump(config))

    assert main(["search", str(path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "mean pooling + L2 normalize (from" in plan and "the model as it is, not fine-tuned" in plan
    assert "scored beside: labelled pairs on dev, test; retrieval on dev, test" in plan

    assert main(["search", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "dev recall_at_10" in printed and "teacher" in printed and "ORT int8" in printed
    study = optuna.load_study(study_name="emb", storage=f"sqlite:///{tmp_path}/study.db")
    baseline = study.user_attrs["baseline"]
    assert baseline["dev_recall_at_10"] == 1.0 and baseline["test_cosine"] == pytest.approx(1.0) and "dev_accuracy" not in baseline  # itself
    assert 0.5 < baseline["int8"]["test_cosine"] < 1.0  # ORT's dynamic int8 moves the embeddings
    assert study.metric_names[0] == "dev_recall_at_10"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    labelled = {f"{split}_{name}" for split in ("dev", "test") for name in ("gold_spearman", "ndcg_at_10", "recall_at_100")}
    assert labelled <= set(baseline) and baseline["test_gold_spearman"] > 0.5  # the teacher ranks the pairs' shared parts
    assert done and all(t.user_attrs["dev_accuracy"] is None and {"dev_cosine", "test_spearman", *labelled} <= set(t.user_attrs["scores"])
                        for t in done)
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing fine-tuned

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["emb"], output_format="list")
    trial_runs = [r for r in runs if r.info.run_name.startswith("trial-") and "dev_cosine" in r.data.metrics]
    assert len(trial_runs) == len(done) and all("accuracy_drop" not in r.data.metrics and labelled <= set(r.data.metrics) for r in trial_runs)

    out = tmp_path / "out"
    front = json.loads((out / "pareto.json").read_text())
    assert front and all({"dev_recall_at_10", "test_cosine", "recall_at_10_drop"} <= set(row) for row in front)
    assert all(row["index_bytes_per_vector"] == 384 and row["policy"]["techniques"]["output_quantization"]["output_precision"] == "int8"
               for row in front)
    shipped = ort.InferenceSession(str(out / "best_model" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in shipped.get_outputs()] == ["sentence_embedding"]

    # the hf export is a sentence-transformers folder; it embeds like the ONNX file that was measured
    from sentence_transformers import SentenceTransformer

    report = json.loads((out / "exports" / "hf" / "export_report.json").read_text())
    assert report["metric"] == "recall_at_10" and report["agreement"] > 0.99 and "modules.json" in report["files"]
    texts = ["a gripping, funny film", "dull and overlong", "the cast is superb"]
    encoded = SentenceTransformer(str(out / "exports" / "hf"), device="cpu", trust_remote_code=True).encode(texts)
    tokens = SentenceTransformer(str(out / "exports" / "hf"), device="cpu", trust_remote_code=True).tokenize(texts)
    feed = {i.name: tokens[i.name].numpy().astype(np.int64) for i in shipped.get_inputs()}
    deployed = shipped.run(None, feed)[0]
    cosine = (encoded * deployed).sum(-1) / np.linalg.norm(encoded, axis=-1) / np.linalg.norm(deployed, axis=-1)
    assert cosine.min() > 0.9  # the same model; the ONNX file rounds activations where the policy is int8

    # the same folder is registered with MLflow's sentence_transformers flavor beside the ONNX version
    assert "registered models:/autocompress-emb-sentence-transformers@champion" in printed
    loaded = mlflow.sentence_transformers.load_model("models:/autocompress-emb-sentence-transformers@champion")
    assert np.allclose(loaded.encode(texts), encoded, atol=1e-5)
    from autocompress.tracking.registry import register_sentence_transformers

    (chosen,) = [row["trial"] for row in front if row["chosen"]]
    (run,) = [r for r in trial_runs if r.info.run_name == f"trial-{chosen}"]
    again = register_sentence_transformers(run.info.run_id, out / "exports" / "hf", name="autocompress-emb", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert again.version == "1"  # registering the same run again reuses its version
