"""Structured pruning that physically shrinks encoder blocks of any family with a ``BlockLayout``, and the vocabulary.

Unstructured sparsity gives no speed or dense-size gain on our runtimes, so this
removes whole attention heads (the rows of the projections a head owns and the
attention output's columns), whole FFN neurons (FFN input rows and output
columns) and whole blocks: the matrices get smaller. The head size never
changes; a block's head count is its attention width over the head size. A
block may keep 0 neurons (its FFN output is then the bias) and, where the
family's layout names a ``headless`` module, 0 heads (likewise).

Where those parts live differs per family (BERT's ``attention.self.query``,
DistilBERT's ``attention.q_lin``, ...): a ``BlockLayout`` says, and
``autocompress.architectures`` holds one per family. The layout and per-block
shapes are recorded in the model's config (``autocompress_layout``,
``autocompress_blocks``) so the model can be rebuilt. This module imports only
torch, transformers, safetensors and the standard library on purpose:
``save_shrunk`` copies it next to the weights as the modeling file of Hugging
Face's custom-code mechanism (``auto_map``), so
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``
rebuilds any shrunk classifier.

The word embedding shrinks too: ``prune_vocabulary_`` keeps the rows of the
tokens a task uses most and sends every other token id, through a ``remap``
table in the model, to the kept row nearest its own. The tokenizer and every
input id stay as they were; the kept row count is ``autocompress_vocab_rows``.
"""

from __future__ import annotations

import json
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, PreTrainedModel

BLOCKS_ATTR = "autocompress_blocks"
"""Config attribute listing each block's ``{"heads": h, "intermediate_size": f}``."""

LAYOUT_ATTR = "autocompress_layout"
"""Config attribute holding the ``BlockLayout`` (as a dict) the shapes refer to."""

VOCAB_ATTR = "autocompress_vocab_rows"
"""Config attribute: rows kept in the word embedding (a ``RemappedEmbedding``); absent when all are kept."""

MODELING_FILE = "modeling_autocompress.py"
"""Name under which ``save_shrunk`` copies this module into a saved folder."""


@dataclass(frozen=True)
class BlockLayout:
    """Where a family keeps the parts structured pruning cuts; paths are relative to a block unless noted."""

    blocks: str
    """The ``nn.ModuleList`` of encoder blocks, relative to ``model.base_model``."""
    attention: str
    """The self-attention module: holds ``attention_head_size`` and the head-count attributes, returns (output, probabilities)."""
    head_rows: tuple[str, ...]
    """Linears whose output rows are grouped by head (q, k, v; absent ones, e.g. optional position projections, are skipped)."""
    head_columns: str
    """The Linear whose input columns are grouped by head: the attention output projection."""
    ffn_rows: str
    """FFN input Linear (one output row per neuron)."""
    ffn_columns: str
    """FFN output Linear (one input column per neuron)."""
    head_count_attrs: tuple[str, ...] = ("num_attention_heads",)
    """Attributes of ``attention`` set to the kept head count."""
    head_width_attrs: tuple[str, ...] = ("all_head_size",)
    """Attributes of ``attention`` set to heads x head size."""
    headless: str | None = None
    """Module replaced by a zero-width ``HeadlessSelfAttention`` when a block keeps no head; None: 0 heads unsupported."""
    ffn_config_attr: str = "intermediate_size"
    """Config field of the FFN width."""
    shared_blocks: bool = False
    """Blocks are re-used across depth (ALBERT): their count is not the model's depth, and none can be dropped."""
    fixed_heads: str | None = None
    """Why heads cannot be removed in this family (e.g. a position bias shared by all blocks per head); None: they can."""

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "BlockLayout":
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


