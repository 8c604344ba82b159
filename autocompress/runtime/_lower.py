"""Rewrite an fp32 ONNX graph so ONNX Runtime's CPU kernels execute the quantized policy.

Each Linear's MatMul (or Gemm) is found by the value of its weight, so any
exporter's naming works. The integer codes and scales are the ones the torch
simulation kept (``QuantizedWeight``); nothing is re-quantized here.

- 8-bit per output channel: ``DynamicQuantizeLinear`` + ``MatMulInteger``
  + ``Cast`` + ``Mul`` by x_scale * column scales, the structure
  ``onnxruntime.quantization.quantize_dynamic`` emits (ORT fuses it into
  ``DynamicQuantizeMatMul``). At batch 1 on AVX2 it ran clearly faster than
  MatMulNBits with bits=8. The int8 codes are stored as uint8 with zero point
  128 (u8u8): on x86 CPUs without VNNI, ORT's u8s8 kernel adds pairs of
  products in int16 and saturates (255 x 127 x 2 > 32767), which moved single
  layers by up to 24 % of their largest output on an AVX2 EPYC; u8u8 is exact
  on every CPU, about 8 % slower there. Activations are rounded to uint8 per tensor at
  run time; the simulation rounds them the same way (``quantizer.simulate_dynamic_uint8``),
  exact per layer, though float-order differences can flip a rounding that later layers amplify.
- 2/4/8 bits in blocks: ``com.microsoft.MatMulNBits`` (the CPU kernel accepts
  2, 4 and 8 bits, power-of-two blocks >= 16, at most 256 for 2 bits). Codes
  are stored as ``code + 2**(bits-1)`` with the default zero point; a group that
  is a multiple of such a block repeats its scale per block, which is exact.
- 16 bits: an fp16 initializer and a ``Cast`` to float, for any Linear whose
  weight is exactly representable in half precision (what 16-bit rounding
  leaves), so this is lossless by construction.
- The word embedding with a per-row 8-bit ``QuantizedWeight``: int8 table and
  per-row scales, ``Gather`` both, ``Cast``, ``Mul``; at 4 bits:
  ``com.microsoft.GatherBlockQuantized`` (two codes per byte, low nibble
  first, stored as ``code + 8`` with the default zero point; a row's scale is
  repeated over the kernel's power-of-two blocks, which is exact).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers import PreTrainedModel

from autocompress.techniques.quantizer import QUANT_ATTR, QuantizedWeight, runs_as_matmul_integer

NBITS_BITS = (2, 4, 8)
MIN_BLOCK = 16
MAX_BLOCK = {2: 256}
"""Largest block the CPU MatMulNBits kernel accepts per bit width (others: unbounded)."""
CODEBOOK_VALUES = 256
"""A float weight with at most this many distinct values is a k-means codebook, not a float layer."""
MS_DOMAIN = "com.microsoft"
U8U8_ZERO = 128
"""Zero point of the 8-bit weight codes stored as uint8 (code + 128): exact where ORT's u8s8 kernel saturates."""


class NotDeployable(ValueError):
    """A layer's quantization has no ONNX Runtime CPU kernel."""


@dataclass(frozen=True)
class LayerLowering:
    """What one layer became in the ONNX graph."""

    op: str
    bits: int
    group_size: int | None = None
    block_size: int | None = None


@dataclass(frozen=True)
class LoweringReport:
    """Per-layer lowering (by module name) and the size of the written file."""

    path: str
    file_bytes: int
    layers: dict[str, LayerLowering] = field(default_factory=dict)

    def to_dict(self) -> dict:
        layers = {name: asdict(layer) for name, layer in self.layers.items()}
        return {"path": self.path, "file_bytes": self.file_bytes, "layers": layers}


def tiling_block(group: int, low: int, high: int | None = None) -> int | None:
    """The largest power of two in ``[low, high]`` that divides ``group`` (a block that tiles the group), or None."""
    block = group & -group  # largest power of two dividing group; every smaller one divides it too
    block = block if high is None else min(block, high)
    return block if block >= low else None


