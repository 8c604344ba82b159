"""A decoder search's chosen policy exported as GGUF and as an HF folder, each reloaded in its tool and re-scored."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from decoder_families import write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from autocompress.config import ConfigError
from autocompress.exporters.decoder_exports import export_decoder, refusal
from autocompress.models.loading import resolve_model_path
from autocompress.tasks.language_modeling import perplexity, text_windows, torch_logits
from autocompress.techniques.decoder_bits import quantize_decoder
from autocompress.techniques.decoder_policy import DecoderPolicy


@pytest.mark.parametrize(("mlp_bits", "gguf_written"), [((4, 4), True), ((4, 8), False)])
def test_the_chosen_policy_reloads_in_transformers_and_from_gguf_with_the_perplexity_the_trial_recorded(tmp_path, monkeypatch, mlp_bits,
                                                                                                        gguf_written):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = resolve_model_path(str(source))
    teacher = AutoModelForCausalLM.from_pretrained(folder).eval()
    dev = text_windows(AutoTokenizer.from_pretrained(folder), "abcabdacbbadcab" * 20, context=32, stride=32, max_windows=4)
    policy = DecoderPolicy("rtn", 32, head_bits=4, attention_bits=(4, 4), mlp_bits=mlp_bits)
    simulated = copy.deepcopy(teacher)
    quantize_decoder(simulated, policy.plan, method="rtn")
    expected = perplexity(torch_logits(simulated), dev)
    recorded = {"simulated_dev_perplexity": expected}

    hf, gguf, compressed = export_decoder(policy, ["hf", "gguf", "llm-compressor"], tmp_path / "out", teacher=teacher, tokenizer_folder=folder,
                                          calibration=[], dev=dev, model=str(source), recorded=recorded)
    assert hf.ok and hf.perplexity == pytest.approx(expected, rel=1e-5) and (hf.folder / "policy.json").is_file()
    assert compressed.ok and compressed.perplexity == pytest.approx(expected, rel=1e-5)  # the policy's own codes, reloaded by transformers
    stored = json.loads((compressed.folder / "model" / "config.json").read_text())["quantization_config"]
    assert stored["format"] == "int-quantized" and stored["quant_method"] == "compressed-tensors"
    groups = yaml.safe_load((compressed.folder / "recipe.yaml").read_text())["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    widths = {(g["weights"]["num_bits"], g["weights"]["group_size"], g["weights"]["symmetric"]): len(g["targets"])
              for g in groups["config_groups"].values()}
    assert widths == ({(4, 32, False): 15} if mlp_bits == (4, 4) else {(4, 32, False): 12, (8, 32, False): 3}) and groups["ignore"] == []
    assert perplexity(torch_logits(teacher), dev) != pytest.approx(expected, rel=1e-3)  # the export holds the policy, not the teacher
    if gguf_written:
        assert gguf.ok and (gguf.folder / "model.gguf").is_file() and gguf.perplexity != expected  # float16 scales: close, not equal
    else:
        assert gguf.refused.startswith("model.layers.1.mlp.gate_proj: 8-bit groups of 32 have no GGUF type") and not gguf.ok
        assert "gguf: refused: model.layers.1.mlp.gate_proj" in gguf.line()


def test_a_rebuilt_policy_that_no_longer_scores_what_its_trial_recorded_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = resolve_model_path(str(source))
    teacher = AutoModelForCausalLM.from_pretrained(folder).eval()
    dev = text_windows(AutoTokenizer.from_pretrained(folder), "abcabdacbbadcab" * 20, context=32, stride=32, max_windows=4)
    policy = DecoderPolicy("rtn", 32, head_bits=4, attention_bits=(4, 4), mlp_bits=(4, 4))
    with pytest.raises(ConfigError, match=r"^trial 3: the rebuilt model scores dev perplexity [\d.]+, its trial recorded 1\.5000; "
                                          "the model or the text changed since the search$"):
        export_decoder(policy, ["hf"], tmp_path / "out", teacher=teacher, tokenizer_folder=folder, calibration=[], dev=dev,
                       model=str(source), recorded={"simulated_dev_perplexity": 1.5}, label="trial 3")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("policy", "name", "model", "reason"), [
    (DecoderPolicy("rtn", 64, 4, (4, 4), (4, 4)), "gguf", "smollm2", "[4]-bit groups of 64 have no GGUF type"),
    (DecoderPolicy("rtn", 32, 32, (2, 4), (4, 4)), "gguf", "smollm2", "[2, 4]-bit groups of 32 have no GGUF type"),
    (DecoderPolicy("rtn", 32, 4, (4, 4), (4, 4)), "gguf", "some/folder", "model 'some/folder' is not a GGUF file"),
    (DecoderPolicy("rtn", 32, 4, (3, 4), (4, 4)), "onnx", "smollm2", "[3]-bit layers have no ONNX Runtime CPU kernel"),
    (DecoderPolicy("rtn", 32, 4, (4, 4), (4, 4)), "torchao", "smollm2", "a causal-lm model exports as onnx, hf, gguf, llm-compressor"),
])
def test_a_format_that_cannot_hold_the_policy_is_named_from_the_policy_alone(policy, name, model, reason):
    assert refusal(policy, name, model).startswith(reason)
    assert refusal(DecoderPolicy("gptq", 32, 4, (4, 32), (4, 4)), name if name != "torchao" else "hf", "smollm2") is None
