"""The structured-pruning technique: attention heads, FFN neurons and whole blocks, physically removed.

Unstructured sparsity gives no speed or dense-size gain on our runtimes, so this
removes whole attention heads (the rows of the projections a head owns and the
attention output's columns), whole FFN neurons (FFN input rows and output
columns) and whole blocks: the matrices get smaller. Where those parts live
differs per family (BERT's ``attention.self.query``, DistilBERT's
``attention.q_lin``, ...): the family's ``BlockLayout`` says. The shapes are
recorded in the config so ``autocompress.models.shrunk`` can rebuild the model.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedModel

from autocompress.models.families import layout_for
from autocompress.models.shrunk import (
    LAYOUT_ATTR,
    BlockLayout,
    block_width,
    empty_linear,
    encoder_layers,
    head_size,
    num_heads,
    record_shapes,
    recorded_layout,
    row_linears,
    set_heads,
    set_submodule,
)
from autocompress.techniques._base import Technique

if TYPE_CHECKING:
    import optuna

    from autocompress.config import SpaceConfig
    from autocompress.policy import LayerSpec, Policy


class StructuredPruning(Technique):
    """Keep the policy's heads / FFN width per block and its kept blocks (Taylor importance with calibration)."""

    name = "structured_pruning"
    stage = 10
    fields = {
        "heads": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"}, "additionalProperties": {"type": "integer", "minimum": 0},
                  "default": {}, "description": "block index -> attention heads kept (the most important ones)"},
        "ffn": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"}, "additionalProperties": {"type": "integer", "minimum": 0},
                "default": {}, "description": "block index -> FFN neurons kept"},
        "kept_blocks": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "uniqueItems": True, "default": None,
                        "description": "indices of the encoder blocks kept, in order; null keeps all"},
    }

    @classmethod
    def section(cls, policy: Policy) -> dict[str, Any]:
        kept = policy.kept_blocks
        return {"heads": {str(k): v for k, v in policy.heads.items()}, "ffn": {str(k): v for k, v in policy.ffn.items()},
                "kept_blocks": list(kept) if kept is not None else None}

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> dict[str, Any]:
        kept = section.get("kept_blocks")
        return {"heads": {int(k): int(v) for k, v in section.get("heads", {}).items()},
                "ffn": {int(k): int(v) for k, v in section.get("ffn", {}).items()},
                "kept_blocks": tuple(int(i) for i in kept) if kept is not None else None}

    @classmethod
    def params(cls, policy: Policy, *, num_blocks: int, heads: int, ffn: int) -> dict[str, Any]:
        """How many blocks are kept; per block of the uncompressed model its heads, FFN width and whether it is kept."""
        kept = policy.kept_blocks
        params: dict[str, Any] = {"kept_blocks": len(kept) if kept is not None else num_blocks}
        for index in range(num_blocks):
            params |= {f"block{index}.heads": policy.heads.get(index, heads), f"block{index}.ffn": policy.ffn.get(index, ffn),
                       f"block{index}.kept": kept is None or index in kept}
        return params

    @classmethod
    def sample(cls, trial: optuna.Trial, space: SpaceConfig, *, num_blocks: int) -> dict[str, Any]:
        blocks = range(num_blocks)
        return {
            "heads": {i: trial.suggest_categorical(f"block{i}.heads", space.heads) for i in blocks} if space.heads else {},
            "ffn": {i: trial.suggest_categorical(f"block{i}.ffn", space.ffn_widths) for i in blocks} if space.ffn_widths else {},
            "kept_blocks": evenly_spaced(trial.suggest_categorical("num_blocks", space.num_blocks), num_blocks) if space.num_blocks else None,
        }

    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if policy.heads or policy.ffn or policy.kept_blocks is not None:
            shrink_(model, heads=policy.heads, ffn=policy.ffn, layers=policy.kept_blocks, calibration=calibration)


def evenly_spaced(count: int, total: int) -> tuple[int, ...]:
    """``count`` of ``total`` block indices, evenly spaced and always keeping the last block."""
    if not 1 <= count <= total:
        raise ValueError(f"num_blocks must lie in 1..{total}, got {count}")
    return tuple(round((i + 1) * total / count) - 1 for i in range(count))


def _layout_of(model: PreTrainedModel, layout: BlockLayout | None) -> BlockLayout:
    """The given layout, else the one the config records, else the family's."""
    if layout is not None:
        return layout
    return recorded_layout(model) if getattr(model.config, LAYOUT_ATTR, None) else layout_for(model)


