"""The task's metrics of a torch model on tokenized batches that carry their targets, read through the task's head."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from autocompress.tasks.heads import Head, Logits


def accuracy(model: PreTrainedModel, batches: list[Mapping[str, torch.Tensor]]) -> float:
    """A classifier's accuracy on labelled batches."""
    return model_scores(model, batches)["accuracy"]


def model_scores(model: PreTrainedModel, batches: list[Mapping[str, torch.Tensor]], *, head: Head | None = None) -> dict[str, float]:
    """Every metric of ``head`` (default: a classifier's logits, accuracy and its F1) for ``model`` on ``batches``."""
    return (head or Logits("accuracy")).evaluate(model, batches)
