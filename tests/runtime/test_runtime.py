"""Export to ONNX, lowering to ONNX Runtime's integer kernels, and verification, on the real MiniLM."""

from __future__ import annotations

import copy
import functools
from collections import Counter

import numpy as np
import onnx
import onnx.utils
import pytest
import torch
from families import tiny_model
from onnx import numpy_helper

from autocompress.models.loading import block_linears, load_classifier
from autocompress.runtime import (
    LoweringMismatch,
    NotDeployable,
    deployable,
    export_onnx,
    lower,
    ort_feed,
    ort_session,
    verify,
)
from autocompress.techniques import shrink_
from autocompress.techniques.quantizer import QUANT_ATTR, float_activations, quantize_embedding_, quantize_linear_

BITS_CYCLE = (8, 4, 16, 32)


@pytest.fixture(scope="module")
def base():
    """MiniLM with a non-trivial (seeded N(0, 1)) head, so logits have margins worth comparing."""
    torch.manual_seed(0)
    model = load_classifier("default")
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    return model


@pytest.fixture(scope="module")
def fp32_onnx(base, sentence_batches, tmp_path_factory):
    return export_onnx(base, tmp_path_factory.mktemp("fp32") / "model.onnx", example=sentence_batches[0])


def quantized(base, bits_of, *, group_size=None, embedding=False):
    """A copy of ``base`` with encoder Linear ``j`` of block ``i`` at ``bits_of(i, j)`` bits."""
    model = copy.deepcopy(base)
    for i, block in enumerate(block_linears(model)):
        for j, linear in enumerate(block.values()):
            bits = bits_of(i, j)
            quantize_linear_(linear, bits, group_size=None if bits == 8 else group_size)
    if embedding:
        quantize_embedding_(model.get_input_embeddings(), 8)
    return model


def export_and_lower(model, batches, tmp_path, **options):
    source = export_onnx(model, tmp_path / "source.onnx", example=batches[0])
    return lower(model, source, tmp_path / "lowered.onnx", **options)


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def expected_bytes(model) -> int:
    """Bytes the lowered weights should take: packed codes + float32 scales, fp16, or float32.

    Valid for the power-of-two groups used here (one MatMulNBits block per group).
    """
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            quant = getattr(module, QUANT_ATTR, None) if name == "weight" else None
            if quant is not None:
                total += param.numel() * quant.bits // 8 + 4 * quant.scales.numel()
            elif isinstance(module, torch.nn.Linear) and name == "weight" and torch.equal(param.half().float(), param):
                total += 2 * param.numel()
            else:
                total += 4 * param.numel()
    return total


def test_fp32_export_matches_torch_on_other_shapes(base, fp32_onnx, sentence_batches, tokenizer, sentences):
    session = ort_session(fp32_onnx, threads=2)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    single = dict(tokenizer([sentences.texts[5]], return_tensors="pt"))  # unpadded, batch 1
    wide = dict(tokenizer(list(sentences.texts[:40]), padding=True, return_tensors="pt"))  # batch 40, longer
    for batch in (single, wide):
        with torch.no_grad():
            expected = base(**{k: v for k, v in batch.items() if k != "labels"}).logits.numpy()
        np.testing.assert_allclose(session.run(["logits"], ort_feed(session, batch))[0], expected, atol=1e-4)


def test_lean_export_drops_the_shape_arithmetic_and_still_matches_torch(base, fp32_onnx, sentence_batches, tokenizer, sentences, tmp_path):
    lean = export_onnx(base, tmp_path / "lean.onnx", example=sentence_batches[0], lean=True)
    graph = onnx.load(lean).graph
    constants = {t.name for t in graph.initializer}
    reshapes = [n for n in graph.node if n.op_type == "Reshape"]
    assert len(reshapes) == 4 * 6 and all(n.input[1] in constants for n in reshapes)  # q, k, v, context of 6 blocks
    assert not {n.op_type for n in graph.node} & {"IsNaN", "Range", "Expand"}  # no SDPA guards, no mask built in the graph
    assert len(graph.node) < len(onnx.load(fp32_onnx).graph.node) / 2
    assert base.config._attn_implementation == "sdpa"  # eager only while exporting
    session = ort_session(lean, threads=2)
    single = dict(tokenizer([sentences.texts[5]], return_tensors="pt"))
    wide = dict(tokenizer(list(sentences.texts[:40]), padding=True, return_tensors="pt"))  # padded rows of many lengths
    for batch in (single, wide):
        with torch.no_grad():
            expected = base(**batch).logits.numpy()
        np.testing.assert_allclose(session.run(["logits"], ort_feed(session, batch))[0], expected, atol=1e-4)


