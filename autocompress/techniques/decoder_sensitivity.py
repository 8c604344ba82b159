"""How much each part of a decoder suffers from fewer bits, measured; and widths allocated under an average-bits budget from it.

A *group* is what a ``DecoderPolicy`` sets one width for: one block's
attention projections (``3.attn``), its MLP (``3.mlp``), or ``lm_head`` (with
the tied embedding). Its sensitivity at a width is measured, not estimated:
the mean per-token KL(teacher ‖ model) on a few dev windows with only that
group quantized (round-to-nearest), everything else float. A probe re-runs
only the blocks from the group on, from the teacher's own inputs to its block,
recorded once. ``allocate`` then solves the multiple-choice knapsack greedily,
as ModelOpt's ``auto_quantize`` and AutoRound's AutoScheme do with their
estimated scores: every group starts at its narrowest width, and the upgrade
that saves the most KL per extra bit is taken while the budget holds. It
assumes the groups' errors add up, which the search then checks by measuring
every allocation it tries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel

from autocompress.models.decoders import PROJECTION_FAMILIES, decoder_blocks, decoder_family
from autocompress.tasks.language_modeling import Window, language_scores, torch_logits
from autocompress.techniques.decoder_policy import FLOAT, DecoderPolicy
from autocompress.techniques.weight_only import rtn

HEAD = "lm_head"
Sensitivity = dict[str, dict[int, float]]
"""Group (``3.attn``, ``3.mlp``, ``lm_head``) -> width -> mean per-token KL to the teacher with only that group at that width."""


def group_name(block: int | None, kind: str) -> str:
    return HEAD if kind == HEAD else f"{block}.{kind}"


def group_weights(config: PretrainedConfig) -> dict[str, int]:
    """Weights per group, from the model's config alone (so a budget is checked before any weight is loaded)."""
    hidden, heads, kv = config.hidden_size, config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = 3 * hidden * config.intermediate_size
    groups = {group_name(i, kind): size for i in range(config.num_hidden_layers) for kind, size in (("attn", attention), ("mlp", mlp))}
    return groups | {HEAD: config.vocab_size * hidden}


def average_bits_range(weights: Mapping[str, int], widths: Mapping[str, Sequence[int]]) -> tuple[float, float]:
    """The smallest and largest average bits the widths allowed per kind (``attn``, ``mlp``, ``lm_head``) can reach."""
    total = sum(weights.values())
    kind = lambda group: group if group == HEAD else group.split(".")[1]  # noqa: E731
    return (sum(n * min(widths[kind(g)]) for g, n in weights.items()) / total, sum(n * max(widths[kind(g)]) for g, n in weights.items()) / total)


@torch.no_grad()
def measure_sensitivity(model: PreTrainedModel, windows: Sequence[Window], reference: Sequence[np.ndarray], widths: Mapping[str, Sequence[int]],
                        group_size: int, *, progress: Callable[[str], None] | None = None) -> Sensitivity:
    """Every group's KL to the teacher at each quantized width of its kind (``widths``: ``attn``, ``mlp``, ``lm_head``); float
    widths cost nothing and are recorded as 0. ``model`` is the teacher, left as it was."""
    model.eval()
    blocks, family = decoder_blocks(model), decoder_family(model.config)
    hidden, extra = _block_inputs(model, windows)
    result: Sensitivity = {}
    for index, block in enumerate(blocks):
        for kind in PROJECTION_FAMILIES:
            linears = list(family.projections(block, kind).values())
            result[group_name(index, kind)] = {bits: _probe(linears, bits, group_size, lambda i=index: _suffix(model, blocks, i, hidden, extra),
                                                            reference, windows) for bits in widths[kind]}
        if progress:
            progress(f"block {index + 1}/{len(blocks)}")
    result[HEAD] = {bits: _probe([model.lm_head], bits, group_size, lambda: _full(model, windows), reference, windows) for bits in widths[HEAD]}
    return result


