"""Sequence classification: a label per text or per pair of texts (SST-2, MRPC, MNLI, a user's topics).

The teacher is the model with a classification head, fine-tuned on ``train``
(``tasks.teacher``); its head (``heads.Logits``) reads the ``logits``, scores
accuracy and the task's F1 (``tasks.metrics``) and distils with Hinton's KD;
exporters write the label names as the config's ``id2label``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from autocompress.config import ConfigError
from autocompress.tasks import data
from autocompress.tasks.base import Task
from autocompress.tasks.heads import Head, Logits
from autocompress.tasks.metrics import check_metric
from autocompress.tasks.teacher import Teacher, TeacherLocation, get_teacher, locate_teacher

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from autocompress.tasks.data import Examples, TaskLabels


class SequenceClassification(Task):
    """Texts or text pairs, each with one of ``num_labels`` classes."""

    name = "sequence-classification"

    def load_split(self, split: str) -> Examples:
        return data.load_split(self.config, split)

    def batches(self, examples: Examples, tokenizer: Any, *, batch_size: int) -> list[dict[str, torch.Tensor]]:
        return data.batches(examples, tokenizer, batch_size=batch_size, max_length=self.config.task.max_length)

    def teacher(self) -> Teacher:
        return get_teacher(self.config)

    def locate_teacher(self) -> TeacherLocation:
        return locate_teacher(self.config)

    def head(self) -> Head:
        return Logits(self.metric)

    def check(self, model: PretrainedConfig) -> str:
        """The labels agree with a given checkpoint's head, and ``task.metric`` exists for their count."""
        config, labels = self.config, data.task_labels(self.config)
        if config.teacher.checkpoint:
            check_checkpoint_labels(config.source, config.teacher.checkpoint, model, labels)
        try:
            check_metric(self.metric, labels.num_labels)
        except ValueError as error:
            raise ConfigError(f"{config.source}: field 'task.metric': {error}") from None
        task = config.task
        texts = f"sentence pairs ({task.text_column} + {task.text_pair_column})" if task.text_pair_column else f"one text per row ({task.text_column})"
        return f"task: {texts}, {labels.num_labels} labels in id order: {', '.join(labels.names)} ({labels.origin})"

    def export_metadata(self, teacher: Teacher) -> dict[str, Any]:
        config = teacher.load_config()
        return {"id2label": {int(k): v for k, v in config.id2label.items()}, "label2id": dict(config.label2id)}


def check_checkpoint_labels(source: str, checkpoint: str, shape: PretrainedConfig, labels: TaskLabels) -> None:
    """Refuse a fine-tuned checkpoint whose head has another size or, when both name their classes in words, another order."""
    where = f"{source}: field 'teacher.checkpoint': {checkpoint!r}"
    if shape.num_labels != labels.num_labels:
        raise ConfigError(f"{where} has a {shape.num_labels}-label head, the task has task.num_labels={labels.num_labels} "
                          f"({', '.join(labels.names)})")
    theirs = tuple(str(shape.id2label[i]) for i in range(shape.num_labels))
    named = not all(re.fullmatch(r"LABEL_\d+", name) for name in theirs)  # transformers' placeholder names say nothing
    if labels.words and named and theirs != labels.names:
        raise ConfigError(f"{where} has id2label [{', '.join(theirs)}], the task has [{', '.join(labels.names)}] ({labels.origin}); "
                          "set task.labels to the checkpoint's names in its order")