def test_lean_export_keeps_the_2d_mask_where_a_family_reads_a_4d_one_otherwise(tmp_path):
    model = tiny_model("bert")
    forward = model.forward

    @functools.wraps(forward)  # the same signature: the export reads the inputs from it
    def reads_4d_masks_as_2d(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = attention_mask[:, 0, 0, :]
        return forward(*args, attention_mask=attention_mask, **kwargs)

    model.forward = reads_4d_masks_as_2d
    ids = torch.randint(5, 90, (2, 9))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}  # no padding in it
    ops = {n.op_type for n in onnx.load(export_onnx(model, tmp_path / "m.onnx", example=example, lean=True)).graph.node}
    assert "Range" in ops  # the mask is built in the graph from the 2D one, as the model does
    del model.forward
    ops = {n.op_type for n in onnx.load(export_onnx(model, tmp_path / "m.onnx", example=example, lean=True)).graph.node}
    assert "Range" not in ops


def test_export_restores_training_flags(base, sentence_batches, tmp_path):
    model = copy.deepcopy(base).train()
    model.bert.pooler.eval()
    export_onnx(model, tmp_path / "m.onnx", example=sentence_batches[0])
    assert model.training and model.bert.encoder.training and not model.bert.pooler.training


def test_int8_per_channel_runs_on_matmulinteger(base, sentence_batches, tmp_path):
    model = quantized(base, lambda i, j: 8)
    report = export_and_lower(model, sentence_batches, tmp_path)
    ops = op_counts(report.path)
    assert ops["MatMulInteger"] == 36
    assert ops["DynamicQuantizeLinear"] == 24  # query/key/value share one quantized activation per block
    assert {layer.op for name, layer in report.layers.items() if ".encoder." in name} == {"MatMulInteger"}
    assert report.file_bytes == pytest.approx(expected_bytes(model), rel=0.01)
    result = verify(report.path, model, sentence_batches, max_accuracy_drop=0.07)
    assert result.agreement >= 0.9
    assert result.max_abs_diff < 0.2 * result.max_abs_output  # exact per layer; flipped uint8 roundings compound


def test_int4_group32_and_int8_embedding(base, fp32_onnx, sentence_batches, tmp_path):
    model = quantized(base, lambda i, j: 4, group_size=32, embedding=True)
    exact = export_and_lower(model, sentence_batches, tmp_path, accuracy_level=0)
    graph = onnx.load(exact.path).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 36
    assert all({a.name: a.i for a in n.attribute if a.name in ("bits", "block_size")} == {"bits": 4, "block_size": 32} for n in nbits)
    int8_tables = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and list(i.dims) == [30522, 384]]
    assert len(int8_tables) == 1 and op_counts(exact.path)["Gather"] >= 2
    assert exact.layers["bert.embeddings.word_embeddings"].op == "Gather(int8)"
    assert exact.file_bytes == pytest.approx(expected_bytes(model), rel=0.01)
    assert fp32_onnx.stat().st_size / exact.file_bytes > 4.4
    # float compute on the packed codes reproduces the simulation: packing and scales are right
    assert verify(exact.path, model, sentence_batches, atol=1e-4, rtol=0.0).max_abs_diff < 1e-4
    fast = lower(model, tmp_path / "source.onnx", tmp_path / "fast.onnx")  # default accuracy_level=4
    assert all(a.i == 4 for n in onnx.load(fast.path).graph.node for a in n.attribute if a.name == "accuracy_level")
    assert verify(fast.path, model, sentence_batches, max_accuracy_drop=0.07).agreement >= 0.9