class HeadlessSelfAttention(nn.Module):
    """Self-attention with every head removed: it outputs a zero-width tensor.

    The attention output projection then has no input columns, so the block's
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


class RemappedEmbedding(nn.Embedding):
    """A word embedding with fewer rows than the tokenizer has ids; ``remap`` sends each id to its row.

    Lowered to ONNX it is two Gathers: the id table (int32, 4 bytes per
    tokenizer id), then the smaller embedding table.
    """

    def __init__(self, vocab_size: int, rows: int, dim: int, padding_idx: int | None = None) -> None:
        super().__init__(rows, dim, padding_idx=padding_idx)
        self.register_buffer("remap", torch.zeros(vocab_size, dtype=torch.int32))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(self.remap[input_ids])


def is_shrunk(config) -> bool:
    """Whether a config records shapes stock transformers cannot allocate (blocks or vocabulary)."""
    has = (lambda key: key in config) if isinstance(config, Mapping) else (lambda key: hasattr(config, key))
    return has(BLOCKS_ATTR) or has(VOCAB_ATTR)


def shrunk_class(base: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """``base`` built with the layout and per-block shapes its config records.

    Named by ``auto_map`` in folders written by ``save_shrunk``, so Hugging Face's
    loader allocates the right shapes before it reads the weights.
    """

    def __init__(self, config) -> None:
        base.__init__(self, config)
        _apply_recorded(self, config)

    return type(f"Shrunk{base.__name__}", (base,), {"__init__": __init__, "__module__": __name__})


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied ones counted once)."""
    return sum(p.numel() for p in model.parameters())


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
    (default: the one the config records, else ``autocompress.architectures``'
    for the model). Everything is validated before anything changes.
    """
    layout = _layout_of(model, layout)
    blocks = _encoder_layers(model, layout)
    if heads and layout.fixed_heads:
        raise ValueError(f"heads={dict(heads)} is not allowed for {type(model).__name__}: {layout.fixed_heads}")
    heads = _checked_counts("heads", heads, [_num_heads(b, layout) for b in blocks], low=0 if layout.headless else 1)
    ffn = _checked_counts("ffn", ffn, [_width(b, layout) for b in blocks], low=0)
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
    _record_shapes(model, layout)
    return model


def save_shrunk(model: PreTrainedModel, folder: str | Path, *, tokenizer=None) -> Path:
    """Save with ``save_pretrained`` (safetensors) plus the layout and per-block shapes needed to rebuild it.

    A model whose shapes were changed also gets this module as its modeling
    file and an ``auto_map`` entry, for ``from_pretrained(folder, trust_remote_code=True)``.
    """
    folder = Path(folder)
    if hasattr(model.config, LAYOUT_ATTR):
        _record_shapes(model, _layout_of(model, None))
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    base = _transformers_class(model)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [base.__name__]
    if is_shrunk(config):
        shrunk = shrunk_class(base).__name__
        source = Path(__file__).read_text()
        (folder / MODELING_FILE).write_text(f"{source}\n\n{shrunk} = shrunk_class(transformers.{base.__name__})\n")
        config["auto_map"] = {"AutoModelForSequenceClassification": f"{Path(MODELING_FILE).stem}.{shrunk}"}
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
    _apply_recorded(model, config)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    _load_strict(model, state, folder)
    return model.eval()


def prune_vocabulary_(model: PreTrainedModel, rows: int, *, counts: torch.Tensor, always: Sequence[int]) -> None:
    """Keep ``rows`` word-embedding rows: the ``always`` ids, then the most counted; map every other id to its nearest.

    ``counts`` holds how often the task's training text produces each token
    id. Nearest is by cosine similarity of the rows as they are now, so a
    token the task never produced reads a row that means something like it,
    not ``[UNK]``'s.
    """
    embedding = model.get_input_embeddings()
    if isinstance(embedding, RemappedEmbedding):
        raise ValueError("the vocabulary is already pruned")
    vocab, dim = embedding.weight.shape
    always = sorted(set(always))
    if not len(always) < rows < vocab:
        raise ValueError(f"vocab_rows={rows}: keep more than the {len(always)} special tokens and fewer than the {vocab} rows there are")
    if counts.dim() != 1 or len(counts) > vocab:
        raise ValueError(f"token counts cover {tuple(counts.shape)} ids; the embedding has {vocab} rows")
    counts = nn.functional.pad(counts, (0, vocab - len(counts)))  # rows past the tokenizer's ids: never produced
    special = set(always)
    ranked = [i for i in torch.argsort(-counts.long(), stable=True).tolist() if i not in special]  # ties: lower id first
    keep = torch.tensor(sorted(always + ranked[: rows - len(always)]))
    weight = embedding.weight.detach()
    remap = torch.full((vocab,), -1, dtype=torch.int32)
    remap[keep] = torch.arange(rows, dtype=torch.int32)
    kept = nn.functional.normalize(weight[keep], dim=1)
    for chunk in (remap < 0).nonzero().flatten().split(4096):
        remap[chunk] = (nn.functional.normalize(weight[chunk], dim=1) @ kept.T).argmax(1).int()
    padding = embedding.padding_idx
    smaller = RemappedEmbedding(vocab, rows, dim, padding_idx=int(remap[padding]) if padding in special else None)
    smaller.to(weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(weight[keep])
        smaller.remap.copy_(remap)
    model.set_input_embeddings(smaller)
    setattr(model.config, VOCAB_ATTR, rows)


def _apply_recorded(model: PreTrainedModel, config) -> None:
    """Re-create (uninitialised) the recorded block shapes and the smaller word embedding, before weights load."""
    if hasattr(config, BLOCKS_ATTR):
        _apply_shapes(model, getattr(config, BLOCKS_ATTR))
    if hasattr(config, VOCAB_ATTR):
        old = model.get_input_embeddings()
        model.set_input_embeddings(RemappedEmbedding(old.num_embeddings, getattr(config, VOCAB_ATTR), old.embedding_dim))


# -- blocks -------------------------------------------------------------------


def _layout_of(model: PreTrainedModel, layout: BlockLayout | None) -> BlockLayout:
    """The given layout, else the one the config records, else the family's (inside the package only)."""
    if layout is not None:
        return layout
    recorded = getattr(model.config, LAYOUT_ATTR, None)
    if recorded:
        return BlockLayout.from_dict(recorded)
    from autocompress.architectures import layout_for  # a saved copy of this module always has its layout recorded

    return layout_for(model)


