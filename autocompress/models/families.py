"""Encoder families: where each keeps its blocks, attention and FFN, and which inputs it takes.

One small adapter per family (``_bert.py``, ``_distilbert.py``, ...), found
from the model's ``config.model_type``. A family without an adapter still gets
quantization and magnitude pruning (its blocks are the longest
``nn.ModuleList``); structured choices (heads, FFN widths, blocks) are refused
when the config is checked. To add a family: write ``_<family>.py`` with an
``ADAPTER``, list it in ``ADAPTERS`` below, and add a tiny config of it to
``tests/families.py`` — the contract tests in ``tests/models/test_families.py``
then run it through shrinking, saving, ONNX export, lowering and verification.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PretrainedConfig, PreTrainedModel

from autocompress.models import _albert, _bert, _deberta_v2, _distilbert, _mpnet
from autocompress.models._base import Adapter
from autocompress.models.shrunk import BlockLayout

ADAPTERS: tuple[Adapter, ...] = (_bert.ADAPTER, _distilbert.ADAPTER, _albert.ADAPTER, _mpnet.ADAPTER, _deberta_v2.ADAPTER)

TOKENIZER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""Tokenizer outputs a classifier may take, in the order exported graphs list them."""

_BY_TYPE = {model_type: adapter for adapter in ADAPTERS for model_type in adapter.model_types}

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "encoder_blocks", "ffn_width", "layout_for", "len_blocks", "model_inputs", "supported_types"]


def supported_types() -> list[str]:
    """Every ``model_type`` with structured pruning."""
    return sorted(_BY_TYPE)


def adapter_for(config: PretrainedConfig | PreTrainedModel) -> Adapter | None:
    """The family adapter of a model or its config, or None for a family without one."""
    config = getattr(config, "config", config)
    adapter = _BY_TYPE.get(getattr(config, "model_type", None))
    if adapter is _albert.ADAPTER and getattr(config, "num_hidden_groups", 1) != 1:
        return None
    return adapter


def layout_for(model: PreTrainedModel) -> BlockLayout:
    """The model's ``BlockLayout``; a one-line ``ValueError`` names the supported types if it has none."""
    adapter = adapter_for(model)
    if adapter is None:
        raise ValueError(
            f"structured pruning has no adapter for model type {getattr(model.config, 'model_type', None)!r}; "
            f"supported: {supported_types()}"
        )
    return adapter.layout


def encoder_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The encoder's repeated blocks, in order: the adapter's, else the longest ``nn.ModuleList``."""
    adapter = adapter_for(model)
    if adapter is not None:
        return model.base_model.get_submodule(adapter.layout.blocks)
    candidates = [(len(m), name) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no repeated blocks (nn.ModuleList) to compress")
    return model.get_submodule(max(candidates)[1])


def ffn_width(config: PretrainedConfig) -> int:
    """The FFN width the config declares (DistilBERT calls it ``hidden_dim``)."""
    adapter = adapter_for(config)
    names = (adapter.layout.ffn_config_attr,) if adapter else ("intermediate_size", "hidden_dim")
    for name in names:
        if getattr(config, name, None):
            return int(getattr(config, name))
    return 4 * config.hidden_size


def len_blocks(config: PretrainedConfig) -> int:
    """Blocks a policy addresses: the depth, or 1 for a family whose one block is shared across depth (ALBERT)."""
    adapter = adapter_for(config)
    return 1 if adapter is not None and adapter.layout.shared_blocks else config.num_hidden_layers


def model_inputs(model: PreTrainedModel | type[PreTrainedModel]) -> tuple[str, ...]:
    """Tokenizer outputs the model's ``forward`` accepts (DistilBERT, MPNet: no ``token_type_ids``)."""
    accepted = inspect.signature(model.forward).parameters
    return tuple(name for name in TOKENIZER_INPUTS if name in accepted)
