"""Shared fixtures: the real packaged model and real SST-2 sentences, loaded once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("AUTOCOMPRESS_DATA_ROOT") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA_ROOT


@pytest.fixture(scope="session")
def tokenizer():
    from autocompress.models.loading import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture()
def model():
    """A fresh all-MiniLM-L6-v2 with a (seeded) classification head."""
    import torch

    from autocompress.models.loading import load_classifier

    torch.manual_seed(0)
    return load_classifier("default")


@pytest.fixture(scope="session")
def sentences(data_root):
    from autocompress.tasks.data import read_file

    return read_file(data_root / "sst2" / "validation.tsv", "sentence", "label").head(48)


@pytest.fixture(scope="session")
def sentence_batches(sentences, tokenizer):
    from autocompress.tasks.data import batches

    return batches(sentences, tokenizer, batch_size=16, max_length=64)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, its schema migrated once: MLflow takes 1.3 s to create one, paid once per run
    instead of once per test that searches."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def tiny(tmp_path, data_root, monkeypatch, mlflow_store):
    """Writes the YAML of a search with tiny budgets on the real model and data; runs in ``tmp_path`` with its own cache.

    ``tiny_bert=True``: a random 2-block BERT (tests/families.py) instead of MiniLM, for tests of processes and services, not of the model.
    """
    import yaml

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def write(name: str = "tiny", *, tracking: dict | None = None, output: str | None = None, tiny_bert: bool = False, **search) -> Path:
        config = {
            "task": {"data_root": str(data_root), "train_subset": 256, "dev_size": 96, "test_subset": 96, "max_length": 48},
            "teacher": {"steps": 6, "batch_size": 16, "learning_rate": 1e-4},
            "space": {"weight_bits": [4, 8, 32], "group_size": [None, 32], "prune_ratios": [0.0, 0.5], "embedding_bits": [4, 8, 32]},
            "search": {"n_trials": 4, "study_name": name, "storage": "sqlite:///study.db", "population_size": 2,
                       "constraints": {"max_accuracy_drop": None}, **search},
            "latency": {"sentences": 4, "warmup": 2, "repeats": 8, "rounds": 4},
            "tracking": tracking or {"uri": "sqlite:///mlflow.db", "experiment": name},
            "output": output or f"out-{name}",
        }
        if tiny_bert:
            from families import TINY_TASK, TINY_TEACHER, save_tiny

            config["model"] = str(save_tiny("bert", tmp_path / "tiny-bert"))
            config["task"].update(TINY_TASK)
            config["teacher"] = TINY_TEACHER
        store = config["tracking"].get("uri", "")
        target = tmp_path / store.removeprefix("sqlite:///")  # an absolute path stays itself
        if store.startswith("sqlite:///") and not target.exists():
            shutil.copy(mlflow_store, target)  # the same empty store MLflow would create
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture(scope="session")
def export_dev(data_root, tokenizer):
    """128 labelled SST-2 dev rows, the batches exporters verify on."""
    from autocompress.tasks.data import batches, read_file

    return batches(read_file(data_root / "sst2" / "validation.tsv", "sentence", "label").head(128), tokenizer, batch_size=32, max_length=64)


@pytest.fixture(scope="session")
def probe_head(data_root, tokenizer):
    """A real classification head for the packaged MiniLM: logistic regression on 512 SST-2 training rows' pooled outputs.

    Seconds instead of a fine-tuning run, and logits of a real classifier's scale.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from autocompress.models.loading import load_classifier
    from autocompress.tasks.data import batches, read_file

    torch.manual_seed(0)
    model = load_classifier("default").eval()
    train = batches(read_file(data_root / "sst2" / "train.tsv", "sentence", "label").head(512), tokenizer, batch_size=64, max_length=64)
    with torch.no_grad():
        pooled = torch.cat([model.bert(**{k: v for k, v in b.items() if k != "labels"}).pooler_output for b in train]).numpy()
    labels = torch.cat([b["labels"] for b in train]).numpy()
    fit = LogisticRegression(C=10.0, max_iter=2000).fit(pooled, labels)
    weight = torch.zeros(2, pooled.shape[1])
    weight[1] = torch.from_numpy(fit.coef_[0]).float()
    return {"classifier.weight": weight, "classifier.bias": torch.tensor([0.0, float(fit.intercept_[0])])}


@pytest.fixture()
def probe_model(probe_head):
    """The packaged MiniLM with ``probe_head``: a real (if simple) SST-2 classifier."""
    import torch

    from autocompress.models.loading import load_classifier

    torch.manual_seed(0)
    model = load_classifier("default")
    model.load_state_dict(probe_head, strict=False)
    return model.eval()


@pytest.fixture(scope="session")
def train_vocabulary(data_root, tokenizer):
    """Vocabulary pruning with the token counts of 2,000 SST-2 training rows."""
    from autocompress.tasks.data import read_file, token_counts
    from autocompress.techniques import VocabularyPruning

    train = read_file(data_root / "sst2" / "train.tsv", "sentence", "label").head(2000)
    return VocabularyPruning(token_counts(train, tokenizer, max_length=64), tokenizer.all_special_ids)


@pytest.fixture()
def export_source(probe_model, export_dev, sentence_batches, train_vocabulary):
    """Builds an exporter's ``Source``: a policy applied to the packaged MiniLM (seeded head), checked on 128 dev rows."""
    import torch

    from autocompress.exporters import Source
    from autocompress.models.loading import resolve_model_path
    from autocompress.policy import Policy
    from autocompress.techniques import VocabularyPruning

    def build(policy: dict | Policy) -> Source:
        policy = policy if isinstance(policy, Policy) else Policy.from_dict(policy)
        torch.manual_seed(0)
        tokenizer_dir = Path(resolve_model_path("default"))
        return Source.build(probe_model, policy, dev=export_dev, tokenizer_dir=tokenizer_dir, calibration=sentence_batches[0],
                            prepare=lambda technique: train_vocabulary if technique is VocabularyPruning else technique())

    return build
