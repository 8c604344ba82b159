"""Causal language modeling: text cut into fixed windows, perplexity, KL to the teacher and greedy agreement.

Perplexity is ``exp`` of the mean next-token negative log-likelihood over
windows of ``context`` tokens taken every ``stride`` tokens of the whole
tokenized text; a window scores only its tokens not already scored by the
window before and that has a token of context inside it (the sliding-window
evaluation of Hugging Face's perplexity guide): with ``stride == context``
windows are disjoint and each one's first token goes unscored. The numbers depend
on both and are always reported with them. KL(teacher ‖ candidate) is averaged
over the same scored tokens; greedy agreement is the share of ``new_tokens``
greedy continuations of fixed prompts that match the teacher's token for token
up to the first difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Window:
    """``input_ids`` of one window and how many of its last tokens it scores."""

    input_ids: torch.Tensor  # int64 [1, length]
    scored: int


def read_text(path: str | Path) -> str:
    """A plain-text file as one string (WikiText's own line structure kept)."""
    return Path(path).read_text(encoding="utf-8")


def text_windows(tokenizer, text: str, *, context: int, stride: int, max_windows: int | None = None) -> list[Window]:
    """Windows of ``context`` tokens every ``stride`` tokens of ``text``; ``max_windows`` keeps the first ones."""
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    windows, scored_until = [], 0
    for start in range(0, max(1, len(ids) - 1), stride):
        end = min(start + context, len(ids))
        windows.append(Window(ids[start:end].unsqueeze(0), min(end - scored_until, end - start - 1)))  # a window's first token has no context
        scored_until = end
        if end == len(ids) or (max_windows and len(windows) == max_windows):
            break
    return windows


Logits = Callable[[torch.Tensor], np.ndarray]
"""A model as a function of ``input_ids`` [1, n] to its float logits [n, vocab]."""


def torch_logits(model: torch.nn.Module) -> Logits:
    @torch.no_grad()
    def logits(input_ids: torch.Tensor) -> np.ndarray:
        model.eval()
        return model(input_ids=input_ids).logits[0].float().numpy()
    return logits


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _scored_log_probs(logits: Logits, window: Window) -> np.ndarray:
    """Log-probabilities [scored, vocab] of the window's scored next tokens."""
    return _log_softmax(logits(window.input_ids)[-window.scored - 1:-1].astype(np.float32))


def reference_log_probs(teacher: Logits, windows: Sequence[Window]) -> list[np.ndarray]:
    """The teacher's log-probabilities of every window's scored tokens, computed once for every candidate compared with it
    (float16: 2 bytes per vocabulary entry and token, 50 MB per 512-token window of a 49k vocabulary)."""
    return [_scored_log_probs(teacher, window).astype(np.float16) for window in windows]


def perplexity(logits: Logits, windows: Sequence[Window]) -> float:
    """``exp`` of the mean negative log-likelihood of every scored token."""
    total, count = 0.0, 0
    for window in windows:
        targets = window.input_ids[0, -window.scored:].numpy()
        log_probs = _scored_log_probs(logits, window)
        total -= float(log_probs[np.arange(len(targets)), targets].astype(np.float64).sum())
        count += len(targets)
    return math.exp(total / count)


def language_scores(candidate: Logits, teacher: Sequence[np.ndarray], windows: Sequence[Window]) -> dict[str, float]:
    """Perplexity and mean per-token KL(teacher ‖ candidate) over the windows' scored tokens (``teacher``: ``reference_log_probs``)."""
    nll, kl, count = 0.0, 0.0, 0
    for window, theirs in zip(windows, teacher, strict=True):
        targets = window.input_ids[0, -window.scored:].numpy()
        mine, theirs = _scored_log_probs(candidate, window), theirs.astype(np.float32)
        nll -= float(mine[np.arange(len(targets)), targets].astype(np.float64).sum())
        kl += float((np.exp(theirs) * (theirs - mine)).sum(dtype=np.float64))
        count += len(targets)
    return {"perplexity": math.exp(nll / count), "kl_to_teacher": kl / count}


def greedy_agreement(candidate: Logits, teacher: Logits, prompts: Sequence[torch.Tensor], *, new_tokens: int) -> float:
    """Share of the teacher's greedy tokens the candidate repeats before it first differs, over ``prompts``."""
    agreed = 0
    for prompt in prompts:
        ids = prompt
        for _ in range(new_tokens):
            mine, theirs = int(candidate(ids)[-1].argmax()), int(teacher(ids)[-1].argmax())
            if mine != theirs:
                break
            agreed += 1
            ids = torch.cat([ids, torch.tensor([[mine]])], dim=1)
    return agreed / (new_tokens * len(prompts))
