"""A decoder as an ONNX Runtime GenAI folder, its layers on the kernels the policy's simulation chose.

ONNX Runtime GenAI's model builder writes the folder users deploy a decoder
with (``genai_config.json``, ``model.onnx`` with grouped-query attention and a
KV cache, the tokenizer). Its own quantization is one width for every MatMul
(``-p int4``: symmetric, blocks of 32) with a few named exceptions; it cannot
take a width and group size per layer. So the builder writes the float graph
of the simulated model and ``lower_genai`` replaces each quantized MatMul by a
``MatMulNBits`` holding the simulation's own codes, scales and uint8 zero
points (``techniques.weight_only``), checking first that they de-quantize to
the float weights the builder wrote there (and, before that, that the
builder's float graph computes the model's logits). A tied embedding gathers its rows
from ``lm_head``'s codes (``GatherBlockQuantized``), as the builder's int4
build does, so the matrix ships once. The CPU kernels take 2, 4 and 8 bits;
3 bits has none and is refused by name. ``accuracy_level`` 4 (the builder's
CPU default) rounds activations to int8 inside the kernel: the verification
(``measurement.generation``) compares the lowered graph with the torch
simulation by perplexity.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from transformers import PreTrainedModel

from autocompress.models.decoders import decoder_family, tied_embedding
from autocompress.models.loading import copy_tokenizer
from autocompress.runtime._lower import _Graph, pack_codes
from autocompress.techniques.weight_only import AffineWeight

GENAI_BITS = (2, 4, 8)
"""Widths ONNX Runtime's CPU ``MatMulNBits`` and ``GatherBlockQuantized`` run."""
ACCURACY_LEVEL = 4
"""int8 activations inside ``MatMulNBits``: the builder's CPU default, and with uint8 zero points the fastest kernel."""
LOWERING_TOLERANCE = 0.02
"""Largest relative difference between a GenAI folder's dev perplexity and its torch simulation's. MatMulNBits at
accuracy level 4 rounds activations to int8 (the simulation does not): measured on SmolLM2, 0.2-0.6 % apart."""
MS_DOMAIN = "com.microsoft"
MODEL_FILES = ("model.onnx", "model.onnx.data")
"""The files of a GenAI folder that hold the model: its size is theirs."""
_NODE = re.compile(r"^/model/layers\.(\d+)/(\w+/\w+)/MatMul$")


class GenaiRefusal(ValueError):
    """A policy the GenAI CPU runtime cannot run (a width without a kernel, a family without a builder)."""


class GenaiMismatch(RuntimeError):
    """The codes to lower do not de-quantize to the weights the builder wrote for that node."""


@dataclass(frozen=True)
class GenaiBuild:
    """A written GenAI folder and what each of its MatMuls became (node name -> ``"float"`` or ``"int4 g32"``)."""

    folder: Path
    nodes: dict[str, str]

    @property
    def bytes(self) -> int:
        """The bytes of the folder's model files: what ships."""
        return model_bytes(self.folder)


def model_bytes(folder: Path) -> int:
    """The bytes of a GenAI folder's model files (``model.onnx`` and its external data)."""
    return sum((folder / name).stat().st_size for name in MODEL_FILES if (folder / name).is_file())


def run_builder(hf_folder: Path, out: Path, precision: str) -> Path:
    """What ``python -m onnxruntime_genai.models.builder -i HF_FOLDER -o OUT -p PRECISION -e cpu`` writes, the one-liner users run.

    Called in this process through the two functions the builder's ``__main__``
    calls (``parse_extra_options``, ``create_model``): a new process would spend
    some 7 s importing torch and transformers again for a build of 0.1-12 s.
    """
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    printed = io.StringIO()  # the builder prints every layer and a progress bar per tensor: a search's log is not the place
    with tempfile.TemporaryDirectory(prefix="genai-cache-") as cache, redirect_stdout(printed), redirect_stderr(printed):
        settings = parse_extra_options("", str(hf_folder), str(out), precision, "cpu", cache, ["hf_token=false"])  # a local folder only
        create_model("", str(hf_folder), str(out), precision, "cpu", cache, **settings)
    return out


