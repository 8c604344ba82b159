"""Sentence embeddings: compress a sentence-transformers model (all-MiniLM-L6-v2) to agree with its own embeddings.

The teacher is the model as it is, with the pooling and normalization its
folder declares (``models.pooling``: ``modules.json`` and the Pooling config;
mean pooling without normalization, said so, when it has none); nothing is
fine-tuned. Data is unlabelled texts (``tasks.texts``); each batch carries the
teacher's embedding of its rows (cached on disk like distillation targets),
so the metrics (``tasks.embedding_metrics``: mean cosine to the teacher,
neighbour recall@10 among the split, Spearman of pairwise similarities) need
no labels. Students distil the teacher's embeddings; the ONNX graph pools and
normalizes inside and returns ``sentence_embedding``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel

from autocompress.config import ConfigError
from autocompress.distill import cached_teacher_logits
from autocompress.models.loading import load_encoder, resolve_model_path
from autocompress.models.pooling import Pooling, read_pooling
from autocompress.tasks import data
from autocompress.tasks.base import Task
from autocompress.tasks.heads import EMBEDDING_TARGET, Head, SentenceEmbedding
from autocompress.tasks.teacher import Teacher, TeacherLocation, model_digest
from autocompress.tasks.texts import Texts, load_split_texts

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from autocompress.tasks.data import Examples


@dataclass(frozen=True)
class EmbeddingTeacher(Teacher):
    """The model as it is: its encoder without any head (nor the pooler it never uses)."""

    def load(self) -> PreTrainedModel:
        return load_encoder(str(self.path))


class SentenceEmbeddingTask(Task):
    """One text per row, embedded by the teacher; a student must place each text where the teacher does."""

    name = "embedding"

    def load_split(self, split: str) -> Texts:
        return load_split_texts(self.config, split)

    def batches(self, examples: Examples, tokenizer: Any, *, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Tokenized batches, each with the teacher's embedding of its rows (``teacher_embedding``); then those of the
        split's labelled sets (``tasks.evaluation_sets``), their rows marked, when it has any."""
        max_length = self.config.task.max_length
        plain = data.batches(examples, tokenizer, batch_size=batch_size, max_length=max_length)
        if isinstance(examples, Texts) and examples.evaluation:
            plain += examples.evaluation.batches(tokenizer, batch_size=batch_size, max_length=max_length)
        if not plain:
            return plain
        targets = cached_teacher_logits(self._teacher_model, plain, teacher_key=self.teacher().key, head=self.head())
        return [{**batch, EMBEDDING_TARGET: target} for batch, target in zip(plain, targets)]

    def teacher(self) -> Teacher:
        where = self.locate_teacher()
        return EmbeddingTeacher(path=where.path, key=where.key, trained_now=False)

    def locate_teacher(self) -> TeacherLocation:
        return TeacherLocation(self._key, Path(resolve_model_path(self.config.model)), ready=True, as_is=True)

    def head(self) -> Head:
        return SentenceEmbedding(self.metric, self.pooling)

    @cached_property
    def pooling(self) -> Pooling:
        """What the model's sentence-transformers files declare; a one-line ``ConfigError`` for what the engine cannot reproduce."""
        try:
            return read_pooling(resolve_model_path(self.config.model))
        except ValueError as error:
            raise ConfigError(f"{self.config.source}: field 'model': {error}") from None

    def check(self, model: PretrainedConfig) -> str:
        if self.config.teacher.checkpoint:
            raise ConfigError(f"{self.config.source}: field 'teacher.checkpoint': an embedding task's teacher is the model as it is; "
                              "leave teacher.checkpoint null and name the model in 'model'")
        task = self.config.task
        labelled = [f"{name} on {', '.join(split for split in ('dev', 'test') if getattr(files, split))}"
                    for name, files in (("labelled pairs", task.pairs), ("retrieval", task.retrieval)) if files]
        scored = f"; scored beside: {'; '.join(labelled)}" if labelled else ""
        return f"task: sentence embeddings of one text per row ({task.text_column}), {self.pooling.describe()}{scored}"

    def export_metadata(self, teacher: Teacher) -> dict[str, Any]:
        return {}

    @property
    def _key(self) -> str:
        return teacher_key(self.config.model, self.pooling)

    @property
    def _teacher_model(self) -> PreTrainedModel:
        return _loaded(str(self.teacher().path))


@functools.lru_cache(maxsize=4)
def teacher_key(model: str, pooling: Pooling) -> str:
    """The teacher's identity, hashed once per process (the search, its exports and vocabulary each build the task anew):
    its files (or hub id) and the pooling; the key its cached embeddings are stored under."""
    digest = model_digest(model, "embedding")
    digest.update(json.dumps({"mode": pooling.mode, "normalize": pooling.normalize}).encode())
    return f"embedding-{digest.hexdigest()[:16]}"


@functools.lru_cache(maxsize=2)
def _loaded(path: str) -> PreTrainedModel:
    """The teacher that embeds the batches' targets, loaded once per process; only ever run in eval mode, never trained."""
    return load_encoder(path)