def _encoder_layers(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    try:
        blocks = base.get_submodule(layout.blocks)
    except AttributeError:
        blocks = None
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ValueError(f"{type(model).__name__} has no encoder blocks at {layout.blocks!r} (its BlockLayout)")
    return blocks


def _optional(block: nn.Module, path: str) -> nn.Module | None:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def _set(block: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, name, module)


def _head_size(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.attention).attention_head_size


def _num_heads(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.head_columns).in_features // _head_size(block, layout)


def _width(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.ffn_rows).out_features


def _hidden(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.head_columns).out_features


def _row_linears(block: nn.Module, layout: BlockLayout) -> list[tuple[str, nn.Linear]]:
    """The head-owned row projections this block has (none once it is headless)."""
    found = [(path, _optional(block, path)) for path in layout.head_rows]
    return [(path, module) for path, module in found if isinstance(module, nn.Linear)]


# -- importance ---------------------------------------------------------------


def _head_weights(block: nn.Module, layout: BlockLayout) -> list[tuple[torch.Tensor, int]]:
    """(weight, dimension indexing heads) for every matrix a head owns."""
    rows = [(linear.weight, 0) for _, linear in _row_linears(block, layout)] if _num_heads(block, layout) else []
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


def _scores(model: PreTrainedModel, calibration, layout: BlockLayout) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Head and neuron scores of every block, from one backward pass when calibrating."""
    blocks = _encoder_layers(model, layout)
    groups = [(_head_weights(b, layout), _num_heads(b, layout)) for b in blocks]
    groups += [(_neuron_weights(b, layout), _width(b, layout)) for b in blocks]
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


def _set_heads(block: nn.Module, layout: BlockLayout, heads: int) -> None:
    """Replace the attention by a headless one (0 heads) or update its head-count attributes."""
    attention, size = block.get_submodule(layout.attention), _head_size(block, layout)
    if heads == 0:
        _set(block, layout.headless, HeadlessSelfAttention(size, getattr(attention, "layer_idx", None)))
        return
    for name in layout.head_count_attrs:
        setattr(attention, name, heads)
    for name in layout.head_width_attrs:
        setattr(attention, name, heads * size)


def _keep_heads(block: nn.Module, heads: torch.Tensor, layout: BlockLayout) -> None:
    rows = _head_rows(heads, _head_size(block, layout))
    columns = block.get_submodule(layout.head_columns)
    if len(heads):
        for path, linear in _row_linears(block, layout):
            _set(block, path, _sliced(linear, rows, 0))
    _set_heads(block, layout, len(heads))
    _set(block, layout.head_columns, _sliced(columns, rows, 1))


def _keep_neurons(block: nn.Module, neurons: torch.Tensor, layout: BlockLayout) -> None:
    _set(block, layout.ffn_rows, _sliced(block.get_submodule(layout.ffn_rows), neurons, 0))
    _set(block, layout.ffn_columns, _sliced(block.get_submodule(layout.ffn_columns), neurons, 1))


def _keep_blocks(blocks: nn.ModuleList, kept: Sequence[int]) -> None:
    """Keep only blocks ``kept``, re-indexed from 0, with their ``layer_idx`` renumbered."""
    survivors = [blocks[i] for i in kept]
    del blocks[:]
    blocks.extend(survivors)
    for index, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index


def _apply_shapes(model: PreTrainedModel, shapes: Sequence[Mapping[str, int]]) -> None:
    """Re-create each block's Linears (uninitialised) with the recorded head count and FFN width."""
    layout = _layout_of(model, None)
    blocks = _encoder_layers(model, layout)
    if len(shapes) != len(blocks):
        raise ValueError(f"config.{BLOCKS_ATTR} lists {len(shapes)} blocks but the model has {len(blocks)}")
    for block, shape in zip(blocks, shapes):
        heads, width, hidden = shape["heads"], shape["intermediate_size"], _hidden(block, layout)
        size = _head_size(block, layout)
        if heads:
            for path, linear in _row_linears(block, layout):
                _set(block, path, _empty_linear(linear, heads * size, linear.in_features))
        _set_heads(block, layout, heads)
        columns, rows, out = (block.get_submodule(p) for p in (layout.head_columns, layout.ffn_rows, layout.ffn_columns))
        _set(block, layout.head_columns, _empty_linear(columns, hidden, heads * size))
        _set(block, layout.ffn_rows, _empty_linear(rows, width, rows.in_features))
        _set(block, layout.ffn_columns, _empty_linear(out, out.out_features, width))


def _record_shapes(model: PreTrainedModel, layout: BlockLayout) -> None:
    """Keep the HF config consistent with the blocks: layout, layer count, shared FFN width, per-block shapes."""
    blocks = _encoder_layers(model, layout)
    shapes = [{"heads": _num_heads(b, layout), "intermediate_size": _width(b, layout)} for b in blocks]
    config = model.config
    if not layout.shared_blocks:
        config.num_hidden_layers = len(blocks)
    widths = {s["intermediate_size"] for s in shapes}
    if len(widths) == 1:
        setattr(config, layout.ffn_config_attr, widths.pop())
    setattr(config, LAYOUT_ATTR, layout.to_dict())
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
