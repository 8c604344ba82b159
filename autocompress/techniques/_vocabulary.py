"""The vocabulary-pruning technique: word-embedding rows of tokens the task does not use, removed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedModel

from autocompress.models.shrunk import VOCAB_ATTR, RemappedEmbedding
from autocompress.techniques._base import Technique

if TYPE_CHECKING:
    import optuna
    from transformers import PretrainedConfig

    from autocompress.config import SearchConfig, SpaceConfig
    from autocompress.policy import LayerSpec, Policy


class VocabularyPruning(Technique):
    """Keep the policy's ``vocab_rows``: the special tokens, then the tokens the task's training text uses most.

    The word embedding is the largest single matrix of a small encoder
    (MiniLM: 30,522 x 384, 6 MB at 4 bits, half of a 4-block student's file),
    and a task uses a fraction of it: SST-2's training text produces 11,572
    distinct ids. Every dropped id reads its nearest kept row, so the tokenizer
    ships unchanged.
    """

    name = "vocabulary_pruning"
    stage = 20
    needs_data = True
    fields = {
        "vocab_rows": {"type": ["integer", "null"], "minimum": 1, "default": None,
                       "description": "word-embedding rows kept: special tokens and the tokens the task's training text uses most; "
                       "every other token id reads its nearest kept row (cosine); null keeps all"},
    }

    @classmethod
    def sample(cls, trial: optuna.Trial, space: SpaceConfig, *, num_blocks: int) -> dict[str, Any]:
        return {"vocab_rows": trial.suggest_categorical("vocab_rows", space.vocab_rows)}

    @classmethod
    def refuse_space(cls, space: SpaceConfig, model_config: PretrainedConfig) -> tuple[str, str] | None:
        vocab = model_config.vocab_size
        too_many = [rows for rows in space.vocab_rows if rows is not None and not 1 <= rows < vocab]
        if too_many:
            return "vocab_rows", f"{too_many[0]} is not allowed; the model has {vocab} embedding rows, allowed 1..{vocab - 1} or null"
        return None

    def __init__(self, counts: torch.Tensor, always: Sequence[int]) -> None:
        self.counts = counts
        self.always = list(always)

    @classmethod
    def for_task(cls, config: SearchConfig, tokenizer: Any) -> VocabularyPruning:
        """Counts from ``config``'s training split as the model sees it (tokenized, truncated); the tokenizer's special ids."""
        from autocompress.tasks.data import token_counts
        from autocompress.tasks.registry import task_for

        train = task_for(config).load_split("train")
        return cls(token_counts(train, tokenizer, max_length=config.task.max_length), tokenizer.all_special_ids)

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


def prune_vocabulary_(model: PreTrainedModel, rows: int, *, counts: torch.Tensor, always: Sequence[int]) -> None:
    """Keep ``rows`` word-embedding rows: the ``always`` ids, then the most counted; map every other id to its nearest.

    ``counts`` holds how often the task's training text produces each token
    id. Nearest is by cosine similarity of the rows as they are now, so a
    token the task never produced reads a row that means something like it,
    not ``[UNK]``'s.
    """
    embedding = model.get_input_embeddings()
    if isinstance(embedding, RemappedEmbedding):
        raise ValueError("the vocabulary is already pruned")
    vocab, dim = embedding.weight.shape
    always = sorted(set(always))
    if not len(always) < rows < vocab:
        raise ValueError(f"vocab_rows={rows}: keep more than the {len(always)} special tokens and fewer than the {vocab} rows there are")
    if counts.dim() != 1 or len(counts) > vocab:
        raise ValueError(f"token counts cover {tuple(counts.shape)} ids; the embedding has {vocab} rows")
    counts = nn.functional.pad(counts, (0, vocab - len(counts)))  # rows past the tokenizer's ids: never produced
    special = set(always)
    ranked = [i for i in torch.argsort(-counts.long(), stable=True).tolist() if i not in special]  # ties: lower id first
    keep = torch.tensor(sorted(always + ranked[: rows - len(always)]))
    weight = embedding.weight.detach()
    remap = torch.full((vocab,), -1, dtype=torch.int32)
    remap[keep] = torch.arange(rows, dtype=torch.int32)
    kept = nn.functional.normalize(weight[keep], dim=1)
    for chunk in (remap < 0).nonzero().flatten().split(4096):
        remap[chunk] = (nn.functional.normalize(weight[chunk], dim=1) @ kept.T).argmax(1).int()
    padding = embedding.padding_idx
    smaller = RemappedEmbedding(vocab, rows, dim, padding_idx=int(remap[padding]) if padding in special else None)
    smaller.to(weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(weight[keep])
        smaller.remap.copy_(remap)
    model.set_input_embeddings(smaller)
    setattr(model.config, VOCAB_ATTR, rows)
