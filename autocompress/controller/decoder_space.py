"""What a causal-lm trial samples: a ``DecoderPolicy`` from the ``decoder`` section, and the checks on that section a
preflight makes from the model's config alone.

Widths are sampled per block (or once for all blocks), or, with ``decoder.average_bits``, allocated under one sampled
target from each group's KL to the teacher (``techniques.decoder_sensitivity``), which ``measure_sensitivities``
measures once per study and the study stores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from transformers import PretrainedConfig, PreTrainedModel

from autocompress.config import ConfigError, SearchConfig
from autocompress.tasks.language_modeling import Window
from autocompress.techniques.decoder_policy import DecoderPolicy
from autocompress.techniques.decoder_sensitivity import (
    HEAD,
    Sensitivity,
    allocate,
    allocated_policy,
    average_bits_range,
    group_weights,
    measure_sensitivity,
)

log = logging.getLogger("autocompress")

SENSITIVITY_ATTR = "sensitivity"
"""Study attribute: per group size, each group's KL to the teacher at each width (``decoder.average_bits``), measured once."""


def offered_widths(config: SearchConfig) -> dict[str, list[int]]:
    """The widths the space offers per group kind."""
    space = config.decoder
    return {"attn": list(space.attention_bits), "mlp": list(space.mlp_bits), HEAD: list(space.head_bits)}


def measure_sensitivities(config: SearchConfig, teacher: PreTrainedModel, dev: Sequence[Window],
                          reference: Sequence[np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    """Per offered group size, every group's KL to the teacher at each offered width, on the first
    ``decoder.sensitivity_windows`` dev windows (``reference``: the teacher's log-probabilities on them); JSON-ready,
    as the study stores it."""
    space = config.decoder
    count = min(space.sensitivity_windows, len(dev))
    windows, reference = list(dev)[:count], reference[:count]
    measured = {}
    for group_size in space.group_sizes:
        log.info("measuring each group's KL to the teacher at widths %s, groups of %d, on %d dev windows", offered_widths(config),
                 group_size, count)
        sensitivity = measure_sensitivity(teacher, windows, reference, offered_widths(config), group_size,
                                          progress=lambda line: log.debug("sensitivity: %s", line))
        measured[str(group_size)] = {group: {str(bits): kl for bits, kl in widths.items()} for group, widths in sensitivity.items()}
    return measured


def stored_sensitivity(study: optuna.Study, group_size: int) -> Sensitivity:
    """What ``measure_sensitivities`` stored with the study, for one group size, with integer widths."""
    return {group: {int(bits): kl for bits, kl in widths.items()} for group, widths in study.user_attrs[SENSITIVITY_ATTR][str(group_size)].items()}


def sample_policy(trial: optuna.Trial, config: SearchConfig, num_blocks: int,
                  sensitivity: dict[int, Sensitivity] | None = None, weights: dict[str, int] | None = None) -> DecoderPolicy:
    """The trial's policy: per block (or once, ``decoder.per_block: false``) an attention and an MLP width; with
    ``decoder.average_bits``, one target whose widths ``allocate`` chooses from the measured ``sensitivity``."""
    space = config.decoder
    method = trial.suggest_categorical("method", space.methods)
    group = trial.suggest_categorical("group_size", space.group_sizes)
    if space.average_bits:
        target = trial.suggest_categorical("average_bits", space.average_bits)
        return allocated_policy(allocate(sensitivity[group], weights, target), method=method, group_size=group, blocks=num_blocks)
    head = trial.suggest_categorical("head_bits", space.head_bits)
    if space.per_block:
        attention = tuple(trial.suggest_categorical(f"block{i}.attention_bits", space.attention_bits) for i in range(num_blocks))
        mlp = tuple(trial.suggest_categorical(f"block{i}.mlp_bits", space.mlp_bits) for i in range(num_blocks))
    else:
        attention = (trial.suggest_categorical("attention_bits", space.attention_bits),) * num_blocks
        mlp = (trial.suggest_categorical("mlp_bits", space.mlp_bits),) * num_blocks
    return DecoderPolicy(method, group, head, attention, mlp)


def enqueue_uniform_starts(study: optuna.Study, config: SearchConfig, num_blocks: int) -> None:
    """A new study's first trials (``search.start_uniform``), with the first method and group size: every layer at one width,
    for each quantized width both projection families offer (what a one-width tool would ship); with
    ``decoder.average_bits``, each target once."""
    space = config.decoder
    if not config.search.start_uniform or study.trials:
        return
    first = {"method": space.methods[0], "group_size": space.group_sizes[0]}
    if space.average_bits:
        for target in space.average_bits:
            study.enqueue_trial({**first, "average_bits": target})
        return
    for bits in sorted(set(space.attention_bits) & set(space.mlp_bits) - {32}):
        widths = ({f"block{i}.{kind}_bits": bits for i in range(num_blocks) for kind in ("attention", "mlp")} if space.per_block
                  else {"attention_bits": bits, "mlp_bits": bits})
        head = bits if bits in space.head_bits else space.head_bits[0]
        study.enqueue_trial({**first, "head_bits": head, **widths})


def input_widths(model: Any) -> list[int]:
    """The input widths of every Linear a policy quantizes, from the model's config: q/k/v, gate/up and lm_head read the
    hidden size, o_proj the attention width, down_proj the MLP width."""
    heads = model.num_attention_heads
    head_dim = getattr(model, "head_dim", None) or model.hidden_size // heads
    return sorted({model.hidden_size, heads * head_dim, model.intermediate_size})


def check_space(config: SearchConfig, shape: PretrainedConfig) -> None:
    """The ``decoder`` section against the model's shape: group sizes that divide every quantized layer's input width, and
    average-bits targets the offered widths can reach; a one-line ``ConfigError`` otherwise."""
    widths = input_widths(shape)
    bad = [g for g in config.decoder.group_sizes if any(w % g for w in widths)]
    if bad:
        raise ConfigError(f"{config.source}: field 'decoder.group_sizes': {bad} do not divide the layers' input widths {widths}; "
                          f"allowed: {[g for g in (32, 64, 128) if all(w % g == 0 for w in widths)]}")
    space = config.decoder
    if space.average_bits:
        if not space.per_block:
            raise ConfigError(f"{config.source}: field 'decoder.average_bits': allocates a width per block; set decoder.per_block: true "
                              "or leave decoder.average_bits null")
        low, high = average_bits_range(group_weights(shape), offered_widths(config))
        outside = [bits for bits in space.average_bits if not low - 1e-9 <= bits <= high + 1e-9]
        if outside:
            raise ConfigError(f"{config.source}: field 'decoder.average_bits': {outside} cannot be reached with the widths offered; "
                              f"allowed: {low:.3f} to {high:.3f} on this model")
