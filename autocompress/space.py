"""Sampling a Policy from the search space with an Optuna trial.

Decisions are made per encoder block (the block's Linear layers share them) and
the policy addresses each block with a ``re:`` pattern, so the same policy
applies to any model with the same block layout. Parameter names are stable
(``block3.bits``), so a resumed study keeps learning from its history.
"""

from __future__ import annotations

import re

import optuna

from autocompress.config import PruneMode, SpaceConfig
from autocompress.policy import PATTERN_PREFIX, LayerSpec, Policy


def block_pattern(prefix: str, index: int) -> str:
    """The ``re:`` key addressing every module inside block ``index``."""
    return f"{PATTERN_PREFIX}{re.escape(prefix)}\\.{index}\\..*"


def sample_policy(trial: optuna.Trial, space: SpaceConfig, *, prefix: str, num_blocks: int) -> Policy:
    """Ask ``trial`` for every decision the space leaves open and build the Policy."""
    local = space.prune_mode is PruneMode.LOCAL
    layers = {}
    for index in range(num_blocks):
        bits = trial.suggest_categorical(f"block{index}.bits", space.weight_bits)
        ratio = trial.suggest_categorical(f"block{index}.prune_ratio", space.prune_ratios) if local else 0.0
        layers[block_pattern(prefix, index)] = LayerSpec(bits=bits, prune_ratio=ratio)
    structure = {
        "heads": {i: trial.suggest_categorical(f"block{i}.heads", space.heads) for i in range(num_blocks)} if space.heads else {},
        "ffn": {i: trial.suggest_categorical(f"block{i}.ffn", space.ffn_widths) for i in range(num_blocks)} if space.ffn_widths else {},
        "kept_blocks": evenly_spaced(trial.suggest_categorical("num_blocks", space.num_blocks), num_blocks) if space.num_blocks else None,
    }
    global_ratio = (
        trial.suggest_categorical("global_prune_ratio", space.prune_ratios) if space.prune_mode is PruneMode.GLOBAL else 0.0
    )
    return Policy(
        layers=layers,
        scheme=trial.suggest_categorical("scheme", space.quant_scheme),
        group_size=trial.suggest_categorical("group_size", space.group_size),
        global_prune_ratio=global_ratio,
        embedding_bits=trial.suggest_categorical("embedding_bits", space.embedding_bits),
        recovery_steps=trial.suggest_categorical("recovery_steps", space.recovery_steps),
        **structure,
    )


def evenly_spaced(count: int, total: int) -> tuple[int, ...]:
    """``count`` of ``total`` block indices, evenly spaced and always keeping the last block."""
    if not 1 <= count <= total:
        raise ValueError(f"num_blocks must lie in 1..{total}, got {count}")
    return tuple(round((i + 1) * total / count) - 1 for i in range(count))
