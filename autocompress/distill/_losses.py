"""Distillation losses: soft-label KD, embedding distillation, hidden-state transfer and attention transfer.

Hidden states and attentions are per encoder block, indexed by block (no
embedding output), and a ``layer_map`` sends student block ``i`` to teacher
block ``layer_map[i]``. Student and teacher share the hidden size (a student is
the teacher shrunk in place), so hidden states are compared without a
projection.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Hinton et al.'s ``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels)``.

    The seed document writes the soft term loosely as a sum of log-softmaxes;
    this is the standard form: KL divergence between temperature-softened
    distributions, averaged over the batch, scaled by ``T^2`` so its gradient
    keeps the same magnitude as the temperature changes.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is not allowed; it must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} is not allowed; it must lie in [0, 1]")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} differ in shape"
        )
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers' distillation loss (MSE to the teacher's embedding, summed over dimensions) plus the cosine distance.

    For normalized embeddings the two are proportional (``|s - t|^2 = 2 (1 - cos)``);
    for unnormalized ones MSE also matches the length, which dot-product search reads.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} differ in shape")
    target = teacher.detach()
    squared = (student - target).pow(2).sum(-1).mean()
    return squared + (1.0 - F.cosine_similarity(student, target, dim=-1)).mean()


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Mapping[int, int],
    *,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between mapped block outputs ``[batch, seq, hidden]``, averaged over the pairs.

    With ``attention_mask`` only real tokens count: padding carries no signal.
    """
    _check_map(layer_map, len(student_hidden), len(teacher_hidden))
    losses = []
    for s, t in layer_map.items():
        student, teacher = student_hidden[s], teacher_hidden[t].detach()
        if student.shape != teacher.shape:
            raise ValueError(
                f"student block {s} output {tuple(student.shape)} and teacher block {t} output "
                f"{tuple(teacher.shape)} differ in shape"
            )
        squared = (student - teacher).pow(2).mean(-1)
        losses.append(_masked_mean(squared, attention_mask))
    return torch.stack(losses).mean()


def attention_loss(
    student_attn: Sequence[torch.Tensor | None],
    teacher_attn: Sequence[torch.Tensor | None],
    layer_map: Mapping[int, int],
    *,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher || student) between mapped head-averaged attention distributions.

    Attentions are ``[batch, heads, query, key]`` probabilities. A shrunk student
    may keep fewer heads than its teacher, and which head matches which is
    undefined, so both sides are averaged over heads first (still a distribution
    per query) and compared per query, TinyBERT/MiniLM style but head-agnostic.
    A block with no heads left has no attention (``None``); its pairs are
    skipped. With ``attention_mask`` padded query rows are left out.
    """
    _check_map(layer_map, len(student_attn), len(teacher_attn))
    losses = []
    for s, t in layer_map.items():
        student, teacher = student_attn[s], teacher_attn[t]
        if student is None or teacher is None:
            continue
        p_student, p_teacher = student.mean(1), teacher.detach().mean(1)
        if p_student.shape != p_teacher.shape:
            raise ValueError(
                f"student block {s} attention {tuple(student.shape)} and teacher block {t} attention "
                f"{tuple(teacher.shape)} cover different tokens"
            )
        # xlogy gives 0 where the teacher puts no mass (padded keys); the clamp keeps log finite there.
        kl = (torch.xlogy(p_teacher, p_teacher) - p_teacher * p_student.clamp_min(1e-12).log()).sum(-1)
        losses.append(_masked_mean(kl, attention_mask))
    if not losses:
        return torch.zeros(())  # a 0-dim tensor adds to a loss on any device
    return torch.stack(losses).mean()


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student block ``i`` -> teacher block ``floor((i + 1) * T / S) - 1``: evenly spaced, last to last (TinyBERT)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"student_layers={student_layers!r} is not allowed with teacher_layers={teacher_layers!r}; "
            "allowed: 1..teacher_layers"
        )
    return {i: (i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)}


def kept_layer_map(kept: Sequence[int]) -> dict[int, int]:
    """Student block ``i`` -> the teacher block it was copied from, for a student that kept blocks ``kept``."""
    kept = list(kept)
    if not kept or any(not _is_index(k) or k < 0 for k in kept) or any(a >= b for a, b in zip(kept, kept[1:])):
        raise ValueError(f"kept={kept!r} is not allowed; it must be strictly increasing block indices >= 0")
    return {i: int(k) for i, k in enumerate(kept)}


def _check_map(layer_map: Mapping[int, int], student_layers: int, teacher_layers: int) -> None:
    if not layer_map:
        raise ValueError("layer_map is empty; map at least one student block to a teacher block")
    for s, t in layer_map.items():
        if not 0 <= s < student_layers or not 0 <= t < teacher_layers:
            raise ValueError(
                f"layer_map entry {s}->{t} is out of range; allowed student 0..{student_layers - 1}, "
                f"teacher 0..{teacher_layers - 1}"
            )


def _masked_mean(values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``[batch, seq]`` values over the positions the mask marks as real tokens."""
    if attention_mask is None:
        return values.mean()
    mask = attention_mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _is_index(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
