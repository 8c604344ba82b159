"""Sequence classification: a label per text or per pair of texts (SST-2, MRPC, MNLI, a user's topics).

The teacher is the model with a classification head, fine-tuned on ``train``
(``tasks.teacher``); metrics are accuracy and the task's F1
(``tasks.metrics``); the ONNX graph returns ``logits``; exporters write the
label names as the config's ``id2label``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.tasks import data, metrics
from autocompress.tasks.base import Task
from autocompress.tasks.teacher import Teacher, get_teacher

if TYPE_CHECKING:
    import torch

    from autocompress.tasks.data import Examples


class SequenceClassification(Task):
    """Texts or text pairs, each with one of ``num_labels`` classes."""

    name = "sequence-classification"
    output_names = ("logits",)
    target_names = ("labels",)

    def load_split(self, split: str) -> Examples:
        return data.load_split(self.config, split)

    def batches(self, examples: Examples, tokenizer: Any, *, batch_size: int) -> list[dict[str, torch.Tensor]]:
        return data.batches(examples, tokenizer, batch_size=batch_size, max_length=self.config.task.max_length)

    def teacher(self) -> Teacher:
        return get_teacher(self.config)

    def metric_names(self, teacher: Teacher) -> tuple[str, ...]:
        return metrics.task_metrics(teacher.load_config().num_labels, self.metric)

    def scores(self, outputs: np.ndarray, targets: np.ndarray, *, teacher: Teacher) -> dict[str, float]:
        predictions = np.asarray(outputs).argmax(-1)
        return metrics.classification_scores(predictions, targets, num_labels=teacher.load_config().num_labels, metric=self.metric)

    def latency_inputs(self, examples: Examples, tokenizer: Any, *, count: int) -> list[dict[str, torch.Tensor]]:
        from autocompress.measurement import latency_inputs, pick_sentences

        sentences = pick_sentences(examples.inputs(), n=min(count, len(examples)))  # (text, pair) tuples for a pair task
        return latency_inputs(tokenizer, sentences, max_length=self.config.task.max_length)

    def export_metadata(self, teacher: Teacher) -> dict[str, Any]:
        config = teacher.load_config()
        return {"id2label": {int(k): v for k, v in config.id2label.items()}, "label2id": dict(config.label2id)}
