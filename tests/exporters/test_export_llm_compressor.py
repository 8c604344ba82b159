"""The ``llm-compressor`` export: a QuantizationModifier recipe that compressed-tensors applies to the saved float model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from autocompress.exporters import ExportMismatch, NotExpressible
from autocompress.exporters._base import compare, torch_outputs
from autocompress.exporters._llm_compressor import RECIPE, LlmCompressorExporter, load_quantized
from autocompress.policy import Policy

BLOCK = "bert.encoder.layer"
PARTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
DYNAMIC_INPUTS = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "tensor", "dynamic": True}


def linears(*blocks: int) -> list[str]:
    return [f"{BLOCK}.{b}.{part}" for b in blocks for part in PARTS]


def modifier(folder: Path) -> dict:
    return yaml.safe_load((folder / RECIPE).read_text())["quant_stage"]["quant_modifiers"]["QuantizationModifier"]


def groups_by_setting(recipe: dict) -> dict[tuple, list[str]]:
    """(bits, strategy, group_size, has input activations) → targets."""
    out = {}
    for group in recipe["config_groups"].values():
        w = group["weights"]
        assert w["type"] == "int" and w["symmetric"] is True and w["dynamic"] is False
        if "input_activations" in group:
            assert group["input_activations"] == DYNAMIC_INPUTS
        out[(w["num_bits"], w["strategy"], w.get("group_size"), "input_activations" in group)] = sorted(group["targets"])
    return out


def fake_quantized(module: torch.nn.Module) -> torch.Tensor:
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    return forward_quantize(module, module.weight.detach(), "weight", module.quantization_scheme.weights)


def test_mixed_per_channel_policy_exports_and_reloads_quantized(export_source, tmp_path):
    policy = {
        "layers": {
            f"re:{BLOCK}\\.[01]\\..*": {"bits": 8},  # per channel: weights and dynamic int8 activations
            f"re:{BLOCK}\\.[23]\\..*": {"bits": 4},
            f"{BLOCK}.5.intermediate.dense": {"bits": 16},
        },
        "embedding_bits": 8,
    }
    source = export_source(policy)
    report = LlmCompressorExporter().export(source, tmp_path)

    recipe = modifier(tmp_path)
    assert groups_by_setting(recipe) == {
        (4, "channel", None, False): sorted(linears(2, 3)),
        (8, "channel", None, False): ["bert.embeddings.word_embeddings"],
        (8, "channel", None, True): sorted(linears(0, 1)),
    }
    assert sorted(recipe["ignore"]) == sorted([*linears(4, 5), "bert.pooler.dense", "classifier"])
    assert {"recipe.yaml", "model/config.json", "model/model.safetensors", "policy.json"} <= set(report.files)
    assert report.score >= report.source_score - 0.005 and report.max_abs_diff <= report.tolerance
    assert any("16-bit" in note for note in report.notes)

    model = load_quantized(tmp_path)
    reference = dict(source.model.named_modules())
    layer = model.get_submodule(f"{BLOCK}.2.attention.self.query")
    quantized = fake_quantized(layer)
    assert not torch.equal(quantized, layer.weight)  # the float weight, rounded in forward
    assert max(len(row.unique()) for row in quantized) <= 16
    ours = reference[f"{BLOCK}.2.attention.self.query"].autocompress_quant
    step = ours.scales  # [out, 1]: compressed-tensors' grid is finer, so a weight lands within one of our steps
    assert ((quantized - reference[f"{BLOCK}.2.attention.self.query"].weight).abs() <= step * 1.0001).all()
    x = torch.randn(3, layer.in_features)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, quantized, layer.bias), atol=1e-5)  # forward uses it
    table = fake_quantized(model.get_submodule("bert.embeddings.word_embeddings"))
    assert max(len(row.unique()) for row in table[:64]) <= 255
    half = model.get_submodule(f"{BLOCK}.5.intermediate.dense")
    assert not hasattr(half, "quantization_scheme") and torch.equal(half.weight, half.weight.half().float())


def test_grouped_policy_with_structure_and_a_corrupted_recipe(export_source, tmp_path):
    policy = {
        "group_size": 32,
        "layers": {f"re:{BLOCK}\\.[012]\\..*": {"bits": 4}, f"re:{BLOCK}\\.3\\..*": {"bits": 8}},
        "heads": {1: 8},
        "ffn": {0: 1024},
        "kept_blocks": [0, 1, 2, 3, 5],
    }
    source = export_source(policy)
    exporter = LlmCompressorExporter()
    report = exporter.export(source, tmp_path)

    recipe = modifier(tmp_path)
    assert groups_by_setting(recipe) == {
        (4, "group", 32, False): sorted(linears(0, 1, 2)),
        (8, "group", 32, False): sorted(linears(3)),
    }
    assert sorted(recipe["ignore"]) == sorted([*linears(4), "bert.pooler.dense", "classifier"])  # original block 5 is block 4 now
    assert "model/modeling_autocompress.py" in report.files  # reshaped blocks load as remote code
    assert report.score >= report.source_score - 0.005

    model = load_quantized(tmp_path)
    layer = model.get_submodule(f"{BLOCK}.1.attention.self.query")
    assert layer.weight.shape == (256, 384)  # 8 heads of 32 kept
    groups = fake_quantized(layer).view(256, -1, 32)
    assert max(len(g.unique()) for g in groups.reshape(-1, 32)) <= 16
    assert not torch.equal(fake_quantized(layer), layer.weight)

    # A recipe that says 2 bits where the policy has 4: the applied settings and the logits both give it away.
    text = (tmp_path / RECIPE).read_text()
    (tmp_path / RECIPE).write_text(text.replace("num_bits: 4", "num_bits: 2"))
    with pytest.raises(ExportMismatch, match=r"unlike the policy: .*int2 group 32, policy int4 group 32"):
        exporter.verify(source, tmp_path)
    logits = torch_outputs(load_quantized(tmp_path), source)
    with pytest.raises(ExportMismatch, match="differ from the source's"):
        compare(exporter.name, tmp_path, source, logits, tolerance=exporter.tolerance_for(source, tmp_path), files=[], notes=[])


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"scheme": "kmeans", "layers": {f"re:{BLOCK}\\..*": {"bits": 4}}}, "scheme='kmeans'"),
        ({"layers": {f"{BLOCK}.0.output.dense": {"bits": 2}}}, f"bits=2 \\(layers {BLOCK}.0.output.dense\\)"),
    ],
)
def test_inexpressible_policies_are_refused_before_writing(tmp_path, policy, named):
    with pytest.raises(NotExpressible, match=named):
        LlmCompressorExporter().export(SimpleNamespace(policy=Policy.from_dict(policy)), tmp_path)
    assert not any(tmp_path.iterdir())
