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