def _probe(linears: list[torch.nn.Linear], bits: int, group_size: int, run: Callable[[], list[np.ndarray]], reference: Sequence[np.ndarray],
           windows: Sequence[Window]) -> float:
    if bits == FLOAT:
        return 0.0
    originals = [linear.weight.data.clone() for linear in linears]
    try:
        for linear in linears:
            linear.weight.data.copy_(rtn(linear.weight.data, bits, group_size).dequantize().to(linear.weight.dtype))
        arrays = iter(run())  # the windows' logits, computed already, handed to language_scores in the order it asks for them
        return language_scores(lambda _ids: next(arrays), reference, windows)["kl_to_teacher"]
    finally:
        for linear, original in zip(linears, originals, strict=True):
            linear.weight.data.copy_(original)


def _block_inputs(model: PreTrainedModel, windows: Sequence[Window]) -> tuple[list[list[torch.Tensor]], list[tuple[tuple, dict]]]:
    """Per window, the hidden states entering every block, and the first block's other arguments (positions, mask), which
    every block of these families receives unchanged."""
    hidden: list[list[torch.Tensor]] = []
    extra: list[tuple[tuple, dict]] = []
    for window in windows:
        seen: list[torch.Tensor] = []

        def record(_module, args, kwargs, seen=seen):
            seen.append(args[0] if args else kwargs["hidden_states"])
            if len(seen) == 1:
                extra.append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))

        handles = [block.register_forward_pre_hook(record, with_kwargs=True) for block in decoder_blocks(model)]
        try:
            model(input_ids=window.input_ids, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        hidden.append(seen)
    return hidden, extra


def _suffix(model: PreTrainedModel, blocks: list[torch.nn.Module], start: int, hidden: list[list[torch.Tensor]],
            extra: list[tuple[tuple, dict]]) -> list[np.ndarray]:
    """Each window's logits with blocks ``start``.. re-run from the teacher's input to block ``start``."""
    arrays = []
    for states, (args, kwargs) in zip(hidden, extra, strict=True):
        x = states[start]
        for block in blocks[start:]:
            out = block(x, *args, **kwargs)
            x = out[0] if isinstance(out, tuple) else out
        arrays.append(model.lm_head(model.model.norm(x))[0].float().numpy())
    return arrays


def _full(model: PreTrainedModel, windows: Sequence[Window]) -> list[np.ndarray]:
    logits = torch_logits(model)
    return [logits(window.input_ids) for window in windows]


def allocate(sensitivity: Mapping[str, Mapping[int, float]], weights: Mapping[str, int], average_bits: float) -> dict[str, int]:
    """A width per group whose weighted mean is at most ``average_bits``, the groups' summed KL made small greedily: from
    the narrowest widths, repeatedly take the widening that saves the most KL per extra bit and still fits."""
    total = sum(weights[g] for g in sensitivity)
    chosen = {group: min(options) for group, options in sensitivity.items()}
    budget = average_bits * total - sum(weights[g] * bits for g, bits in chosen.items())
    if budget < -1e-9 * total:
        raise ValueError(f"average bits {average_bits} is below the narrowest allocation's {average_bits - budget / total:.3f}")
    while True:
        best, best_gain = None, -1.0
        for group, options in sensitivity.items():
            for bits, kl in options.items():
                cost = weights[group] * (bits - chosen[group])
                if cost > 0 and cost <= budget + 1e-9 * total:
                    gain = (options[chosen[group]] - kl) / cost
                    if gain > best_gain:
                        best, best_gain = (group, bits, cost), gain
        if best is None:
            return chosen
        group, bits, cost = best
        chosen[group] = bits
        budget -= cost


def allocated_policy(allocation: Mapping[str, int], *, method: str, group_size: int, blocks: int) -> DecoderPolicy:
    """The ``DecoderPolicy`` of an allocation."""
    return DecoderPolicy(method, group_size, allocation[HEAD], tuple(allocation[group_name(i, "attn")] for i in range(blocks)),
                         tuple(allocation[group_name(i, "mlp")] for i in range(blocks)))