def head_importance(
    model: PreTrainedModel, *, calibration: Mapping[str, torch.Tensor] | None = None, layout: BlockLayout | None = None
) -> list[torch.Tensor]:
    """Per encoder block, one score per remaining attention head (higher = keep).

    With ``calibration`` (model inputs including ``labels``): first-order Taylor
    importance ``|sum(grad * weight)|`` over the rows a head owns and its
    attention-output columns. Without: the L2 norm of those weights.
    """
    return _scores(model, calibration, _layout_of(model, layout))[0]


def neuron_importance(
    model: PreTrainedModel, *, calibration: Mapping[str, torch.Tensor] | None = None, layout: BlockLayout | None = None
) -> list[torch.Tensor]:
    """Per encoder block, one score per FFN neuron (FFN input row + FFN output column)."""
    return _scores(model, calibration, _layout_of(model, layout))[1]


@torch.no_grad()
def shrink_(
    model: PreTrainedModel,
    *,
    heads: Mapping[int, int] | None = None,
    ffn: Mapping[int, int] | None = None,
    layers: Sequence[int] | None = None,
    calibration: Mapping[str, torch.Tensor] | None = None,
    layout: BlockLayout | None = None,
) -> PreTrainedModel:
    """Physically remove the least important heads, FFN neurons and whole blocks, in place.

    ``heads[i]`` / ``ffn[i]``: heads / intermediate width KEPT in block ``i``.
    ``layers``: strictly increasing indices of the blocks kept. All indices
    refer to the blocks as they are before this call. Importance comes from
    ``head_importance`` / ``neuron_importance`` (Taylor with ``calibration``,
    weight norm without). ``layout``: where the family keeps those parts
    (default: the one the config records, else ``autocompress.models.families``'
    for the model). Everything is validated before anything changes.
    """
    layout = _layout_of(model, layout)
    blocks = encoder_layers(model, layout)
    if heads and layout.fixed_heads:
        raise ValueError(f"heads={dict(heads)} is not allowed for {type(model).__name__}: {layout.fixed_heads}")
    heads = _checked_counts("heads", heads, [num_heads(b, layout) for b in blocks], low=0 if layout.headless else 1)
    ffn = _checked_counts("ffn", ffn, [block_width(b, layout) for b in blocks], low=0)
    if layers is not None and layout.shared_blocks:
        raise ValueError(f"layers={list(layers)} is not allowed: {type(model).__name__} re-uses its blocks across depth")
    kept = _checked_layers(layers, len(blocks))
    if heads or ffn:
        head_scores, neuron_scores = _scores(model, calibration, layout)
        for i, keep in heads.items():
            _keep_heads(blocks[i], _top(head_scores[i], keep), layout)
        for i, keep in ffn.items():
            _keep_neurons(blocks[i], _top(neuron_scores[i], keep), layout)
    if kept is not None:
        _keep_blocks(blocks, kept)
    record_shapes(model, layout)
    return model


def _head_weights(block: nn.Module, layout: BlockLayout) -> list[tuple[torch.Tensor, int]]:
    """(weight, dimension indexing heads) for every matrix a head owns."""
    rows = [(linear.weight, 0) for _, linear in row_linears(block, layout)] if num_heads(block, layout) else []
    return [*rows, (block.get_submodule(layout.head_columns).weight, 1)]


def _neuron_weights(block: nn.Module, layout: BlockLayout) -> list[tuple[torch.Tensor, int]]:
    return [(block.get_submodule(layout.ffn_rows).weight, 0), (block.get_submodule(layout.ffn_columns).weight, 1)]


def _per_unit(values: Sequence[torch.Tensor], dims: Sequence[int], units: int) -> torch.Tensor:
    """Cut each tensor into ``units`` equal slices along its dim, sum each slice, add across tensors."""
    total = torch.zeros(units, device=values[0].device)
    if units == 0:
        return total
    for value, dim in zip(values, dims):
        total += value.detach().float().movedim(dim, 0).reshape(units, -1).sum(dim=1)
    return total


