"""Tiny random models of every encoder family with an adapter, built from configs (no downloads).

Each shares the packaged MiniLM's BERT tokenizer (vocabulary 30522, pad id 0):
the architecture, not the tokenizer, is under test. 2 blocks, hidden 32,
4 heads of 8, FFN 64; RoBERTa-style position ids need max_length + 2 positions.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import transformers

from autocompress.models.loading import load_tokenizer

SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
COMMON = {"vocab_size": 30522, "max_position_embeddings": 130, "pad_token_id": 0, "num_labels": 2}

FAMILIES: dict[str, transformers.PretrainedConfig] = {
    "bert": transformers.BertConfig(**SHAPE, **COMMON),
    "roberta": transformers.RobertaConfig(**SHAPE, **COMMON, type_vocab_size=2, bos_token_id=2, eos_token_id=3),
    "xlm-roberta": transformers.XLMRobertaConfig(**SHAPE, **COMMON, type_vocab_size=2, bos_token_id=2, eos_token_id=3),
    "electra": transformers.ElectraConfig(**SHAPE, **COMMON, embedding_size=16),
    "distilbert": transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **COMMON),
    "albert": transformers.AlbertConfig(**SHAPE, **COMMON, embedding_size=16),
    "mpnet": transformers.MPNetConfig(**SHAPE, **COMMON),
    "deberta-v2": transformers.DebertaV2Config(
        **SHAPE, **COMMON, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=64
    ),
    "deberta-v3-unshared": transformers.DebertaV2Config(
        **SHAPE, **COMMON, relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=False, norm_rel_ebd="layer_norm"
    ),
}


TINY_TASK = {"train_subset": 64, "dev_size": 32, "test_subset": 32, "max_length": 24}
"""Rows and sequence length a search on a tiny model needs (with ``data_root`` added)."""
TINY_TEACHER = {"steps": 4, "batch_size": 8, "learning_rate": 1e-3}
"""A few steps of fine-tuning: a tiny model's teacher is a stand-in, not a classifier."""


def tiny_model(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = copy.deepcopy(FAMILIES[family])  # shrinking records shapes in the model's config, which from_config shares
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


def save_tiny(family: str, folder: Path, seed: int = 0) -> Path:
    """A model folder a config's ``model:`` can name: random weights plus the MiniLM tokenizer."""
    tiny_model(family, seed).save_pretrained(folder)
    load_tokenizer("default").save_pretrained(folder)
    return folder
