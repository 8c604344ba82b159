"""What every config section shares: strict models, the one-line error, the names other layers reuse."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

DATA_ROOT_ENV = "AUTOCOMPRESS_DATA_ROOT"
STORAGE_ENV = "AUTOCOMPRESS_STORAGE"
"""Holds the Optuna storage URL: it overrides a config file's ``search.storage`` (``--storage`` overrides both), which then
reads ``env:AUTOCOMPRESS_STORAGE`` so that nothing copies the URL (``autocompress.credentials``)."""
RENAMED_FIELDS = {
    "task.validation": "test",
    "task.validation_subset": "test_subset",
    "task.hf_validation_split": "hf_test_split",
}
"""Old dotted field path -> its name now (same section): the test split was called validation before dev was split off."""
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
"""The JSON Schemas shipped in the package."""
POLICY_SCHEMA = SCHEMAS / "policy-v2.schema.json"
"""The current policy format, assembled from the techniques; the ``space`` section offers their settings from it."""
DEPLOYABLE_BITS = (2, 4, 8, 16, 32)
OutputPrecision = Literal["float32", "int8", "binary"]
"""How a search index stores an embedding model's outputs (sentence-transformers' ``quantize_embeddings`` precisions)."""
OUTPUT_PRECISIONS: tuple[str, ...] = get_args(OutputPrecision)
TaskType = Literal["sequence-classification", "embedding", "causal-lm"]
"""The tasks ``autocompress.tasks.TASKS`` implements (a test keeps the two lists equal)."""
MetricName = Literal["accuracy", "f1", "macro_f1", "cosine", "recall_at_10", "spearman", "gold_spearman", "ndcg_at_10", "recall_at_100",
                     "perplexity", "kl_to_teacher"]
"""The task metrics a search can optimize: a classifier's (``autocompress.tasks.metrics``), an embedding model's
agreement with its teacher and, with labelled pairs or retrieval files, with their labels (``autocompress.tasks.embedding_metrics``),
a language model's perplexity and its KL divergence from the teacher (``autocompress.tasks.language_modeling``)."""
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sequence-classification": ("accuracy", "f1", "macro_f1"),
    "embedding": ("cosine", "recall_at_10", "spearman", "gold_spearman", "ndcg_at_10", "recall_at_100"),
    "causal-lm": ("perplexity", "kl_to_teacher"),
}
"""The metrics each task type may record and optimize (``task.metric``); an embedding task records the last three only
with the files they need (``task.pairs``, ``task.retrieval``)."""
MINIMIZED_METRICS = frozenset({"perplexity", "kl_to_teacher"})
"""Metrics where lower is better: the study minimizes them; every other metric is maximized."""
LABELLED_METRICS: dict[str, str] = {"gold_spearman": "pairs", "ndcg_at_10": "retrieval", "recall_at_100": "retrieval"}
"""Embedding metrics scored on labelled files, and the ``task`` section that names those files."""


class ConfigError(ValueError):
    """A configuration file is missing, malformed or invalid; the message is one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