def _gradients(model: PreTrainedModel, calibration: Mapping[str, torch.Tensor], params: list[torch.Tensor]):
    """Gradients of the calibration loss for ``params``, leaving no ``.grad`` and the model's mode untouched.

    The loss is the calibration batch's own (a task head's ``Calibration``), else the model's loss on its ``labels``.
    """
    own_loss = getattr(calibration, "loss", None)
    if not isinstance(calibration, Mapping) or (own_loss is None and "labels" not in calibration):
        keys = sorted(calibration) if isinstance(calibration, Mapping) else type(calibration).__name__
        raise ValueError(f"calibration must be a dict of model inputs including 'labels', or a task head's Calibration; got {keys}")
    was_training = model.training
    flags = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            loss = own_loss(model) if own_loss is not None else model(**calibration).loss
            return torch.autograd.grad(loss, params)
    finally:
        model.train(was_training)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _scores(model: PreTrainedModel, calibration, layout: BlockLayout) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Head and neuron scores of every block, from one backward pass when calibrating."""
    blocks = encoder_layers(model, layout)
    groups = [(_head_weights(b, layout), num_heads(b, layout)) for b in blocks]
    groups += [(_neuron_weights(b, layout), block_width(b, layout)) for b in blocks]
    params = [w for weights, _ in groups for w, _ in weights]
    if calibration is None:
        values = [w.detach().float() ** 2 for w in params]
    else:
        values = [g * w.detach() for g, w in zip(_gradients(model, calibration, params), params)]
    scores, start = [], 0
    for weights, units in groups:
        dims = [dim for _, dim in weights]
        total = _per_unit(values[start : start + len(weights)], dims, units)
        scores.append(total.sqrt() if calibration is None else total.abs())
        start += len(weights)
    return scores[: len(blocks)], scores[len(blocks) :]


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in their original order."""
    return torch.topk(scores, keep).indices.sort().values


def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = outputs, 1 = inputs), same dtype and device."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    new = empty_linear(linear, weight.shape[0], weight.shape[1])
    new.weight.copy_(weight)
    if linear.bias is not None:
        new.bias.copy_(linear.bias if dim == 1 else linear.bias[index])
    return new


def _head_rows(heads: torch.Tensor, head_size: int) -> torch.Tensor:
    return (heads[:, None] * head_size + torch.arange(head_size, device=heads.device)).flatten()


def _keep_heads(block: nn.Module, heads: torch.Tensor, layout: BlockLayout) -> None:
    rows = _head_rows(heads, head_size(block, layout))
    columns = block.get_submodule(layout.head_columns)
    if len(heads):
        for path, linear in row_linears(block, layout):
            set_submodule(block, path, _sliced(linear, rows, 0))
    set_heads(block, layout, len(heads))
    set_submodule(block, layout.head_columns, _sliced(columns, rows, 1))


def _keep_neurons(block: nn.Module, neurons: torch.Tensor, layout: BlockLayout) -> None:
    set_submodule(block, layout.ffn_rows, _sliced(block.get_submodule(layout.ffn_rows), neurons, 0))
    set_submodule(block, layout.ffn_columns, _sliced(block.get_submodule(layout.ffn_columns), neurons, 1))


def _keep_blocks(blocks: nn.ModuleList, kept: Sequence[int]) -> None:
    """Keep only blocks ``kept``, re-indexed from 0, with their ``layer_idx`` renumbered."""
    survivors = [blocks[i] for i in kept]
    del blocks[:]
    blocks.extend(survivors)
    for index, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index


def _checked_counts(name: str, counts: Mapping[int, int] | None, current: list[int], *, low: int) -> dict[int, int]:
    if counts is None:
        return {}
    if not isinstance(counts, Mapping):
        raise ValueError(f"{name} must map block index -> number kept, got {type(counts).__name__}")
    checked = {}
    for index, keep in counts.items():
        if not _is_index(index) or not 0 <= index < len(current):
            raise ValueError(f"{name}: block index {index!r} is out of range; allowed 0..{len(current) - 1}")
        lowest = min(low, current[index])
        if not _is_index(keep) or not lowest <= keep <= current[index]:
            raise ValueError(f"{name}[{index}]={keep!r} is not allowed; block {index} can keep {lowest}..{current[index]}")
        checked[int(index)] = int(keep)
    return checked


def _checked_layers(layers: Sequence[int] | None, count: int) -> list[int] | None:
    if layers is None:
        return None
    layers = list(layers)
    if not layers:
        raise ValueError("layers=[] is not allowed; keep at least one block")
    for index in layers:
        if not _is_index(index) or not 0 <= index < count:
            raise ValueError(f"layers: block index {index!r} is out of range; allowed 0..{count - 1}")
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"layers={layers} must be strictly increasing (block order is kept)")
    return [int(i) for i in layers]


def _is_index(value) -> bool:
    """An integer (numpy ones included), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