def nbits_block(bits: int, group: int) -> int | None:
    """Largest block MatMulNBits / GatherBlockQuantized accept that tiles a quantization group, or None."""
    return tiling_block(group, MIN_BLOCK, MAX_BLOCK.get(bits))


def kernel_refusal(bits: int, group_size: int | None, in_features: int, scheme: str) -> str | None:
    """Why (bits, group_size) cannot run on ONNX Runtime's CPU kernels, or None if it can."""
    if bits >= 16:
        return None
    if scheme != "linear":
        return f"scheme={scheme!r} (a codebook) has no CPU kernel; only 'linear' is deployable"
    if bits not in NBITS_BITS:
        return f"bits={bits} has no CPU kernel; deployable: {NBITS_BITS}, 16, 32"
    group = in_features if group_size is None else group_size
    if group <= 0 or in_features % group:
        return f"group_size={group_size} does not divide in_features={in_features}"
    if runs_as_matmul_integer(bits, group, in_features):
        return None
    if nbits_block(bits, group) is None:
        return f"group_size={group} with bits={bits}: MatMulNBits needs a multiple of a power-of-two block >= {MIN_BLOCK}" + (
            f" and <= {MAX_BLOCK[bits]}" if bits in MAX_BLOCK else ""
        )
    return None


def deployable(bits: int, group_size: int | None, in_features: int, *, scheme: str = "linear") -> bool:
    """Whether a Linear quantized this way can be lowered to ONNX Runtime's CPU kernels."""
    return kernel_refusal(bits, group_size, in_features, scheme) is None


def weight_digest(array: np.ndarray) -> tuple[tuple[int, ...], str]:
    data = np.ascontiguousarray(array, dtype=np.float32)
    return data.shape, hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


def _is_codebook(weight: torch.Tensor) -> bool:
    """A large float weight with 2..256 distinct values came from k-means (an all-zero one did not)."""
    flat = weight.detach().flatten()
    if flat.numel() < 16 * CODEBOOK_VALUES or flat[:4096].unique().numel() > CODEBOOK_VALUES:
        return False
    return 1 < flat.unique().numel() <= CODEBOOK_VALUES


