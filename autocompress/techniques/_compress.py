"""Apply a policy to a model: the techniques in order, on a copy."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from autocompress.models.loading import block_linears, encoder_list_name
from autocompress.techniques._base import Technique
from autocompress.techniques._distillation import Recovery
from autocompress.techniques._magnitude import MagnitudePruning
from autocompress.techniques._output import OutputQuantization
from autocompress.techniques._quantization import Quantization
from autocompress.techniques._structured import StructuredPruning
from autocompress.techniques._vocabulary import VocabularyPruning

if TYPE_CHECKING:
    from autocompress.policy import LayerSpec, Policy

TECHNIQUES: tuple[type[Technique], ...] = (StructuredPruning, MagnitudePruning, Quantization, Recovery, VocabularyPruning, OutputQuantization)
"""Every technique a policy has a section for, in the order the search samples their decisions.

A new technique is registered by appending it here: appending keeps the order
in which existing studies' samplers draw, so a resumed search proposes what it
proposed before.
"""


def float_techniques(
    policy: Policy, *, prepare: Callable[[type[Technique]], Technique] | None = None, recovery: Technique | None = None
) -> tuple[Technique, ...]:
    """The techniques ``policy`` asks for that run before quantization, in stage order.

    ``prepare`` builds the ones that need the task's data (``needs_data``;
    a search calls ``for_task`` once and reuses it); ``recovery`` is the
    distillation a trial runs (it holds the teacher, the rows and the pruner's
    callback), put where distillation's stage is.
    """
    chosen = []
    for technique in sorted(TECHNIQUES, key=lambda technique: technique.stage):
        if technique is Quantization or not technique.active(policy):
            continue
        if technique is Recovery:
            chosen += [recovery] if recovery is not None else []
        elif technique.needs_data:
            if prepare is None:
                raise ValueError(f"the policy asks for {technique.name}, which needs the task's data: pass prepare=")
            chosen.append(prepare(technique))
        else:
            chosen.append(technique())
    return tuple(chosen)


DEFAULT_TECHNIQUES: tuple[Technique, ...] = tuple(
    technique() for technique in sorted(TECHNIQUES, key=lambda technique: technique.stage) if not technique.needs_data
)
"""The techniques that need no data, in stage order: shrink first (new matrices), then zero weights, then quantize."""


def layer_plan(model: PreTrainedModel, policy: Policy) -> dict[str, LayerSpec]:
    """Current Linear names mapped to the policy's spec for their *original* names.

    After whole blocks are removed, block ``j`` of the model is block
    ``policy.kept_blocks[j]`` of the original, and keeps that block's spec.
    """
    prefix = encoder_list_name(model)
    blocks = block_linears(model)
    kept = policy.kept_blocks if policy.kept_blocks is not None and len(policy.kept_blocks) == len(blocks) else range(len(blocks))
    plan = {}
    for current, original in zip(range(len(blocks)), kept):
        for name in blocks[current]:
            original_name = name.replace(f"{prefix}.{current}.", f"{prefix}.{original}.", 1)
            plan[name] = policy.spec_for(original_name)
    return plan


def compress(
    model: PreTrainedModel,
    policy: Policy,
    *,
    techniques: Sequence[Technique] | None = None,
    prepare: Callable[[type[Technique]], Technique] | None = None,
    calibration: Mapping[str, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """Return a compressed copy of ``model``; the original is untouched.

    ``techniques`` default: every technique ``policy`` asks for, in stage
    order, then quantization; one that needs the task's data (vocabulary
    pruning) is built by ``prepare`` (``technique.for_task(config, tokenizer)``)
    and refused with a one-line error without it. Recovery needs a teacher and
    rows: pass it in ``techniques``.
    """
    if techniques is None:
        techniques = (*float_techniques(policy, prepare=prepare), Quantization())
    compressed = copy.deepcopy(model)
    for technique in techniques:
        technique.apply(compressed, policy, layer_plan(compressed, policy), calibration=calibration)
    return compressed.eval()
