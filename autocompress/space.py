"""Sampling a Policy from the search space with an Optuna trial.

Decisions are made per encoder block (the block's Linear layers share them) and
the policy addresses each block with a ``re:`` pattern, so the same policy
applies to any model with the same block layout. The per-block bits and
pruning ratios are sampled here (the layer map quantization and magnitude
pruning share); every other decision is asked of its technique, in the order
they are registered (``TECHNIQUES``). Parameter names are stable
(``block3.bits``), so a resumed study keeps learning from its history.
"""

from __future__ import annotations

import re

import optuna

from autocompress import techniques
from autocompress.config import PruneMode, SpaceConfig
from autocompress.policy import DEFAULT_TASK, PATTERN_PREFIX, LayerSpec, Policy


def block_pattern(prefix: str, index: int) -> str:
    """The ``re:`` key addressing every module inside block ``index``."""
    return f"{PATTERN_PREFIX}{re.escape(prefix)}\\.{index}\\..*"


def sample_policy(trial: optuna.Trial, space: SpaceConfig, *, prefix: str, num_blocks: int, task: str = DEFAULT_TASK) -> Policy:
    """Ask ``trial`` for every decision the space leaves open and build the Policy (for ``task``)."""
    local = space.prune_mode is PruneMode.LOCAL
    layers = {}
    for index in range(num_blocks):
        bits = trial.suggest_categorical(f"block{index}.bits", space.weight_bits)
        ratio = trial.suggest_categorical(f"block{index}.prune_ratio", space.prune_ratios) if local else 0.0
        layers[block_pattern(prefix, index)] = LayerSpec(bits=bits, prune_ratio=ratio)
    decisions = {}
    for technique in techniques.TECHNIQUES:  # read when called: the registry is the one list
        decisions |= technique.sample(trial, space, num_blocks=num_blocks)
    return Policy(layers=layers, task=task, **decisions)


def uniform_starts(space: SpaceConfig, *, num_blocks: int) -> list[dict[str, object]]:
    """Trial params for the uniform policies users try first: every block at one bit width, unpruned.

    One per quantized bit width of the space, with its best-suited choices: 8
    bits per output channel (ONNX Runtime's fast int8 kernel) where the space
    allows it, lower bit widths in the finest group, and the embedding at the
    lowest precision no lower than the blocks'. Decisions they leave open
    (heads, widths, depth, recovery) are sampled as usual.
    """
    finest_group = min((g for g in space.group_size if g is not None), default=None)
    starts = []
    for bits in sorted({b for b in space.weight_bits if b < 32}, reverse=True):
        params: dict[str, object] = {f"block{i}.bits": bits for i in range(num_blocks)}
        if space.prune_mode is PruneMode.LOCAL and 0.0 in space.prune_ratios:
            params |= {f"block{i}.prune_ratio": 0.0 for i in range(num_blocks)}
        per_channel = bits == 8 and None in space.group_size
        params["group_size"] = None if per_channel or finest_group is None else finest_group
        params["embedding_bits"] = min((b for b in space.embedding_bits if b >= bits), default=max(space.embedding_bits))
        params["scheme"] = space.quant_scheme[0]
        starts.append(params)
    return starts