def test_int4_embedding_runs_on_gather_block_quantized(base, sentence_batches, tmp_path):
    model = quantized(base, lambda i, j: 8)
    quantize_embedding_(model.get_input_embeddings(), 4)  # one scale per row, as at 8 bits
    report = export_and_lower(model, sentence_batches, tmp_path)
    lowered = report.layers["bert.embeddings.word_embeddings"]
    assert (lowered.op, lowered.group_size, lowered.block_size) == ("GatherBlockQuantized(int4)", 384, 128)
    tables = [i for i in onnx.load(report.path).graph.initializer if list(i.dims) == [30522, 192]]
    assert len(tables) == 1 and tables[0].data_type == onnx.TensorProto.UINT8  # two 4-bit codes per byte
    int8_table = export_and_lower(quantized(base, lambda i, j: 8, embedding=True), sentence_batches, tmp_path / "int8")
    # 11.7 MB of int8 codes -> 5.9 MB of 4-bit ones, plus each row's scale stored once per 128-column block
    assert int8_table.file_bytes - report.file_bytes == pytest.approx(30522 * 384 / 2 - 2 * 4 * 30522, rel=0.01)


@pytest.mark.parametrize(("group_size", "block_size"), [(None, 128), (32, 32)])
def test_int4_embedding_lowering_is_exact(base, sentence_batches, tmp_path, group_size, block_size):
    model = copy.deepcopy(base)
    quantize_embedding_(model.get_input_embeddings(), 4, group_size=group_size)
    report = export_and_lower(model, sentence_batches, tmp_path)
    assert report.layers["bert.embeddings.word_embeddings"].block_size == block_size
    assert verify(report.path, model, sentence_batches, atol=1e-4, rtol=0.0).max_abs_diff < 1e-4


def test_mixed_bits_per_layer_and_quantized_pooler(base, sentence_batches, tmp_path):
    model = quantized(base, lambda i, j: BITS_CYCLE[(i + j) % 4], group_size=32, embedding=True)
    quantize_linear_(model.bert.pooler.dense, 4, group_size=64)  # a Gemm in the exported graph
    report = export_and_lower(model, sentence_batches, tmp_path)
    planned = Counter(BITS_CYCLE[(i + j) % 4] for i in range(6) for j in range(6))
    assert Counter(layer.bits for name, layer in report.layers.items() if ".encoder." in name) == planned
    ops = op_counts(report.path)
    assert ops["MatMulInteger"] == planned[8] and ops["MatMulNBits"] == planned[4] + 1
    assert report.layers["bert.pooler.dense"].block_size == 64
    fp16 = [i for i in onnx.load(report.path).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16) == planned[16]
    assert ops["Cast"] >= planned[8] + planned[16] + 1  # int32->float per MatMulInteger, fp16->float, int8 embedding
    assert report.file_bytes == pytest.approx(expected_bytes(model), rel=0.01)
    verify(report.path, model, sentence_batches, max_accuracy_drop=0.07)


NBITS_AND_FP16 = ((2, 32), (8, 32), (4, None), (16, None), (32, None))  # (bits, group_size)


def test_nbits_fp16_and_int8_embedding_lower_exactly(base, sentence_batches, tmp_path):
    """2-bit and 8-bit groups, 4 bits per channel (blocks of 128), fp16 and the int8 table: float math, exact.

    Measured over 1,000 real sentences: at most 7e-6 apart (logits up to 4); a wrong
    scale, packing or zero point moves them by far more than the 1e-4 allowed.
    """
    model = copy.deepcopy(base)
    for i, block in enumerate(block_linears(model)):
        for j, linear in enumerate(block.values()):
            bits, group_size = NBITS_AND_FP16[(i + j) % len(NBITS_AND_FP16)]
            quantize_linear_(linear, bits, group_size=group_size)
    quantize_embedding_(model.get_input_embeddings(), 8)
    report = export_and_lower(model, sentence_batches, tmp_path, accuracy_level=0)
    ops = Counter((layer.op, layer.bits, layer.block_size) for name, layer in report.layers.items() if ".encoder." in name)
    assert set(ops) == {
        ("MatMulNBits", 2, 32),
        ("MatMulNBits", 8, 32),
        ("MatMulNBits", 4, 128),
        ("MatMulNBits", 4, 512),  # the FFN output: 1536 columns, one block per 512
        ("MatMul(fp16->fp32)", 16, None),
        ("MatMul(fp32)", 32, None),
    }
    assert verify(report.path, model, sentence_batches, atol=1e-4, rtol=0.0).max_abs_diff < 1e-4


