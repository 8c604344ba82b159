"""Structured pruning that physically shrinks BERT-family encoder blocks.

Unstructured sparsity gives no speed or dense-size gain on our runtimes, so this
removes whole attention heads (q/k/v rows and ``attention.output.dense``
columns), whole FFN neurons (``intermediate.dense`` rows and ``output.dense``
columns) and whole blocks: the matrices get smaller. The head size never
changes; a block's head count is its attention width over the head size. A
block may keep 0 heads (its attention output is then the dense bias) or 0
neurons (likewise for the FFN).

Per-block shapes are recorded in ``config.autocompress_blocks`` so the model
can be rebuilt. This module imports only torch, transformers, safetensors and
the standard library on purpose: ``save_shrunk`` copies it next to the weights
as the modeling file of Hugging Face's custom-code mechanism (``auto_map``), so
``AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)`` rebuilds any shrunk BERT classifier.
"""

from __future__ import annotations

import json
import numbers
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, BertForSequenceClassification, PreTrainedModel

BLOCKS_ATTR = "autocompress_blocks"
"""Config attribute listing each block's ``{"heads": h, "intermediate_size": f}``."""

MODELING_FILE = "modeling_autocompress.py"
"""Name under which ``save_shrunk`` copies this module into a saved folder."""

_BLOCK_PARTS = ("attention.self", "attention.output.dense", "intermediate.dense", "output.dense")


class HeadlessSelfAttention(nn.Module):
    """Self-attention with every head removed: it outputs a zero-width tensor.

    ``attention.output.dense`` then has no input columns, so the block's
    attention contributes only its bias before the residual LayerNorm.
    """

    def __init__(self, attention_head_size: int, layer_idx: int | None) -> None:
        super().__init__()
        self.num_attention_heads = 0
        self.attention_head_size = attention_head_size
        self.all_head_size = 0
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        return hidden_states.new_zeros((*hidden_states.shape[:-1], 0)), None


class ShrunkBertForSequenceClassification(BertForSequenceClassification):
    """A BERT classifier built with the per-block shapes recorded in ``config.autocompress_blocks``.

    Named by ``auto_map`` in folders written by ``save_shrunk``, so Hugging Face's
    loader allocates the right shapes before it reads the weights.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        if hasattr(config, BLOCKS_ATTR):
            _apply_shapes(self, getattr(config, BLOCKS_ATTR))


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def head_importance(
    model: PreTrainedModel, *, calibration: Mapping[str, torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Per encoder block, one score per remaining attention head (higher = keep).

    With ``calibration`` (model inputs including ``labels``): first-order Taylor
    importance ``|sum(grad * weight)|`` over the head's q/k/v rows and
    ``attention.output.dense`` columns. Without: the L2 norm of those weights.
    """
    return _scores(model, calibration)[0]


