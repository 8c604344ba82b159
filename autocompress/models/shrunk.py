"""Shrunk models: encoder blocks of any family with a ``BlockLayout`` whose heads, FFN widths and vocabulary were cut.

The cutting is done by the techniques (``autocompress.techniques``: structured
and vocabulary pruning); this module holds what a shrunk model needs to exist
and to be saved and rebuilt. The head size never changes; a block's head count
is its attention width over the head size. A block may keep 0 neurons (its FFN
output is then the bias) and, where the family's layout names a ``headless``
module, 0 heads (likewise).

Where those parts live differs per family (BERT's ``attention.self.query``,
DistilBERT's ``attention.q_lin``, ...): a ``BlockLayout`` says, and
``autocompress.models.families`` holds one per family. The layout and per-block
shapes are recorded in the model's config (``autocompress_layout``,
``autocompress_blocks``) so the model can be rebuilt. This module imports only
torch, transformers, safetensors and the standard library on purpose:
``save_shrunk`` copies it next to the weights as the modeling file of Hugging
Face's custom-code mechanism (``auto_map``), so
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``
rebuilds any shrunk classifier (``AutoModel`` any shrunk bare encoder).

A pruned word embedding is a ``RemappedEmbedding``: the rows of the tokens a
task uses most, and a ``remap`` table sending every other token id to the kept
row nearest its own. The tokenizer and every
input id stay as they were; the kept row count is ``autocompress_vocab_rows``.
"""

from __future__ import annotations

import json
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


def save_shrunk(model: PreTrainedModel, folder: str | Path, *, tokenizer=None) -> Path:
    """Save with ``save_pretrained`` (safetensors) plus the layout and per-block shapes needed to rebuild it.

    A model whose shapes were changed also gets this module as its modeling
    file and an ``auto_map`` entry, for ``from_pretrained(folder, trust_remote_code=True)``.
    """
    folder = Path(folder)
    if hasattr(model.config, LAYOUT_ATTR):
        record_shapes(model, recorded_layout(model))
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
        auto = "AutoModelForSequenceClassification" if base.__name__.endswith("ForSequenceClassification") else "AutoModel"
        config["auto_map"] = {auto: f"{Path(MODELING_FILE).stem}.{shrunk}"}
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
    if getattr(model, "pooler", None) is not None and not any(key.startswith("pooler.") for key in state):
        model.pooler = None  # an encoder saved without the pooler it never ran (a sentence-embedding model)
    _load_strict(model, state, folder)
    return model.eval()


def _apply_recorded(model: PreTrainedModel, config) -> None:
    """Re-create (uninitialised) the recorded block shapes and the smaller word embedding, before weights load."""
    if hasattr(config, BLOCKS_ATTR):
        _apply_shapes(model, getattr(config, BLOCKS_ATTR))
    if hasattr(config, VOCAB_ATTR):
        old = model.get_input_embeddings()
        model.set_input_embeddings(RemappedEmbedding(old.num_embeddings, getattr(config, VOCAB_ATTR), old.embedding_dim))


# -- blocks -------------------------------------------------------------------


def recorded_layout(model: PreTrainedModel) -> BlockLayout:
    """The ``BlockLayout`` the model's config records (``record_shapes`` wrote it)."""
    recorded = getattr(model.config, LAYOUT_ATTR, None)
    if not recorded:
        raise ValueError(f"{type(model).__name__}'s config records no {LAYOUT_ATTR}; it was not shrunk by autocompress")
    return BlockLayout.from_dict(recorded)


def encoder_layers(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
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


def set_submodule(block: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, name, module)


def head_size(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.attention).attention_head_size


def num_heads(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.head_columns).in_features // head_size(block, layout)


def block_width(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.ffn_rows).out_features


def _hidden(block: nn.Module, layout: BlockLayout) -> int:
    return block.get_submodule(layout.head_columns).out_features


def row_linears(block: nn.Module, layout: BlockLayout) -> list[tuple[str, nn.Linear]]:
    """The head-owned row projections this block has (none once it is headless)."""
    found = [(path, _optional(block, path)) for path in layout.head_rows]
    return [(path, module) for path, module in found if isinstance(module, nn.Linear)]


def empty_linear(like: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    """A Linear of the given shape, dtype and device as ``like``; its values are overwritten by the caller."""
    weight = like.weight
    with warnings.catch_warnings():  # a block with 0 heads or neurons has zero-element weights
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return nn.Linear(
            in_features, out_features, bias=like.bias is not None, device=weight.device, dtype=weight.dtype
        )


def set_heads(block: nn.Module, layout: BlockLayout, heads: int) -> None:
    """Replace the attention by a headless one (0 heads) or update its head-count attributes."""
    attention, size = block.get_submodule(layout.attention), head_size(block, layout)
    if heads == 0:
        set_submodule(block, layout.headless, HeadlessSelfAttention(size, getattr(attention, "layer_idx", None)))
        return
    for name in layout.head_count_attrs:
        setattr(attention, name, heads)
    for name in layout.head_width_attrs:
        setattr(attention, name, heads * size)


def _apply_shapes(model: PreTrainedModel, shapes: Sequence[Mapping[str, int]]) -> None:
    """Re-create each block's Linears (uninitialised) with the recorded head count and FFN width."""
    layout = recorded_layout(model)
    blocks = encoder_layers(model, layout)
    if len(shapes) != len(blocks):
        raise ValueError(f"config.{BLOCKS_ATTR} lists {len(shapes)} blocks but the model has {len(blocks)}")
    for block, shape in zip(blocks, shapes):
        heads, width, hidden = shape["heads"], shape["intermediate_size"], _hidden(block, layout)
        size = head_size(block, layout)
        if heads:
            for path, linear in row_linears(block, layout):
                set_submodule(block, path, empty_linear(linear, heads * size, linear.in_features))
        set_heads(block, layout, heads)
        columns, rows, out = (block.get_submodule(p) for p in (layout.head_columns, layout.ffn_rows, layout.ffn_columns))
        set_submodule(block, layout.head_columns, empty_linear(columns, hidden, heads * size))
        set_submodule(block, layout.ffn_rows, empty_linear(rows, width, rows.in_features))
        set_submodule(block, layout.ffn_columns, empty_linear(out, out.out_features, width))


def record_shapes(model: PreTrainedModel, layout: BlockLayout) -> None:
    """Keep the HF config consistent with the blocks: layout, layer count, shared FFN width, per-block shapes."""
    blocks = encoder_layers(model, layout)
    shapes = [{"heads": num_heads(b, layout), "intermediate_size": block_width(b, layout)} for b in blocks]
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