def pack_codes(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit values along the last axis, lowest bits first, padded to whole bytes: the layout of
    ``MatMulNBits`` and ``GatherBlockQuantized`` weights and zero points."""
    per_byte = 8 // bits
    values = np.pad(values.astype(np.uint8), [(0, 0)] * (values.ndim - 1) + [(0, (-values.shape[-1]) % per_byte)])
    values = values.reshape(*values.shape[:-1], -1, per_byte)
    packed = np.zeros(values.shape[:-1], dtype=np.uint8)
    for slot in range(per_byte):
        packed |= values[..., slot] << np.uint8(bits * slot)
    return packed


def _pack_nbits(quantized: QuantizedWeight, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits ``B`` [N, n_blocks, block*bits/8] uint8 and ``scales`` [N, n_blocks] float32."""
    bits = quantized.bits
    codes = quantized.codes.numpy().astype(np.int16) + 2 ** (bits - 1)
    out_features, in_features = codes.shape
    packed = pack_codes(codes.reshape(out_features, in_features // block, block), bits)
    scales = np.repeat(quantized.scales.numpy().astype(np.float32), quantized.group_size // block, axis=1)
    return packed, scales


class _Graph:
    """The graph being rewritten: new nodes replace old ones in place, initializers by name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.activation_quant: dict[str, tuple[str, str, str]] = {}

    def array(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def add_initializer(self, array: np.ndarray, name: str) -> str:
        """Add ``array`` as ``name``; a name already added (a weight shared by several nodes) is reused."""
        if name in self.initializers:
            return name
        tensor = numpy_helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def quantized_activation(self, name: str, nodes: list[onnx.NodeProto]) -> tuple[str, str, str]:
        """One DynamicQuantizeLinear per activation, shared by every MatMulInteger reading it."""
        if name not in self.activation_quant:
            outputs = (f"{name}_quant", f"{name}_scale", f"{name}_zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [name], list(outputs), f"{name}_DynamicQuantize"))
            self.activation_quant[name] = outputs
        return self.activation_quant[name]

    def drop_unused_initializers(self) -> None:
        used = {i for node in self.graph.node for i in node.input}
        keep = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def _linear_weights(node: onnx.NodeProto, graph: _Graph) -> np.ndarray | None:
    """The [K, N] weight a MatMul/Gemm node multiplies by, if it is a plain constant."""
    if node.op_type == "MatMul":
        weight = graph.array(node.input[1])
        return weight if weight is not None and weight.ndim == 2 else None
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        weight = graph.array(node.input[1])
        if weight is None:
            return None
        return weight.T if attrs.get("transB", 0) else weight
    return None


def _matmul_integer(graph: _Graph, x: str, out: str, name: str, quantized: QuantizedWeight, tag: str) -> list[onnx.NodeProto]:
    """``quantize_dynamic``'s structure: uint8 activations x the int8 codes shifted to uint8, rescaled per output column.

    Initializers are named after the layer ``name``, nodes and their outputs after ``tag`` (one per use of a shared weight).
    """
    nodes: list[onnx.NodeProto] = []
    x_q, x_scale, x_zero = graph.quantized_activation(x, nodes)
    codes = graph.add_initializer((quantized.codes.numpy().T.astype(np.int16) + U8U8_ZERO).astype(np.uint8), f"{name}.weight_uint8")
    zero = graph.add_initializer(np.array(U8U8_ZERO, dtype=np.uint8), f"{name}.weight_zero_point")
    scales = graph.add_initializer(quantized.scales.numpy().reshape(-1).astype(np.float32), f"{name}.weight_scale")
    return nodes + [
        helper.make_node("MatMulInteger", [x_q, codes, x_zero, zero], [f"{tag}_int32"], f"{tag}_MatMulInteger"),
        helper.make_node("Cast", [f"{tag}_int32"], [f"{tag}_float"], f"{tag}_Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [x_scale, scales], [f"{tag}_scale"], f"{tag}_ScaleMul"),
        helper.make_node("Mul", [f"{tag}_float", f"{tag}_scale"], [out], f"{tag}_OutputMul"),
    ]


def _matmul_nbits(
    graph: _Graph, x: str, out: str, name: str, quantized: QuantizedWeight, block: int, accuracy_level: int, tag: str
) -> onnx.NodeProto:
    packed, scales = _pack_nbits(quantized, block)
    out_features, in_features = quantized.codes.shape
    attrs = {"K": in_features, "N": out_features, "bits": quantized.bits, "block_size": block}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    b = graph.add_initializer(packed, f"{name}.weight_q{quantized.bits}")
    s = graph.add_initializer(scales, f"{name}.weight_scales")
    return helper.make_node("MatMulNBits", [x, b, s], [out], f"{tag}_MatMulNBits", domain=MS_DOMAIN, **attrs)


def _matmul_fp16(graph: _Graph, x: str, out: str, name: str, weight: torch.Tensor, tag: str) -> list[onnx.NodeProto]:
    half = graph.add_initializer(weight.numpy().T.astype(np.float16), f"{name}.weight_fp16")
    return [
        helper.make_node("Cast", [half], [f"{tag}.weight_float"], f"{tag}_CastWeight", to=TensorProto.FLOAT),
        helper.make_node("MatMul", [x, f"{tag}.weight_float"], [out], f"{tag}_MatMul"),
    ]


def _lower_linear(
    graph: _Graph, node: onnx.NodeProto, name: str, linear: torch.nn.Linear, *, accuracy_level: int, use: int = 0
) -> tuple[list[onnx.NodeProto], LayerLowering]:
    """Nodes replacing ``node`` (none if it stays fp32) and what the layer became.

    ``use`` counts earlier nodes that multiplied by the same weight (ALBERT runs one block at every depth):
    they share its initializers and get their own node names.
    """
    x = node.input[0]
    tag = name if use == 0 else f"{name}@{use}"
    out = node.output[0] if node.op_type == "MatMul" else f"{tag}_matmul_out"
    quantized: QuantizedWeight | None = getattr(linear, QUANT_ATTR, None)
    weight = linear.weight.detach()
    if quantized is not None:
        bits, group = quantized.bits, quantized.group_size
        reason = kernel_refusal(bits, group, linear.in_features, "linear")
        if reason:
            raise NotDeployable(f"layer {name!r}: {reason}")
        if runs_as_matmul_integer(bits, group, linear.in_features):
            nodes, lowered = _matmul_integer(graph, x, out, name, quantized, tag), LayerLowering("MatMulInteger", bits, group)
        else:
            block = nbits_block(bits, group)
            nodes = [_matmul_nbits(graph, x, out, name, quantized, block, accuracy_level, tag)]
            lowered = LayerLowering("MatMulNBits", bits, group, block)
    elif _is_codebook(weight):
        raise NotDeployable(f"layer {name!r}: a k-means codebook weight has no CPU kernel; only 'linear' is deployable")
    elif torch.equal(weight.half().float(), weight):
        nodes, lowered = _matmul_fp16(graph, x, out, name, weight, tag), LayerLowering("MatMul(fp16->fp32)", 16)
    else:
        return [], LayerLowering("MatMul(fp32)", 32)
    if node.op_type == "Gemm":  # the Gemm's bias, if any, is added after the product
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        op = "Add" if bias else "Identity"
        nodes.append(helper.make_node(op, [out, *bias], [node.output[0]], f"{tag}_{op}"))
    return nodes, lowered


def _lower_embedding(
    graph: _Graph, node: onnx.NodeProto, name: str, quantized: QuantizedWeight
) -> tuple[list[onnx.NodeProto], LayerLowering]:
    """Gather the quantized rows by token id and dequantize them."""
    rows, cols = quantized.codes.shape
    ids = node.input[1]
    if quantized.bits == 8 and quantized.group_size == cols:
        codes = graph.add_initializer(quantized.codes.numpy(), f"{name}.weight_int8")
        scales = graph.add_initializer(quantized.scales.numpy().reshape(-1, 1).astype(np.float32), f"{name}.weight_scale")
        nodes = [
            helper.make_node("Gather", [codes, ids], [f"{name}_codes"], f"{name}_GatherCodes"),
            helper.make_node("Gather", [scales, ids], [f"{name}_scales"], f"{name}_GatherScales"),
            helper.make_node("Cast", [f"{name}_codes"], [f"{name}_float"], f"{name}_Cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}_float", f"{name}_scales"], [node.output[0]], f"{name}_Dequantize"),
        ]
        return nodes, LayerLowering("Gather(int8)", 8, cols)
    group = quantized.group_size
    block = nbits_block(4, group)
    if quantized.bits == 4 and block is not None and cols % group == 0:
        unsigned = (quantized.codes.numpy().astype(np.int16) + 8).astype(np.uint8)
        packed = graph.add_initializer(unsigned[:, 0::2] | (unsigned[:, 1::2] << 4), f"{name}.weight_uint4")
        per_block = np.repeat(quantized.scales.numpy().reshape(rows, cols // group), group // block, axis=1)  # exact
        scales = graph.add_initializer(per_block.astype(np.float32), f"{name}.weight_scales")
        gather = helper.make_node(
            "GatherBlockQuantized",
            [packed, ids, scales],
            [node.output[0]],
            f"{name}_GatherBlockQuantized",
            domain=MS_DOMAIN,
            gather_axis=0,
            quantize_axis=1,
            block_size=block,
            bits=4,
        )
        return [gather], LayerLowering("GatherBlockQuantized(int4)", 4, group, block)
    raise NotDeployable(
        f"embedding {name!r}: bits={quantized.bits}, group_size={quantized.group_size}; lowered are 8-bit per-row "
        f"tables (int8 Gather) and 4-bit groups divisible by a power of two >= {MIN_BLOCK} (GatherBlockQuantized)"
    )


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _modules(model: PreTrainedModel) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.numel():
            yield name, module


def lower(
    model: PreTrainedModel,
    onnx_in: str | Path,
    onnx_out: str | Path,
    *,
    accuracy_level: int = 4,
) -> LoweringReport:
    """Write ``onnx_out``: ``onnx_in`` (exported from ``model``) with every quantized layer on ORT's integer kernels.

    A classifier's file metadata carries the class names (``id2label``, as JSON), so a shipped model names its predictions.

    ``accuracy_level`` is MatMulNBits' compute type: 4 (int8 activations,
    rounded per block at run time) ran faster at batch 1 on AVX2 than 0 (float
    math on the dequantized weights, which reproduces the weight-only
    simulation to float rounding). Raises ``NotDeployable`` naming the first layer no CPU kernel can run.
    """
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy_level must be one of 0, 1, 2, 3, 4, got {accuracy_level}")
    proto = onnx.load(str(onnx_in))
    graph = _Graph(proto)
    linears: dict[tuple, list[tuple[str, torch.nn.Linear]]] = {}
    for name, module in _modules(model):  # equal weights (e.g. fully pruned) are assigned in graph order
        linears.setdefault(weight_digest(module.weight.detach().numpy().T), []).append((name, module))
    expected = sorted(name for group in linears.values() for name, _ in group)
    embedding = model.get_input_embeddings()
    embedding_name = next(name for name, module in model.named_modules() if module is embedding)
    embedding_quant: QuantizedWeight | None = getattr(embedding, QUANT_ATTR, None)
    embedding_key = weight_digest(embedding.weight.detach().numpy()) if embedding_quant is not None else None

    report: dict[str, LayerLowering] = {}
    new_nodes: list[onnx.NodeProto] = []
    shared: dict[str, tuple[str, torch.nn.Linear, int]] = {}  # weight initializer -> its layer and uses so far
    for node in graph.graph.node:
        replacement = [_copy(node)]
        weight = _linear_weights(node, graph)
        candidates = linears.get(weight_digest(weight), []) if weight is not None else []
        if candidates:
            name, linear = candidates.pop(0)
            shared[node.input[1]] = (name, linear, 1)
            nodes, report[name] = _lower_linear(graph, node, name, linear, accuracy_level=accuracy_level)
            replacement = nodes or replacement
        elif weight is not None and node.input[1] in shared:  # every layer with this weight is placed: a block shared across depth
            name, linear, uses = shared[node.input[1]]
            shared[node.input[1]] = (name, linear, uses + 1)
            replacement = _lower_linear(graph, node, name, linear, accuracy_level=accuracy_level, use=uses)[0] or replacement
        elif node.op_type == "Gather" and embedding_key is not None and node.input[0] in graph.initializers:
            if weight_digest(graph.array(node.input[0])) == embedding_key:
                replacement, report[embedding_name] = _lower_embedding(graph, node, embedding_name, embedding_quant)
        new_nodes.extend(replacement)

    missing = sorted(set(expected) - set(report))
    if embedding_quant is not None and embedding_name not in report:
        missing.append(embedding_name)
    if missing:
        raise ValueError(
            f"{onnx_in} has no MatMul/Gemm/Gather whose weight equals the model's {missing}; "
            "export this same model with export_onnx first"
        )
    graph.graph.ClearField("node")
    graph.graph.node.extend(new_nodes)
    if any(n.domain == MS_DOMAIN for n in new_nodes) and not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    graph.drop_unused_initializers()
    if type(model).__name__.endswith("ForSequenceClassification"):  # a bare encoder's default id2label would name nothing
        labels = {str(i): name for i, name in sorted(model.config.id2label.items())}
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "id2label": json.dumps(labels)})
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(onnx_out))
    return LoweringReport(str(onnx_out), onnx_out.stat().st_size, report)
