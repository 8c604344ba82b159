"""The ort-recipe format: ONNX Runtime's own quantization tools rebuild the mixed model, compared with autocompress's lowering."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from autocompress.exporters import ExportMismatch, NotExpressible, Source, exporter
from autocompress.exporters._ort_recipe import OrtRecipeExporter
from autocompress.measurement._deployed import EXACT_NBITS
from autocompress.models.loading import load_classifier, resolve_model_path
from autocompress.policy import Policy
from autocompress.runtime import export_onnx, lower, ort_feed, ort_session

BLOCKS = "re:bert\\.encoder\\.layer\\.{}\\..*"
LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")  # fmt: skip
KERNELS = ("MatMulInteger", "MatMulNBits", "GatherBlockQuantized")
PER_CHANNEL = {"layers": {BLOCKS.format("[0-1]"): {"bits": 8}, BLOCKS.format("[2-3]"): {"bits": 4}}, "group_size": None}
GROUPED = {
    "layers": {BLOCKS.format("[0-1]"): {"bits": 8}, BLOCKS.format("[2-3]"): {"bits": 4}},
    "group_size": 32,
    "embedding_bits": 4,
}
"""group_size is one per policy: 8-bit per channel (MatMulInteger) and 4-bit in groups of 32 need two policies."""


def names(blocks):
    return sorted(f"bert.encoder.layer.{b}.{linear}" for b in blocks for linear in LINEARS)


def kernels(path):
    counts = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return {op: counts.get(op, 0) for op in KERNELS}


def logits_of(path, dev):
    session = ort_session(path, threads=2)
    return np.concatenate([session.run(["logits"], ort_feed(session, batch))[0] for batch in dev])


@pytest.fixture(scope="module")
def exported(probe_head, export_dev, sentence_batches, tmp_path_factory):
    """``export_source``'s Source (once per policy for the module), its ort-recipe export, and autocompress's own lowering."""
    done = {}

    def build(key, policy):
        if key not in done:
            torch.manual_seed(0)
            model = load_classifier("default")
            model.load_state_dict(probe_head, strict=False)
            source = Source.build(model.eval(), Policy.from_dict(policy), dev=export_dev,
                                  tokenizer_dir=Path(resolve_model_path("default")), calibration=sentence_batches[0])  # fmt: skip
            folder = tmp_path_factory.mktemp(key)
            report = exporter("ort-recipe").export(source, folder / "recipe")
            example = {k: v[:2] for k, v in export_dev[0].items() if k != "labels"}
            ours = lower(source.model, export_onnx(source.model, folder / "ours.fp32.onnx", example=example), folder / "ours.onnx",
                         accuracy_level=EXACT_NBITS)  # fmt: skip
            done[key] = source, folder / "recipe", report, kernels(ours.path), logits_of(ours.path, export_dev)
        return done[key]

    return build


def test_mixed_policy_rebuilds_with_matmulnbits_and_quantize_dynamic_passes(exported):
    source, folder, report, our_kernels, our_logits = exported("per-channel", PER_CHANNEL)
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["version"] == 1 and {"model.fp32.onnx", "recipe.json", "rebuild.py", "model.onnx"} <= set(report.files)
    assert kernels(folder / "model.fp32.onnx") == dict.fromkeys(KERNELS, 0)  # the shipped input is the float model

    *nbits, dynamic = recipe["passes"]
    node_of = {name: entry["node"] for name, entry in recipe["layers"].items()}
    assert dynamic["tool"] == "quantize_dynamic" and dynamic["per_channel"] is True and dynamic["reduce_range"] is False
    assert sorted(dynamic["nodes_to_quantize"]) == sorted(node_of[n] for n in names([0, 1]))
    assert [(p["tool"], p["bits"], p["block_size"], p["is_symmetric"]) for p in nbits] == [
        ("MatMulNBitsQuantizer", 4, 128, True), ("MatMulNBitsQuantizer", 4, 256, True)]  # fmt: skip
    ffn_out = [f"bert.encoder.layer.{b}.output.dense" for b in (2, 3)]  # 1536 inputs: blocks of 256; 384 inputs: 128
    assert sorted(nbits[1]["nodes"]) == sorted(node_of[n] for n in ffn_out)
    assert sorted(nbits[0]["nodes"] + nbits[1]["nodes"]) == sorted(node_of[n] for n in names([2, 3]))
    for step in nbits:  # limited by exclusion: the 8-bit and float layers, and the other pass's nodes
        assert set(step["nodes_to_exclude"]) >= {node_of[n] for n in names([0, 1, 4, 5])} and not set(step["nodes"]) & set(
            step["nodes_to_exclude"]
        )
    assert all(recipe["layers"][n]["bits"] == 32 and "pass" not in recipe["layers"][n] for n in names([4, 5]))

    rebuilt = kernels(folder / "model.onnx")
    assert rebuilt == {"MatMulInteger": 12, "MatMulNBits": 12, "GatherBlockQuantized": 0} == our_kernels
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert {node_of[n] for n in names([4, 5])} <= {
        node.name for node in graph.node if node.op_type == "MatMul"
    }  # 32-bit stay fp32
    logits = logits_of(folder / "model.onnx", source.dev)
    vs_source, vs_ours = float(np.abs(logits - source.outputs).max()), float(np.abs(logits - our_logits).max())
    print(
        f"\nper-channel: tolerance {report.tolerance:.3f}, max|Δlogit| vs source {vs_source:.3f}, vs our lowering {vs_ours:.3f}"
    )
    assert report.max_abs_diff == pytest.approx(vs_source, abs=1e-5) and max(vs_source, vs_ours) <= report.tolerance
    assert report.tolerance < 0.5 * float(np.abs(source.outputs).max())  # a bound, not a blank cheque
    assert report.score >= report.source_score - 0.005
    assert any("per-block scales" in note for note in report.notes)


def test_grouped_policy_with_a_4bit_embedding_adds_a_gather_pass(exported):
    source, folder, report, our_kernels, our_logits = exported("grouped", GROUPED)
    recipe = json.loads((folder / "recipe.json").read_text())
    node_of = {name: entry["node"] for name, entry in recipe["layers"].items()}
    assert [(p["op_types_to_quantize"], p["bits"], p["block_size"]) for p in recipe["passes"]] == [
        (["MatMul"], 4, 32),
        (["MatMul"], 8, 32),
        (["Gather"], 4, 128),
    ]  # no quantize_dynamic: 8-bit groups run on MatMulNBits
    assert sorted(recipe["passes"][0]["nodes"]) == sorted(node_of[n] for n in names([2, 3]))
    assert sorted(recipe["passes"][1]["nodes"]) == sorted(node_of[n] for n in names([0, 1]))
    gather = recipe["passes"][2]
    assert gather["nodes"] == [node_of["bert.embeddings.word_embeddings"]] and gather["quant_axes"] == [["Gather", 1]]
    assert any("position_embeddings" in n for n in gather["nodes_to_exclude"])  # the other tables stay float

    rebuilt = kernels(folder / "model.onnx")
    assert rebuilt == {"MatMulInteger": 0, "MatMulNBits": 24, "GatherBlockQuantized": 1} == our_kernels
    logits = logits_of(folder / "model.onnx", source.dev)
    vs_source, vs_ours = float(np.abs(logits - source.outputs).max()), float(np.abs(logits - our_logits).max())
    print(
        f"\ngrouped + table: tolerance {report.tolerance:.3f}, max|Δlogit| vs source {vs_source:.3f}, vs our lowering {vs_ours:.3f}"
    )
    assert max(vs_source, vs_ours) <= report.tolerance < 0.5 * float(np.abs(source.outputs).max())
    assert report.score >= report.source_score - 0.005
    assert (folder / "model.onnx").stat().st_size < 0.35 * (
        folder / "model.fp32.onnx"
    ).stat().st_size  # the 4-bit table is most of it


def corrupted(folder, tmp_path, change):
    """A copy of the export (the 90 MB fp32 model linked, not copied) with ``change`` applied to its recipe."""
    copy = tmp_path / "corrupted"
    copy.mkdir(parents=True)
    (copy / "model.fp32.onnx").symlink_to(folder / "model.fp32.onnx")
    shutil.copy(folder / "rebuild.py", copy)
    recipe = json.loads((folder / "recipe.json").read_text())
    change(recipe)
    (copy / "recipe.json").write_text(json.dumps(recipe))
    return copy


def test_a_recipe_missing_a_node_is_caught(exported, tmp_path):
    source, folder, *_ = exported("per-channel", PER_CHANNEL)
    fp32_node = json.loads((folder / "recipe.json").read_text())["layers"]["bert.encoder.layer.4.intermediate.dense"]["node"]

    def drop_from_dynamic(recipe):  # a node dropped, the expected counts adjusted to match: consistent, but not the policy
        recipe["passes"][-1]["nodes_to_quantize"].pop()
        recipe["expected_kernels"]["MatMulInteger"] -= 1

    with pytest.raises(ExportMismatch, match="'MatMulInteger': 11.*the policy asks for.*'MatMulInteger': 12"):
        OrtRecipeExporter().verify(source, corrupted(folder, tmp_path / "a", drop_from_dynamic))

    def include_by_not_excluding(recipe):  # a float layer's node left off a pass's exclusions: the tool quantizes it too
        recipe["passes"][0]["nodes_to_exclude"].remove(fp32_node)

    with pytest.raises(ExportMismatch, match=f"made but not listed \\['{fp32_node}'\\]"):
        OrtRecipeExporter().verify(source, corrupted(folder, tmp_path / "b", include_by_not_excluding))


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"layers": {BLOCKS.format("[0-5]"): {"bits": 4}}, "scheme": "kmeans"}, "scheme='kmeans'"),
        ({"layers": {BLOCKS.format("[0-1]"): {"bits": 16}}}, "bits \\[16\\]"),
        ({"layers": {BLOCKS.format("[0-1]"): {"bits": 3}}, "group_size": 32}, "bits \\[3\\]"),
        ({"embedding_bits": 8}, "embedding_bits=8: quantize_dynamic quantizes a Gather's table per tensor"),
        ({"layers": {BLOCKS.format("[0-1]"): {"bits": 4}}, "group_size": 24}, "group_size=24"),
    ],
)
def test_what_ort_tools_cannot_rebuild_is_refused_before_anything_is_written(policy, named, tmp_path):
    source = Source(Policy.from_dict(policy), None, None, tmp_path, [])  # check() runs before any model is touched
    with pytest.raises(NotExpressible, match=named):
        exporter("ort-recipe").export(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