def genai_logits(folder: Path):
    """A ``tasks.language_modeling.Logits`` function running the folder's ``model.onnx`` with an empty KV cache."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])  # batch 1, nothing cached yet
    empty = {i.name: np.zeros(shape, dtype=np.float32) for i in session.get_inputs() if i.name.startswith("past_key_values")}

    def logits(input_ids: torch.Tensor) -> np.ndarray:
        ids = input_ids.numpy().astype(np.int64)
        return session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids), **empty})[0][0]
    return logits


def check_float_build(folder: Path, model: PreTrainedModel, *, tokens: int = 16) -> None:
    """The builder's float graph must compute ``model``'s logits before any layer is lowered into it."""
    ids = torch.arange(tokens).remainder(model.config.vocab_size - 3).add(3).unsqueeze(0)  # ids past the special ones
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0].float().numpy()
    difference = float(np.abs(genai_logits(folder)(ids) - expected).max())
    if difference > 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise GenaiMismatch(f"ONNX Runtime GenAI's builder wrote a {model.config.model_type} graph whose logits differ from transformers' "
                            f"by {difference:.3g} (largest logit {np.abs(expected).max():.3g}); not deployed")


def build_genai(model: PreTrainedModel, tokenizer_folder: str | Path, quantized: Mapping[str, AffineWeight], out: Path, *,
                float_build: Path | None = None) -> GenaiBuild:
    """Write ``model`` (its simulated float weights) as a GenAI folder at ``out``, lowering every module in ``quantized``;
    the tokenizer files (and chat template) of ``tokenizer_folder`` ship in it, as the builder requires.

    ``float_build``: the builder's float folder of a model whose every weight outside ``quantized`` is ``model``'s (the
    teacher's, when ``model`` is a quantized copy of it, checked once against it), lowered into instead of saving
    ``model`` and running the builder again (on SmolLM2-135M a 540 MB write and a float build per trial). Its float
    weights of the lowered MatMuls are not ``model``'s, so each one's codes are checked against ``model``'s own weight."""
    refuse_widths(quantized)
    with tempfile.TemporaryDirectory(prefix="genai-build-") as work:
        float_folder = float_build
        if float_folder is None:
            hf = Path(work) / "hf"
            with redirect_stderr(io.StringIO()):  # transformers' "Writing model shards" bar
                model.save_pretrained(hf)
            copy_tokenizer(tokenizer_folder, hf)
            if (Path(tokenizer_folder) / "chat_template.jinja").is_file():
                shutil.copy2(Path(tokenizer_folder) / "chat_template.jinja", hf)
            float_folder = run_builder(hf, Path(work) / "float", "fp32")
            check_float_build(float_folder, model)
        graph = onnx.load(str(float_folder / "model.onnx"))
        nodes = lower_genai(graph, model, quantized, weights_from_model=float_build is not None)
        out.mkdir(parents=True, exist_ok=True)
        for path in float_folder.iterdir():
            if path.name not in MODEL_FILES:
                shutil.copy2(path, out / path.name)
        for name in MODEL_FILES:
            (out / name).unlink(missing_ok=True)
        onnx.save(graph, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
    return GenaiBuild(out, nodes)


def refuse_widths(quantized: Mapping[str, AffineWeight]) -> None:
    for name, weight in quantized.items():
        if weight.bits not in GENAI_BITS:
            raise GenaiRefusal(f"{name}: {weight.bits}-bit weights have no ONNX Runtime CPU kernel; allowed bits: {', '.join(map(str, GENAI_BITS))}")


def _rows(outputs: int, part: str) -> slice:
    """Rows ``i/n`` (the i-th of n equal slices of ``outputs`` rows); all of them for ``""``."""
    if not part:
        return slice(None)
    index, count = map(int, part.split("/"))
    return slice(index * outputs // count, (index + 1) * outputs // count)


def _slice(weight: AffineWeight, part: str) -> AffineWeight:
    rows = _rows(len(weight.codes), part)
    return AffineWeight(weight.codes[rows], weight.scales[rows], weight.zeros[rows], weight.bits, weight.group_size)


def _concat(weights: list[AffineWeight]) -> AffineWeight:
    first = weights[0]
    if any((w.bits, w.group_size) != (first.bits, first.group_size) for w in weights):
        raise GenaiRefusal("query, key and value share one MatMul in a GenAI build: give them one width and group size")
    return AffineWeight(*(torch.cat([getattr(w, part) for w in weights]) for part in ("codes", "scales", "zeros")), first.bits, first.group_size)


def _check(weight: AffineWeight, expected: np.ndarray, node: str) -> None:
    """``expected`` is the [K, N] float weight of the simulated model, as the builder lays it out."""
    values = weight.dequantize().numpy().T
    if values.shape != expected.shape or not np.allclose(values, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max())):
        raise GenaiMismatch(f"{node}: the policy's codes do not de-quantize to the builder's weight {expected.shape}")


def _matmul_nbits(graph: _Graph, node: onnx.NodeProto, weight: AffineWeight, prefix: str) -> tuple[onnx.NodeProto, str, str]:
    codes = weight.codes.numpy()
    out_features, in_features = codes.shape
    blocks = in_features // weight.group_size
    packed = graph.add_initializer(pack_codes(codes, weight.bits).reshape(out_features, blocks, -1), f"{prefix}.weight_q{weight.bits}")
    scales = graph.add_initializer(weight.scales.numpy().astype(np.float32), f"{prefix}.weight_scales")
    zeros = graph.add_initializer(pack_codes(weight.zeros.numpy().astype(np.uint8), weight.bits).reshape(-1), f"{prefix}.weight_zeros")
    lowered = helper.make_node("MatMulNBits", [node.input[0], packed, scales, zeros], list(node.output), f"{node.name}_Q{weight.bits}",
                               domain=MS_DOMAIN, K=in_features, N=out_features, bits=weight.bits, block_size=weight.group_size,
                               accuracy_level=ACCURACY_LEVEL)
    return lowered, packed, scales


def lower_genai(graph: onnx.ModelProto, model: PreTrainedModel, quantized: Mapping[str, AffineWeight], *,
                weights_from_model: bool = False) -> dict[str, str]:
    """Rewrite the builder's float ``graph`` of ``model`` in place; what each MatMul became. ``weights_from_model``: the
    graph is another model's (``build_genai``'s ``float_build``), so codes are checked against ``model``'s weights, laid out
    as the builder lays the graph's out (same shape)."""
    family = decoder_family(model.config)
    wrapped = _Graph(graph)
    nodes, lowered_nodes, head_codes = {}, [], None
    for node in graph.graph.node:
        match = _NODE.match(node.name)
        parts = [name.partition("#") for name in family.builder_nodes.get(match[2], ())] if match else []
        modules = [f"model.layers.{match[1]}.{name}" for name, _, _ in parts]
        if node.name == "/lm_head/MatMul":
            parts, modules = [("lm_head", "", "")], ["lm_head"]
        if node.op_type != "MatMul" or not modules or not all(name in quantized for name in modules):
            if modules and any(name in quantized for name in modules):
                raise GenaiRefusal(f"{node.name}: {', '.join(modules)} share one MatMul; quantize all of them or none")
            nodes.update({node.name: "float"} if modules else {})
            lowered_nodes.append(node)
            continue
        weight = _concat([_slice(quantized[name], part) for name, (_, _, part) in zip(modules, parts)])
        expected = wrapped.array(node.input[1])
        if weights_from_model:
            weights = [model.get_submodule(name).weight.detach().float().numpy() for name in modules]
            mine = np.concatenate([w[_rows(len(w), part)] for w, (_, _, part) in zip(weights, parts)]).T
            if mine.shape != expected.shape:
                raise GenaiMismatch(f"{node.name}: the float build's weight is {expected.shape}, {', '.join(modules)} give {mine.shape}")
            expected = mine
        _check(weight, expected, node.name)
        new, packed, scales = _matmul_nbits(wrapped, node, weight, node.name.strip("/").replace("/", "."))
        if node.name == "/lm_head/MatMul":
            head_codes = (packed, scales, weight)
        nodes[node.name] = f"int{weight.bits} g{weight.group_size}"
        lowered_nodes.append(new)
    if head_codes is not None and tied_embedding(model):
        lowered_nodes = _gather_from_head(lowered_nodes, wrapped, *head_codes)
        nodes["/model/embed_tokens/Gather"] = "from lm_head"
    del graph.graph.node[:]
    graph.graph.node.extend(lowered_nodes)
    if not any(o.domain == MS_DOMAIN for o in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    wrapped.drop_unused_initializers()
    return nodes


def _gather_from_head(nodes: list[onnx.NodeProto], graph: _Graph, packed: str, scales: str, weight: AffineWeight) -> list[onnx.NodeProto]:
    """Replace the embedding's ``Gather`` (of the transposed float head) by a ``GatherBlockQuantized`` of ``lm_head``'s codes."""
    vocab, hidden = weight.codes.shape
    shape = graph.add_initializer(np.array([vocab, hidden * weight.bits // 8], dtype=np.int64), "embed_tokens.rows_shape")
    zeros = graph.add_initializer(pack_codes(weight.zeros.numpy().astype(np.uint8), weight.bits), "embed_tokens.weight_zeros")
    gather = next(node for node in nodes if node.name == "/model/embed_tokens/Gather")
    table = next((node for node in nodes if gather.input[0] in node.output and node.op_type == "Transpose"), None)
    rows = "/model/embed_tokens/Reshape/output_0"
    replacement = [helper.make_node("Reshape", [packed, shape], [rows], "/model/embed_tokens/Reshape"),
                   helper.make_node("GatherBlockQuantized", [rows, gather.input[1], scales, zeros], list(gather.output),
                                    "/model/embed_tokens/GatherBlockQuantized", domain=MS_DOMAIN, bits=weight.bits,
                                    block_size=weight.group_size, gather_axis=0, quantize_axis=1)]
    return [new for node in nodes if node is not table for new in (replacement if node is gather else [node])]

