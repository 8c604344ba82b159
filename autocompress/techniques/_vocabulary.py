"""The vocabulary-pruning technique: word-embedding rows of tokens the task does not use, removed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from autocompress.policy import LayerSpec, Policy
from autocompress.shrunk import prune_vocabulary_
from autocompress.techniques._base import Technique


class VocabularyPruning(Technique):
    """Keep the policy's ``vocab_rows``: the special tokens, then the tokens the task's training text uses most.

    The word embedding is the largest single matrix of a small encoder
    (MiniLM: 30,522 x 384, 6 MB at 4 bits, half of a 4-block student's file),
    and a task uses a fraction of it: SST-2's training text produces 11,572
    distinct ids. Every dropped id reads its nearest kept row, so the tokenizer
    ships unchanged.
    """

    name = "vocabulary_pruning"

    def __init__(self, counts: torch.Tensor, always: Sequence[int]) -> None:
        self.counts = counts
        self.always = list(always)

    @classmethod
    def for_task(cls, config: Any, tokenizer: Any) -> VocabularyPruning:
        """Counts from ``config``'s training split as the model sees it (tokenized, truncated); the tokenizer's special ids."""
        from autocompress.data import load_split, token_counts

        return cls(token_counts(load_split(config, "train"), tokenizer, max_length=config.task.max_length), tokenizer.all_special_ids)

    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if policy.vocab_rows is not None:
            prune_vocabulary_(model, policy.vocab_rows, counts=self.counts, always=self.always)
