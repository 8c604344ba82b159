"""A decoder policy lowered into an ONNX Runtime GenAI folder: the graph runs the simulation's codes, and GenAI generates with it."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import transformers
from decoder_families import DECODERS, SHAPE, save_tokenizer, tiny_decoder, token_ids

from autocompress.measurement.generation import generation_speed
from autocompress.models.decoders import quantizable_linears
from autocompress.runtime.genai import GenaiMismatch, GenaiRefusal, build_genai, genai_logits, lower_genai, run_builder
from autocompress.tasks.language_modeling import Window, language_scores, reference_log_probs, torch_logits
from autocompress.techniques.weight_only import rtn

POLICY = {"attn": (4, 32), "mlp": (8, 64), "lm_head": (2, 32)}
"""Every width the CPU kernels run, and two group sizes, in one model."""


def simulate(model, policy):
    codes = {}
    with torch.no_grad():
        for name, (_, kind, linear) in quantizable_linears(model).items():
            codes[name] = rtn(linear.weight, *policy[kind])
            linear.weight.copy_(codes[name].dequantize())
    return codes


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_a_mixed_policy_runs_in_genai_as_the_torch_simulation_does(family, tmp_path):
    teacher = tiny_decoder(family)
    student = copy.deepcopy(teacher)
    codes = simulate(student, POLICY)
    build = build_genai(student, save_tokenizer(tmp_path / "tokenizer"), codes, tmp_path / "genai")
    assert build.nodes["/model/layers.1/attn/qkv_proj/MatMul"] == "int4 g32"
    assert build.nodes["/model/layers.0/mlp/down_proj/MatMul"] == "int8 g64"
    assert build.nodes["/lm_head/MatMul"] == "int2 g32" and build.nodes["/model/embed_tokens/Gather"] == "from lm_head"
    graph = onnx.load(str(build.folder / "model.onnx"))
    weights = {i.name: i for i in graph.graph.initializer}
    assert not [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in weights]  # no float matrix left
    vocab, hidden = teacher.lm_head.weight.shape
    assert not [i.name for i in weights.values() if sorted(i.dims) == sorted([vocab, hidden])]  # the tied table ships once, as lm_head's codes

    windows = [Window(token_ids(48, seed), 47) for seed in range(3)]
    lowered = language_scores(genai_logits(build.folder), reference_log_probs(torch_logits(teacher), windows), windows)
    simulated = language_scores(torch_logits(student), reference_log_probs(torch_logits(teacher), windows), windows)
    assert lowered["perplexity"] == pytest.approx(simulated["perplexity"], rel=0.01)  # int8 activations inside MatMulNBits: close, not exact
    assert lowered["kl_to_teacher"] == pytest.approx(simulated["kl_to_teacher"], rel=0.1)

    speed = generation_speed({"lowered": build.folder}, token_ids(16)[0].numpy(), new_tokens=8, rounds=1)["lowered"]
    assert speed.prefill_ms > 0 and speed.decode_tokens_per_s > 0

    teacher.save_pretrained(tmp_path / "teacher")  # lowered into the teacher's own float build, as a search's trials are
    save_tokenizer(tmp_path / "teacher")
    reused = build_genai(student, tmp_path / "tokenizer", codes, tmp_path / "reused",
                         float_build=run_builder(tmp_path / "teacher", tmp_path / "teacher-fp32", "fp32"))
    assert reused.nodes == build.nodes
    ids = token_ids(24, seed=7)
    assert np.array_equal(genai_logits(reused.folder)(ids), genai_logits(build.folder)(ids))


def test_an_untied_head_is_lowered_alone_and_the_embedding_table_stays_float(tmp_path):
    model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**SHAPE | {"tie_word_embeddings": False})).eval()
    student = copy.deepcopy(model)
    codes = simulate(student, POLICY)
    build = build_genai(student, save_tokenizer(tmp_path / "tokenizer"), codes, tmp_path / "genai")
    assert build.nodes["/lm_head/MatMul"] == "int2 g32" and "/model/embed_tokens/Gather" not in build.nodes
    windows = [Window(token_ids(32, seed), 31) for seed in range(2)]
    reference = reference_log_probs(torch_logits(model), windows)
    assert language_scores(genai_logits(build.folder), reference, windows)["perplexity"] == pytest.approx(
        language_scores(torch_logits(student), reference, windows)["perplexity"], rel=0.01)


def test_codes_of_another_weight_three_bits_and_half_a_fused_matmul_are_refused(tmp_path):
    model = tiny_decoder("llama")
    codes = simulate(copy.deepcopy(model), POLICY)
    with pytest.raises(GenaiRefusal, match="3-bit weights have no ONNX Runtime CPU kernel; allowed bits: 2, 4, 8"):
        build_genai(model, "unused", {"lm_head": rtn(model.lm_head.weight, 3, 32)}, tmp_path / "three")
    graph = fake_builder_graph(model)
    with pytest.raises(GenaiMismatch, match="/lm_head/MatMul: the policy's codes do not de-quantize"):
        lower_genai(graph, model, {"lm_head": codes["lm_head"]})  # codes of the simulated model, graph of the float one
    with pytest.raises(GenaiRefusal, match="share one MatMul"):
        lower_genai(fake_builder_graph(model), model, {"model.layers.0.self_attn.q_proj": codes["model.layers.0.self_attn.q_proj"]})


def test_a_float_graph_that_differs_from_transformers_is_not_deployed(tmp_path):
    """A tiny Qwen3 at its config's default head size (128, twice the hidden size): this builder's graph differs from it."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3Config(**SHAPE)).eval()
    with pytest.raises(GenaiMismatch, match="wrote a qwen3 graph whose logits differ from transformers'"):
        build_genai(model, save_tokenizer(tmp_path / "tokenizer"), {}, tmp_path / "genai")


def fake_builder_graph(model):
    """The builder's names for a q/k/v MatMul and the head, holding ``model``'s float weights (no builder run needed)."""
    from onnx import helper, numpy_helper

    layer = model.model.layers[0].self_attn
    qkv = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]).detach().numpy().T
    head = model.lm_head.weight.detach().numpy().T
    nodes = [helper.make_node("MatMul", ["x", "qkv"], ["y"], "/model/layers.0/attn/qkv_proj/MatMul"),
             helper.make_node("MatMul", ["h", "head"], ["logits"], "/lm_head/MatMul")]
    graph = helper.make_graph(nodes, "g", [], [], [numpy_helper.from_array(np.ascontiguousarray(qkv), "qkv"),
                                                     numpy_helper.from_array(np.ascontiguousarray(head), "head")])
    return onnx.helper.make_model(graph)