def test_shrunk_model_exports_with_its_own_shapes(base, sentence_batches, tmp_path):
    model = copy.deepcopy(base)
    shrink_(model, heads={0: 10, 1: 0}, ffn={2: 1024}, layers=[0, 1, 2, 3, 5])
    for block in block_linears(model):
        for linear in block.values():
            if linear.weight.numel():
                quantize_linear_(linear, 4, group_size=32)
    report = export_and_lower(model, sentence_batches, tmp_path, accuracy_level=0)
    assert len([n for n in report.layers if ".encoder." in n]) == 5 * 6 - 4  # block 1: no q/k/v, empty attention output
    assert verify(report.path, model, sentence_batches, atol=1e-4, rtol=0.0).max_abs_diff < 1e-4


@pytest.mark.parametrize(
    ("bits", "scheme", "reason"), [(3, "linear", "bits=3 has no CPU kernel"), (4, "kmeans", "k-means codebook")]
)
def test_undeployable_layer_raises_naming_it(base, sentence_batches, tmp_path, bits, scheme, reason):
    model = copy.deepcopy(base)
    quantize_linear_(model.bert.encoder.layer[2].output.dense, bits, scheme=scheme)
    with pytest.raises(NotDeployable, match=rf"'bert\.encoder\.layer\.2\.output\.dense'.*{reason}"):
        export_and_lower(model, sentence_batches, tmp_path)


@pytest.mark.parametrize(
    ("bits", "group_size", "in_features", "expected"),
    [
        (8, None, 384, True),  # MatMulInteger, any width
        (8, None, 100, True),
        (4, 32, 384, True),
        (4, None, 384, True),  # per channel as 3 blocks of 128 with one scale
        (4, 48, 384, True),  # 3 blocks of 16 per group
        (2, 512, 1024, True),  # blocks of 256, the 2-bit kernel's maximum
        (8, 128, 384, True),
        (4, None, 100, False),  # no power-of-two block >= 16 tiles 100
        (4, 24, 384, False),
        (4, 64, 96, False),  # group does not divide the width
        (3, 32, 384, False),
        (6, None, 384, False),
        (16, None, 384, True),
        (32, None, 100, True),
    ],
)
def test_deployable(bits, group_size, in_features, expected):
    assert deployable(bits, group_size, in_features) is expected


def test_kmeans_is_not_deployable():
    assert not deployable(4, None, 384, scheme="kmeans")


def test_verify_catches_a_corrupted_lowering(base, sentence_batches, tmp_path):
    model = quantized(base, lambda i, j: 4, group_size=32)
    report = export_and_lower(model, sentence_batches, tmp_path)
    proto = onnx.load(report.path)
    for init in proto.graph.initializer:
        if init.name.endswith(".weight_scales"):  # scales assigned to the wrong output channels
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[::-1].copy(), init.name))
    onnx.save(proto, str(tmp_path / "corrupted.onnx"))
    verify(report.path, model, sentence_batches, max_accuracy_drop=0.07)
    with pytest.raises(LoweringMismatch, match="corrupted.onnx"):
        verify(tmp_path / "corrupted.onnx", model, sentence_batches, max_accuracy_drop=0.07)


def test_verify_is_exact_by_default_where_no_matmulinteger_runs(base, sentence_batches, tmp_path):
    """One layer's scales 1 % off: far inside the old 0.2 * max|logit| allowance, refused by the default."""
    model = quantized(base, lambda i, j: 4, group_size=32)
    report = export_and_lower(model, sentence_batches, tmp_path, accuracy_level=0)
    proto = onnx.load(report.path)
    init = next(i for i in proto.graph.initializer if i.name.endswith(".weight_scales"))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
    onnx.save(proto, str(tmp_path / "slightly_off.onnx"))
    verify(report.path, model, sentence_batches, max_accuracy_drop=1.0)
    loose = verify(tmp_path / "slightly_off.onnx", model, sentence_batches, max_accuracy_drop=1.0, rtol=0.2)
    assert 1e-4 < loose.max_abs_diff < 0.2 * loose.max_abs_output
    with pytest.raises(LoweringMismatch, match="rtol=0.0"):
        verify(tmp_path / "slightly_off.onnx", model, sentence_batches, max_accuracy_drop=1.0)


def test_lower_refuses_a_graph_exported_from_another_model(base, fp32_onnx, tmp_path):
    model = quantized(base, lambda i, j: 8)
    with pytest.raises(ValueError, match="export this same model"):
        lower(model, fp32_onnx, tmp_path / "x.onnx")


