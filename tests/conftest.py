"""Shared fixtures: the real packaged model and real SST-2 sentences, loaded once."""

from __future__ import annotations

import os
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
    from autocompress.models import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture()
def model():
    """A fresh all-MiniLM-L6-v2 with a (seeded) classification head."""
    import torch

    from autocompress.models import load_classifier

    torch.manual_seed(0)
    return load_classifier("default")


@pytest.fixture(scope="session")
def sentences(data_root):
    from autocompress.data import read_file

    return read_file(data_root / "sst2" / "validation.tsv", "sentence", "label").head(48)


@pytest.fixture(scope="session")
def sentence_batches(sentences, tokenizer):
    from autocompress.data import batches

    return batches(sentences, tokenizer, batch_size=16, max_length=64)


@pytest.fixture()
def tiny(tmp_path, data_root, monkeypatch):
    """Writes the YAML of a search with tiny budgets on the real model and data; runs in ``tmp_path`` with its own cache."""
    import yaml

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def write(name: str = "tiny", *, tracking: dict | None = None, output: str | None = None, **search) -> Path:
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
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write
