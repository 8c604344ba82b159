"""The ort-recipe format: ONNX Runtime's own quantization tools rebuild the mixed model, compared with autocompress's lowering."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from autocompress.exporters import ExportMismatch, NotExpressible, exporter
from autocompress.exporters._ort_recipe import OrtRecipeExporter
from autocompress.measure._deployed import deploy
from autocompress.runtime import ort_feed, ort_session

BLOCKS = "re:bert\\.encoder\\.layer\\.{}\\..*"
LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")  # fmt: skip


def names(blocks):
    return sorted(f"bert.encoder.layer.{b}.{linear}" for b in blocks for linear in LINEARS)


def kernels(path):
    counts = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return {op: counts.get(op, 0) for op in ("MatMulInteger", "MatMulNBits", "GatherBlockQuantized")}


def ours(source, tmp_path):
    """autocompress's own lowering of the simulated model: its kernel counts and dev logits."""
    lowering, _ = deploy(source.model, dev=source.dev, threads=2, workdir=tmp_path / "ours")
    session = ort_session(lowering.path, threads=2)
    logits = np.concatenate([session.run(["logits"], ort_feed(session, batch))[0] for batch in source.dev])
    return kernels(lowering.path), logits


def rebuilt_logits(folder, source):
    session = ort_session(folder / "model.onnx", threads=2)
    return np.concatenate([session.run(["logits"], ort_feed(session, batch))[0] for batch in source.dev])


def test_mixed_policy_rebuilds_with_quantize_dynamic_and_matmulnbits_passes(export_source, tmp_path):
    # group_size is one per policy: 8-bit layers per channel go to MatMulInteger, 4-bit per channel to MatMulNBits
    source = export_source({"layers": {BLOCKS.format("[0-1]"): {"bits": 8}, BLOCKS.format("[2-3]"): {"bits": 4}}, "group_size": None})
    folder = tmp_path / "recipe"
    report = exporter("ort-recipe").export(source, folder)
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["version"] == 1 and {"model.fp32.onnx", "recipe.json", "rebuild.py", "model.onnx"} <= set(report.files)
    fp32 = kernels(folder / "model.fp32.onnx")
    assert fp32 == {"MatMulInteger": 0, "MatMulNBits": 0, "GatherBlockQuantized": 0}  # the shipped input is float

    *nbits, dynamic = recipe["passes"]
    node_of = {name: entry["node"] for name, entry in recipe["layers"].items()}
    assert dynamic["tool"] == "quantize_dynamic" and dynamic["per_channel"] is True
    assert sorted(dynamic["nodes_to_quantize"]) == sorted(node_of[n] for n in names([0, 1]))
    assert [(p["tool"], p["bits"], p["block_size"]) for p in nbits] == [("MatMulNBitsQuantizer", 4, 128), ("MatMulNBitsQuantizer", 4, 256)]
    assert sorted(nbits[0]["nodes"] + nbits[1]["nodes"]) == sorted(node_of[n] for n in names([2, 3]))
    ffn_out = [f"bert.encoder.layer.{b}.output.dense" for b in (2, 3)]  # 1536 inputs: blocks of 256, the others 384: 128
    assert sorted(nbits[1]["nodes"]) == sorted(node_of[n] for n in ffn_out)
    for step in nbits:  # each pass is limited by exclusion: every fp32 and 8-bit node, and the other pass's nodes
        assert set(step["nodes_to_exclude"]) >= {node_of[n] for n in names([0, 1, 4, 5])} and not set(step["nodes"]) & set(step["nodes_to_exclude"])
    assert all(recipe["layers"][n]["bits"] == 32 and "pass" not in recipe["layers"][n] for n in names([4, 5]))

    rebuilt = kernels(folder / "model.onnx")
    assert rebuilt == {"MatMulInteger": 12, "MatMulNBits": 12, "GatherBlockQuantized": 0}
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert {node_of[n] for n in names([4, 5])} <= {node.name for node in graph.node if node.op_type == "MatMul"}  # 32-bit stay fp32

    our_kernels, our_logits = ours(source, tmp_path)
    assert rebuilt == our_kernels
    logits = rebuilt_logits(folder, source)
    tolerance = report.tolerance
    vs_source = float(np.abs(logits - source.logits).max())
    vs_ours = float(np.abs(logits - our_logits).max())
    print(f"mixed per-channel: tolerance {tolerance:.3f}, max|Δ| vs source {vs_source:.4f}, vs our lowering {vs_ours:.4f}")
    assert report.max_abs_logit_diff == pytest.approx(vs_source, abs=1e-5) and vs_source <= tolerance and vs_ours <= tolerance
    assert report.accuracy >= report.source_accuracy - 0.005
    assert any("per-block scales" in note for note in report.notes)


def test_grouped_policy_with_a_4bit_embedding_adds_a_gather_pass(export_source, tmp_path):
    source = export_source({"layers": {BLOCKS.format("[0-1]"): {"bits": 8}, BLOCKS.format("[2-3]"): {"bits": 4}},
                            "group_size": 32, "embedding_bits": 4})  # fmt: skip
    folder = tmp_path / "recipe"
    report = exporter("ort-recipe").export(source, folder)
    recipe = json.loads((folder / "recipe.json").read_text())
    node_of = {name: entry["node"] for name, entry in recipe["layers"].items()}
    assert [(p["op_types_to_quantize"], p["bits"], p["block_size"]) for p in recipe["passes"]] == [
        (["MatMul"], 4, 32), (["MatMul"], 8, 32), (["Gather"], 4, 128)]  # no quantize_dynamic: 8-bit groups run on MatMulNBits
    assert sorted(recipe["passes"][0]["nodes"]) == sorted(node_of[n] for n in names([2, 3]))
    assert sorted(recipe["passes"][1]["nodes"]) == sorted(node_of[n] for n in names([0, 1]))
    gather = recipe["passes"][2]
    assert gather["nodes"] == [node_of["bert.embeddings.word_embeddings"]] and gather["quant_axes"] == [["Gather", 1]]
    assert any("position_embeddings" in n for n in gather["nodes_to_exclude"])  # the other tables stay float

    rebuilt = kernels(folder / "model.onnx")
    assert rebuilt == {"MatMulInteger": 0, "MatMulNBits": 24, "GatherBlockQuantized": 1}
    our_kernels, our_logits = ours(source, tmp_path)
    assert rebuilt == our_kernels
    logits = rebuilt_logits(folder, source)
    vs_source, vs_ours = float(np.abs(logits - source.logits).max()), float(np.abs(logits - our_logits).max())
    print(f"grouped + embedding: tolerance {report.tolerance:.3f}, max|Δ| vs source {vs_source:.4f}, vs our lowering {vs_ours:.4f}")
    assert vs_source <= report.tolerance and vs_ours <= report.tolerance
    assert report.accuracy >= report.source_accuracy - 0.005
    assert (folder / "model.onnx").stat().st_size < 0.35 * (folder / "model.fp32.onnx").stat().st_size
