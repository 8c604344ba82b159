"""The adapter contract, run on a tiny random model of every encoder family (``tests/families.py``).

A family's adapter is right when its blocks shrink exactly (removing a head
or neuron equals zeroing its output columns), the shrunk model reloads from
its folder, and the compressed model exports, lowers onto ONNX Runtime's
integer kernels and verifies against torch.
"""

from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch
from families import FAMILIES, tiny_model
from transformers import AutoModelForSequenceClassification, DebertaConfig

from autocompress.config import ConfigError, parse_config
from autocompress.controller.space_check import check_space
from autocompress.models.families import adapter_for, encoder_blocks, ffn_width, len_blocks, model_inputs
from autocompress.models.shrunk import load_shrunk, save_shrunk
from autocompress.policy import LayerSpec, Policy
from autocompress.runtime import export_onnx, lower, verify
from autocompress.techniques import compress, head_importance, neuron_importance, shrink_

HEAD = 8  # 32 hidden / 4 heads


@pytest.fixture(scope="module")
def batch(tokenizer, sentences):
    texts = list(sentences.texts)
    encoded = tokenizer(texts[:6], texts[6:12], padding=True, truncation=True, max_length=40, return_tensors="pt")
    return {**encoded, "labels": torch.tensor([0, 1, 0, 1, 1, 0])}


def inputs_of(model, batch):
    return {name: batch[name] for name in model_inputs(model)}


def logits(model, batch):
    with torch.no_grad():
        return model(**inputs_of(model, batch)).logits