def test_verify_needs_labels(base, fp32_onnx, sentence_batches):
    batch = {k: v for k, v in sentence_batches[0].items() if k != "labels"}
    with pytest.raises(ValueError, match="labels"):
        verify(fp32_onnx, base, [batch])


def test_verify_scores_the_graph_on_the_task_metrics(base, fp32_onnx, sentence_batches):
    """The report carries the graph's accuracy, F1 and the selected metric, equal to torch's on an exact graph."""
    from autocompress.measurement import model_scores
    from autocompress.tasks import Logits

    head = Logits("macro_f1")
    report = verify(fp32_onnx, base, sentence_batches, head=head)
    assert set(report.onnx_scores) == {"accuracy", "f1", "macro_f1"} and report.onnx_scores == pytest.approx(report.torch_scores)
    assert report.onnx_scores == pytest.approx(model_scores(base, list(sentence_batches), head=head))


def matmul_integer_layers(path) -> dict[str, tuple[str, str]]:
    """Per MatMulInteger layer of a lowered graph: the float activation it quantizes and its (bias-free) output."""
    nodes = onnx.load(str(path)).graph.node
    quantizes = {node.output[0]: node.input[0] for node in nodes if node.op_type == "DynamicQuantizeLinear"}
    outputs = {node.name: node.output[0] for node in nodes}
    return {
        node.name.removesuffix("_MatMulInteger"): (quantizes[node.input[0]], outputs[node.name.replace("_MatMulInteger", "_OutputMul")])
        for node in nodes
        if node.op_type == "MatMulInteger"
    }


def test_int8_per_channel_layers_lower_exactly(base, sentence_batches, tmp_path):
    """Each MatMulInteger layer, fed the very activation torch fed it, gives the simulation's output to float rounding.

    Per layer, because the whole model is not exact: float noise of 1e-7 between torch
    and ORT flips a few uint8 roundings upstream, and the later 8-bit layers amplify
    each flip (a 1e-6 relative nudge to the embeddings moves torch's own logits by
    ~0.4). Errors are relative to the layer's largest output. Without the simulated
    activation rounding (``float_activations``) the same layers differ ~40,000x more.
    """
    model = quantized(base, lambda i, j: 8)
    report = export_and_lower(model, sentence_batches, tmp_path)
    layers = matmul_integer_layers(report.path)
    assert len(layers) == 36 and len({x for x, _ in layers.values()}) == 24  # q/k/v share their activation
    graph = onnx.load(str(report.path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in (n for n in graph.node if n.op_type == "MatMulInteger"):  # u8u8: ORT's u8s8 kernel saturates without VNNI
        assert weights[node.input[1]].dtype == np.uint8 and weights[node.input[3]] == 128
    onnx.utils.extract_model(
        report.path, str(tmp_path / "layers.onnx"), sorted({x for x, _ in layers.values()}), [out for _, out in layers.values()]
    )
    session = ort_session(tmp_path / "layers.onnx", threads=2)
    modules = dict(model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0]), prepend=True)
        for name in layers
    ]  # prepended: sees the float input, before the simulated rounding
    worst = {"rounded": 0.0, "float": 0.0}
    try:
        for batch in sentence_batches:
            with torch.no_grad():
                model(**{k: v for k, v in batch.items() if k != "labels"})
                feed = {x: inputs[name].numpy() for name, (x, _) in layers.items()}
                outputs = [out for _, out in layers.values()]
                lowered = dict(zip(outputs, session.run(outputs, feed)))
                for name, (_, out) in layers.items():
                    linear = modules[name]
                    onnx_out = lowered[out] + linear.bias.numpy()
                    simulated = linear(inputs[name]).numpy()
                    with float_activations():
                        unrounded = linear(inputs[name]).numpy()
                    scale = np.abs(simulated).max()
                    worst["rounded"] = max(worst["rounded"], np.abs(onnx_out - simulated).max() / scale)
                    worst["float"] = max(worst["float"], np.abs(onnx_out - unrounded).max() / scale)
    finally:
        for hook in hooks:
            hook.remove()
    assert worst["rounded"] < 1e-5  # float rounding: 1.2e-6 of the layer's largest output measured
    assert worst["float"] > 100 * 1e-5  # 4.5e-2 measured: the bound catches a missing or wrong activation rounding
