"""The onnx and hf export formats, and the check every format runs on its own output."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from autocompress.exporters import ExportMismatch, exporter
from autocompress.exporters._base import compare, torch_outputs

BLOCKS = "re:bert\\.encoder\\.layer\\.{}\\..*"
MIXED = {
    "layers": {BLOCKS.format("[0-1]"): {"bits": 8}, BLOCKS.format("[2-3]"): {"bits": 4}},
    "group_size": None, "embedding_bits": 4,
}  # fmt: skip


def test_onnx_export_runs_the_mixed_model_on_integer_kernels(export_source, tmp_path):
    policy = {**MIXED, "layers": {BLOCKS.format("[0-1]"): {"bits": 8}, BLOCKS.format("[2-3]"): {"bits": 4}}, "group_size": 32}
    source = export_source(policy)
    report = exporter("onnx").export(source, tmp_path / "onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops  # 8-bit in groups and 4-bit both on MatMulNBits; the table at 4 bits
    assert {"model.onnx", "policy.json", "tokenizer.json"} <= set(report.files) and (tmp_path / "onnx" / "export_report.json").is_file()
    assert report.max_abs_diff <= report.tolerance == pytest.approx(1e-4)  # no run-time rounding: the same math
    assert report.agreement == 1.0 and report.score == report.source_score
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size < 0.4 * 90.9e6  # two of six blocks stay float


def test_the_check_fails_when_the_reloaded_output_is_off(export_source, tmp_path):
    source = export_source({"layers": {BLOCKS.format("[0-5]"): {"bits": 4}}, "group_size": 32})
    good = source.outputs
    assert compare("x", tmp_path, source, good + 5e-5, tolerance=1e-4, files=[], notes=[]).agreement == 1.0
    with pytest.raises(ExportMismatch, match="differ from the source's by up to"):
        compare("x", tmp_path, source, good + 1e-3, tolerance=1e-4, files=[], notes=[])
    flipped = good.copy()
    flipped[: len(flipped) // 10] = flipped[: len(flipped) // 10, ::-1]  # a tenth of the predictions swapped
    with pytest.raises(ExportMismatch, match="differs by more than 0.005"):
        compare("x", tmp_path, source, flipped, tolerance=np.inf, files=[], notes=[])


def test_hf_export_of_a_uniform_student_loads_in_stock_transformers(export_source, tmp_path):
    policy = {"layers": {BLOCKS.format("[0-5]"): {"bits": 4}}, "group_size": 32, "kept_blocks": [0, 2, 4, 5],
              "ffn": {str(i): 768 for i in range(6)}}
    source = export_source(policy)
    report = exporter("hf").export(source, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["intermediate_size"] == 768 and "auto_map" not in config
    assert not (tmp_path / "hf" / "modeling_autocompress.py").exists()
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")  # no remote code
    assert type(stock).__name__ == "BertForSequenceClassification"
    assert sum(p.numel() for p in stock.parameters()) < 0.75 * 22.7e6  # all-MiniLM-L6-v2 has 22.7M
    weight = stock.bert.encoder.layer[0].attention.self.query.weight.detach().view(384, -1, 32)
    assert max(len(torch.unique(group)) for group in weight[:8].reshape(-1, 32)) <= 15  # 4-bit codes: at most 15 values per group
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0
    np.testing.assert_allclose(torch_outputs(stock, source), source.float_activation_outputs, atol=1e-4)


def test_hf_export_of_uneven_heads_ships_its_model_class(export_source, tmp_path):
    source = export_source({"heads": {"0": 6, "3": 8}, "ffn": {"1": 768}, "layers": {BLOCKS.format("[0-5]"): {"bits": 8}}})
    report = exporter("hf").export(source, tmp_path / "hf")
    config = AutoConfig.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert [b["heads"] for b in config.autocompress_blocks] == [6, 12, 12, 8, 12, 12]
    assert (tmp_path / "hf" / "modeling_autocompress.py").is_file() and "trust_remote_code" in report.notes[0]
    assert any("8-bit per-channel" in note for note in report.notes)  # the activation rounding it cannot carry is said, not dropped
    assert report.agreement == 1.0 and report.max_abs_diff <= 1e-4