def neuron_importance(
    model: PreTrainedModel, *, calibration: Mapping[str, torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Per encoder block, one score per FFN neuron (``intermediate.dense`` row + ``output.dense`` column)."""
    return _scores(model, calibration)[1]


@torch.no_grad()
def shrink_(
    model: PreTrainedModel,
    *,
    heads: Mapping[int, int] | None = None,
    ffn: Mapping[int, int] | None = None,
    layers: Sequence[int] | None = None,
    calibration: Mapping[str, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """Physically remove the least important heads, FFN neurons and whole blocks, in place.

    ``heads[i]`` / ``ffn[i]``: heads / intermediate width KEPT in block ``i``.
    ``layers``: strictly increasing indices of the blocks kept. All indices
    refer to the blocks as they are before this call. Importance comes from
    ``head_importance`` / ``neuron_importance`` (Taylor with ``calibration``,
    weight norm without). Everything is validated before anything changes.
    """
    blocks = _encoder_layers(model)
    heads = _checked_counts("heads", heads, [_num_heads(b) for b in blocks])
    ffn = _checked_counts("ffn", ffn, [_width(b) for b in blocks])
    kept = _checked_layers(layers, len(blocks))
    if heads or ffn:
        head_scores, neuron_scores = _scores(model, calibration)
        for i, keep in heads.items():
            _keep_heads(blocks[i], _top(head_scores[i], keep))
        for i, keep in ffn.items():
            _keep_neurons(blocks[i], _top(neuron_scores[i], keep))
    if kept is not None:
        _keep_blocks(model, kept)
    _record_shapes(model)
    return model


def save_shrunk(model: PreTrainedModel, folder: str | Path, *, tokenizer=None) -> Path:
    """Save with ``save_pretrained`` (safetensors) plus the per-block shapes needed to rebuild it.

    A BERT classifier also gets this module as its modeling file and an
    ``auto_map`` entry, for ``from_pretrained(folder, trust_remote_code=True)``.
    """
    folder = Path(folder)
    _record_shapes(model)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    base = _transformers_class(model)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [base.__name__]
    if base is BertForSequenceClassification:
        shutil.copyfile(__file__, folder / MODELING_FILE)
        target = f"{Path(MODELING_FILE).stem}.{ShrunkBertForSequenceClassification.__name__}"
        config["auto_map"] = {"AutoModelForSequenceClassification": target}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def load_shrunk(folder: str | Path) -> PreTrainedModel:
    """Rebuild a model saved by ``save_shrunk``: architecture, recorded shapes, then strict safetensors loading."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if len(names) == 1 else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ValueError(
            f"{folder}/config.json has architectures={names!r}; load_shrunk needs one transformers model class"
        )
    model = cls(config)
    if hasattr(config, BLOCKS_ATTR):
        _apply_shapes(model, getattr(config, BLOCKS_ATTR))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    _load_strict(model, state, folder)
    return model.eval()


# -- blocks -------------------------------------------------------------------


def _is_block(module: nn.Module) -> bool:
    try:
        for path in _BLOCK_PARTS:
            module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList whose every entry is a BERT-style block (has all of ``_BLOCK_PARTS``)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(_is_block(b) for b in module):
            return module
    raise ValueError(f"{type(model).__name__} has no BERT-style encoder blocks ({', '.join(_BLOCK_PARTS)})")


def _head_size(block: nn.Module) -> int:
    return block.attention.self.attention_head_size


def _num_heads(block: nn.Module) -> int:
    return block.attention.output.dense.in_features // _head_size(block)


def _width(block: nn.Module) -> int:
    return block.intermediate.dense.out_features


def _hidden(block: nn.Module) -> int:
    return block.attention.output.dense.out_features


# -- importance ---------------------------------------------------------------


def _head_weights(block: nn.Module) -> list[tuple[torch.Tensor, int]]:
    """(weight, dimension indexing heads) for every matrix a head owns."""
    attn = block.attention.self
    qkv = [(attn.query.weight, 0), (attn.key.weight, 0), (attn.value.weight, 0)] if _num_heads(block) else []
    return [*qkv, (block.attention.output.dense.weight, 1)]


def _neuron_weights(block: nn.Module) -> list[tuple[torch.Tensor, int]]:
    return [(block.intermediate.dense.weight, 0), (block.output.dense.weight, 1)]


def _per_unit(values: Sequence[torch.Tensor], dims: Sequence[int], units: int) -> torch.Tensor:
    """Cut each tensor into ``units`` equal slices along its dim, sum each slice, add across tensors."""
    total = torch.zeros(units, device=values[0].device)
    if units == 0:
        return total
    for value, dim in zip(values, dims):
        total += value.detach().float().movedim(dim, 0).reshape(units, -1).sum(dim=1)
    return total


def _gradients(model: PreTrainedModel, calibration: Mapping[str, torch.Tensor], params: list[torch.Tensor]):
    """Gradients of the calibration loss for ``params``, leaving no ``.grad`` and the model's mode untouched."""
    if not isinstance(calibration, Mapping) or "labels" not in calibration:
        keys = sorted(calibration) if isinstance(calibration, Mapping) else type(calibration).__name__
        raise ValueError(f"calibration must be a dict of model inputs including 'labels'; got {keys}")
    was_training = model.training
    flags = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            loss = model(**calibration).loss
            return torch.autograd.grad(loss, params)
    finally:
        model.train(was_training)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _scores(model: PreTrainedModel, calibration) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Head and neuron scores of every block, from one backward pass when calibrating."""
    blocks = _encoder_layers(model)
    groups = [(_head_weights(b), _num_heads(b)) for b in blocks] + [(_neuron_weights(b), _width(b)) for b in blocks]
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


# -- surgery ------------------------------------------------------------------


def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = outputs, 1 = inputs), same dtype and device."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    new = _empty_linear(linear, weight.shape[0], weight.shape[1])
    new.weight.copy_(weight)
    if linear.bias is not None:
        new.bias.copy_(linear.bias if dim == 1 else linear.bias[index])
    return new


def _empty_linear(like: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    """A Linear of the given shape, dtype and device as ``like``; its values are overwritten by the caller."""
    weight = like.weight
    with warnings.catch_warnings():  # a block with 0 heads or neurons has zero-element weights
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return nn.Linear(
            in_features, out_features, bias=like.bias is not None, device=weight.device, dtype=weight.dtype
        )


def _head_rows(heads: torch.Tensor, head_size: int) -> torch.Tensor:
    return (heads[:, None] * head_size + torch.arange(head_size, device=heads.device)).flatten()


def _keep_heads(block: nn.Module, heads: torch.Tensor) -> None:
    attn, size = block.attention.self, _head_size(block)
    rows = _head_rows(heads, size)
    if len(heads) == 0:
        block.attention.self = HeadlessSelfAttention(size, attn.layer_idx)
    else:
        attn.query, attn.key, attn.value = (_sliced(getattr(attn, n), rows, 0) for n in ("query", "key", "value"))
        attn.num_attention_heads, attn.all_head_size = len(heads), len(rows)
    block.attention.output.dense = _sliced(block.attention.output.dense, rows, 1)


def _keep_neurons(block: nn.Module, neurons: torch.Tensor) -> None:
    block.intermediate.dense = _sliced(block.intermediate.dense, neurons, 0)
    block.output.dense = _sliced(block.output.dense, neurons, 1)


def _keep_blocks(model: PreTrainedModel, kept: Sequence[int]) -> None:
    """Keep only blocks ``kept``, re-indexed from 0, with their ``layer_idx`` renumbered."""
    blocks = _encoder_layers(model)
    survivors = [blocks[i] for i in kept]
    del blocks[:]
    blocks.extend(survivors)
    for index, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index


def _apply_shapes(model: PreTrainedModel, shapes: Sequence[Mapping[str, int]]) -> None:
    """Re-create each block's Linears (uninitialised) with the recorded head count and FFN width."""
    blocks = _encoder_layers(model)
    if len(shapes) != len(blocks):
        raise ValueError(f"config.{BLOCKS_ATTR} lists {len(shapes)} blocks but the model has {len(blocks)}")
    for block, shape in zip(blocks, shapes):
        heads, width, hidden = shape["heads"], shape["intermediate_size"], _hidden(block)
        attn, size = block.attention.self, _head_size(block)
        if heads == 0:
            block.attention.self = HeadlessSelfAttention(size, attn.layer_idx)
        else:
            attn.query, attn.key, attn.value = (
                _empty_linear(getattr(attn, n), heads * size, hidden) for n in ("query", "key", "value")
            )
            attn.num_attention_heads, attn.all_head_size = heads, heads * size
        block.attention.output.dense = _empty_linear(block.attention.output.dense, hidden, heads * size)
        block.intermediate.dense = _empty_linear(block.intermediate.dense, width, hidden)
        block.output.dense = _empty_linear(block.output.dense, hidden, width)


def _record_shapes(model: PreTrainedModel) -> None:
    """Keep the HF config consistent with the blocks: layer count, shared FFN width, per-block shapes."""
    blocks = _encoder_layers(model)
    shapes = [{"heads": _num_heads(b), "intermediate_size": _width(b)} for b in blocks]
    config = model.config
    config.num_hidden_layers = len(blocks)
    widths = {s["intermediate_size"] for s in shapes}
    if len(widths) == 1:
        config.intermediate_size = widths.pop()
    setattr(config, BLOCKS_ATTR, shapes)


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Load ``state``; every parameter and buffer must be present (or tied to one that is), nothing extra."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"weights in {folder} do not fit the shapes its config records: {error}") from error
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in result.missing_keys if not (k in params and id(params[k]) in loaded)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights in {folder} do not match the model: missing {missing}, unexpected {result.unexpected_keys}"
        )


def _transformers_class(model: PreTrainedModel) -> type:
    """The model's nearest class that transformers itself exports (not a remote-code subclass)."""
    for cls in type(model).__mro__:
        if getattr(transformers, cls.__name__, None) is cls:
            return cls
    raise ValueError(f"{type(model).__name__} derives from no transformers model class; save_shrunk cannot record it")


# -- validation ---------------------------------------------------------------


def _checked_counts(name: str, counts: Mapping[int, int] | None, current: list[int]) -> dict[int, int]:
    if counts is None:
        return {}
    if not isinstance(counts, Mapping):
        raise ValueError(f"{name} must map block index -> number kept, got {type(counts).__name__}")
    checked = {}
    for index, keep in counts.items():
        if not _is_index(index) or not 0 <= index < len(current):
            raise ValueError(f"{name}: block index {index!r} is out of range; allowed 0..{len(current) - 1}")
        if not _is_index(keep) or not 0 <= keep <= current[index]:
            raise ValueError(f"{name}[{index}]={keep!r} is not allowed; block {index} can keep 0..{current[index]}")
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
