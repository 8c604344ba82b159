"""Perplexity windows, KL to the teacher and greedy agreement, on logits whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autocompress.tasks.language_modeling import (
    Window,
    greedy_agreement,
    language_scores,
    perplexity,
    reference_log_probs,
    text_windows,
)


class Digits:
    """A tokenizer of one token per character (digits 0-9)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(c) for c in text]}


def uniform(input_ids: torch.Tensor) -> np.ndarray:
    return np.zeros((input_ids.shape[1], 10), dtype=np.float32)


def copies_last_token(input_ids: torch.Tensor) -> np.ndarray:
    """Puts probability e^5/(e^5+9) on the next token equalling the current one."""
    logits = np.zeros((input_ids.shape[1], 10), dtype=np.float32)
    logits[np.arange(input_ids.shape[1]), input_ids[0].numpy()] = 5.0
    return logits


@pytest.mark.parametrize(("context", "stride"), [(8, 8), (8, 3), (5, 1)])
def test_every_token_after_the_first_is_scored_exactly_once_with_context_inside_its_window(context, stride):
    text = "31415926535897932384"
    windows = text_windows(Digits(), text, context=context, stride=stride)
    assert all(0 < w.scored < w.input_ids.shape[1] <= context for w in windows)
    scored = "".join("".join(map(str, w.input_ids[0, -w.scored:].tolist())) for w in windows)
    unscored = set(range(0, len(text), context)) if stride == context else {0}  # disjoint windows: each one's first token
    assert scored == "".join(c for i, c in enumerate(text) if i not in unscored)
    with pytest.raises(ValueError, match="stride must be in 1..context"):
        text_windows(Digits(), text, context=4, stride=5)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_and_kl_of_a_model_to_itself_is_zero():
    windows = text_windows(Digits(), "2718281828459045", context=6, stride=2)
    assert perplexity(uniform, windows) == pytest.approx(10.0)
    scores = language_scores(copies_last_token, reference_log_probs(copies_last_token, windows), windows)
    assert scores["kl_to_teacher"] == pytest.approx(0.0, abs=1e-4)  # the reference is kept in float16
    repeated = [Window(torch.tensor([[7] * 6]), 5)]  # each next token equals the last: the copier's confident guess
    p = math.exp(5) / (math.exp(5) + 9)
    assert perplexity(copies_last_token, repeated) == pytest.approx(1 / p)
    assert language_scores(uniform, reference_log_probs(copies_last_token, repeated), repeated)["kl_to_teacher"] == pytest.approx(
        p * math.log(p * 10) + (1 - p) * math.log((1 - p) / 9 * 10), rel=1e-4)


def test_greedy_agreement_counts_the_teachers_tokens_repeated_before_the_first_difference():
    def shifted(after: int):
        def logits(input_ids):
            out = copies_last_token(input_ids)
            if input_ids.shape[1] > after:  # from then on it guesses another token
                out[-1] = np.roll(out[-1], 1)
            return out
        return logits

    prompts = [torch.tensor([[4, 4]]), torch.tensor([[1, 2, 3]])]
    assert greedy_agreement(copies_last_token, copies_last_token, prompts, new_tokens=4) == 1.0
    assert greedy_agreement(shifted(3), copies_last_token, prompts, new_tokens=4) == pytest.approx((2 + 1) / 8)  # it differs once a prompt is longer than 3
