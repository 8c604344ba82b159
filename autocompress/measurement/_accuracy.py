"""Accuracy and the task's other metrics of a torch classifier on tokenized, labelled batches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from transformers import PreTrainedModel

from autocompress.tasks.metrics import classification_scores


@torch.inference_mode()
def predict(model: PreTrainedModel, batches: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Argmax predictions over all batches, in order."""
    model.eval()
    inputs = [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]
    return torch.cat([model(**batch).logits.argmax(-1) for batch in inputs])


def accuracy(model: PreTrainedModel, batches: list[Mapping[str, torch.Tensor]]) -> float:
    return model_scores(model, batches)["accuracy"]


def model_scores(model: PreTrainedModel, batches: list[Mapping[str, torch.Tensor]], *, metric: str = "accuracy") -> dict[str, float]:
    """``classification_scores`` of ``model`` on ``batches``; its head's ``num_labels`` decides which F1 the task has."""
    labels = torch.cat([batch["labels"] for batch in batches])
    return classification_scores(predict(model, batches).numpy(), labels.numpy(), num_labels=model.config.num_labels, metric=metric)