def cuts(adapter, blocks: int) -> dict:
    """Heads and neurons kept per block, as far as the family allows: an empty FFN, and 0 heads where possible."""
    last = blocks - 1
    cut = {"ffn": {0: 24, last: 0}}
    if adapter.prunes_heads:
        cut["heads"] = {0: 2, last: 0 if adapter.zero_heads else 1}
    return cut


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_names_every_part_of_every_block(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    layout, config = adapter.layout, model.config
    blocks = encoder_blocks(model)
    assert len(blocks) == len_blocks(config) == (1 if layout.shared_blocks else 2)
    for block in blocks:
        rows = [block.get_submodule(path) for path in layout.head_rows if _has(block, path)]
        assert len(rows) >= 3 and all(r.out_features == 32 for r in rows)
        assert block.get_submodule(layout.head_columns).in_features == 32
        assert block.get_submodule(layout.ffn_rows).out_features == ffn_width(config) == 64
        assert block.get_submodule(layout.ffn_columns).in_features == 64
        assert block.get_submodule(layout.attention).attention_head_size == HEAD
    if family == "deberta-v3-unshared":  # the relative-position projections exist and belong to the heads
        assert len([p for p in layout.head_rows if _has(blocks[0], p)]) == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_shrinking_equals_zeroing_what_was_removed(family, batch):
    base = tiny_model(family)
    adapter, layout = adapter_for(base), adapter_for(base).layout
    cut = cuts(adapter, len(encoder_blocks(base)))
    head_scores, neuron_scores = head_importance(base), neuron_importance(base)
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for i, keep in cut.get("heads", {}).items():
            dropped = torch.ones(32, dtype=torch.bool)
            kept = torch.topk(head_scores[i], keep).indices
            dropped[(kept[:, None] * HEAD + torch.arange(HEAD)).flatten()] = False
            encoder_blocks(reference)[i].get_submodule(layout.head_columns).weight[:, dropped] = 0
        for i, keep in cut["ffn"].items():
            dropped = torch.ones(64, dtype=torch.bool)
            dropped[torch.topk(neuron_scores[i], keep).indices] = False
            encoder_blocks(reference)[i].get_submodule(layout.ffn_columns).weight[:, dropped] = 0

    model = shrink_(copy.deepcopy(base), **cut)
    result = logits(model, batch)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in base.parameters())
    assert not torch.allclose(result, logits(base, batch), atol=1e-6)
    torch.testing.assert_close(result, logits(reference, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_shrunk_model_reloads_with_and_without_autocompress(family, batch, tmp_path):
    model = tiny_model(family)
    shrink_(model, **cuts(adapter_for(model), len(encoder_blocks(model))))
    save_shrunk(model, tmp_path)
    remote = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(remote).__name__ == f"Shrunk{type(model).__name__}"
    for loaded in (load_shrunk(tmp_path), remote):
        torch.testing.assert_close(logits(loaded, batch), logits(model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_model_lowers_to_integer_kernels_and_verifies(family, batch, tmp_path):
    model = tiny_model(family)
    adapter = adapter_for(model)
    blocks = len(encoder_blocks(model))
    policy = Policy(  # every width a multiple of the group: no 0-width or 1-head (8-column) Linear to quantize
        layers={r"re:.*\.0\..*": LayerSpec(bits=8, prune_ratio=0.25), "re:.*": LayerSpec(bits=4)},
        group_size=16,
        embedding_bits=8,
        heads={0: 2} if adapter.prunes_heads else {},
        ffn={0: 32, blocks - 1: 16},
        kept_blocks=(1,) if adapter.drops_blocks else None,
    )
    compressed = compress(model, policy, calibration=batch)
    example = {k: v[:2] for k, v in inputs_of(model, batch).items()}
    exported = export_onnx(compressed, tmp_path / "fp32.onnx", example=example, lean=True)  # as a trial deploys it
    report = lower(compressed, exported, tmp_path / "model.onnx", accuracy_level=0)
    ops = {layer.op for layer in report.layers.values()}
    assert ops >= {"MatMulNBits"} and len(report.layers) >= 6, report.layers
    graph = onnx.load(report.path).graph
    float_matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in {i.name for i in graph.initializer}]
    assert not [n for n in float_matmuls if "layer" in n], float_matmuls  # every use of a block's weight, shared ones too
    metadata = {p.key: p.value for p in onnx.load(report.path).metadata_props}
    assert json.loads(metadata["id2label"]) == {"0": "LABEL_0", "1": "LABEL_1"}
    check = verify(report.path, compressed, [batch], threads=1)
    assert check.n == 6 and check.max_abs_diff < 1e-3


def test_a_family_without_an_adapter_is_quantized_but_refuses_structured_choices(batch, tmp_path):
    """DeBERTa v1 fuses q/k/v into one ``in_proj``: no adapter, yet its Linears quantize, lower and verify."""
    torch.manual_seed(0)
    config = DebertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=30522)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert adapter_for(model) is None and len(encoder_blocks(model)) == 2
    compressed = compress(model, Policy(layers={"re:.*": LayerSpec(bits=8, prune_ratio=0.5)}), calibration=batch)
    exported = export_onnx(compressed, tmp_path / "fp32.onnx", example={k: v[:2] for k, v in inputs_of(model, batch).items()})
    report = lower(compressed, exported, tmp_path / "model.onnx", accuracy_level=0)
    assert sum(layer.op == "MatMulInteger" for layer in report.layers.values()) == 8  # in_proj, attention output, FFN in and out, per block
    verify(report.path, compressed, [batch], threads=1)
    with pytest.raises(ValueError, match="no adapter for model type 'deberta'"):
        shrink_(model, ffn={0: 8})
    with pytest.raises(ConfigError, match=r"space\.ffn_widths: \[32\] needs structured pruning, which supports model types \[.*'distilbert'"):
        check_space(parse_config({"space": {"ffn_widths": [32]}}, "s.yaml"), config)


@pytest.mark.parametrize(
    ("family", "space", "message"),
    [
        ("mpnet", {"heads": [2, 4]}, r"s\.yaml: space\.heads: \[2, 4\] is not allowed for MPNet: its relative position bias"),
        ("albert", {"num_blocks": [1]}, r"s\.yaml: space\.num_blocks: \[1\] is not allowed for ALBERT: one shared block"),
        ("distilbert", {"heads": [0, 4], "weight_bits": [32]}, r"space\.heads: 0 is not allowed; .*allowed 1\.\.4 \(DistilBERT: every block keeps"),
    ],
)
def test_choices_a_family_cannot_take_are_refused_in_one_line(family, space, message):
    with pytest.raises(ConfigError, match=message):
        check_space(parse_config({"space": space}, "s.yaml"), FAMILIES[family])


def test_zero_heads_are_allowed_where_the_family_has_a_headless_block():
    summary = check_space(parse_config({"space": {"heads": [0, 4], "weight_bits": [32]}}, "s.yaml"), FAMILIES["deberta-v2"])
    assert summary.num_heads == 4


def test_the_tokenizer_emits_only_inputs_the_model_takes(tmp_path):
    from families import save_tiny

    from autocompress.models.loading import load_tokenizer

    assert "token_type_ids" in load_tokenizer(str(save_tiny("bert", tmp_path / "bert")))("a", "b")
    assert set(load_tokenizer(str(save_tiny("distilbert", tmp_path / "distil")))("a", "b")) == {"input_ids", "attention_mask"}


def _has(block, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True
