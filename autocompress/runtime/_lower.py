"""Rewrite an fp32 ONNX graph so ONNX Runtime's CPU kernels execute the quantized policy.

Each Linear's MatMul (or Gemm) is found by the value of its weight, so any
exporter's naming works. The integer codes and scales are the ones the torch
simulation kept (``QuantizedWeight``); nothing is re-quantized here.

- 8-bit per output channel: ``DynamicQuantizeLinear`` + ``MatMulInteger``
  (int8 codes, zero point 0) + ``Cast`` + ``Mul`` by x_scale * column scales,
  the structure ``onnxruntime.quantization.quantize_dynamic`` emits (ORT fuses
  it into ``DynamicQuantizeMatMul``). Activations are rounded to uint8 per tensor
  at run time, which the weight-only simulation does not do.
- 2/4/8 bits in blocks: ``com.microsoft.MatMulNBits`` (the CPU kernel accepts
  2, 4 and 8 bits, power-of-two blocks >= 16, at most 256 for 2 bits). Codes
  are stored as ``code + 2**(bits-1)`` with the default zero point; a group that
  is a multiple of such a block repeats its scale per block, which is exact.
- 16 bits: an fp16 initializer and a ``Cast`` to float, for any Linear whose
  weight is exactly representable in half precision (what 16-bit rounding
  leaves), so this is lossless by construction.
- The word embedding with a per-row ``QuantizedWeight``: int8 table and
  per-row scales, ``Gather`` both, ``Cast``, ``Mul``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers import PreTrainedModel

from autocompress.techniques import QUANT_ATTR, QuantizedWeight

NBITS_BITS = (2, 4, 8)
MIN_BLOCK = 16
MAX_BLOCK = {2: 256}
"""Largest block the CPU MatMulNBits kernel accepts per bit width (others: unbounded)."""
CODEBOOK_VALUES = 256
"""A float weight with at most this many distinct values is a k-means codebook, not a float layer."""
MS_DOMAIN = "com.microsoft"


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
        return {"path": self.path, "file_bytes": self.file_bytes, "layers": {k: asdict(v) for k, v in self.layers.items()}}


def _nbits_block(bits: int, group: int) -> int | None:
    """Largest block size MatMulNBits accepts that tiles a quantization group, or None."""
    block = group & -group  # largest power of two dividing group
    block = min(block, MAX_BLOCK.get(bits, block))
    return block if block >= MIN_BLOCK else None


def _reason(bits: int, group_size: int | None, in_features: int, scheme: str) -> str | None:
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
    if bits == 8 and group == in_features:
        return None
    if _nbits_block(bits, group) is None:
        return (
            f"group_size={group} with bits={bits}: MatMulNBits needs a multiple of a power-of-two block "
            f">= {MIN_BLOCK}" + (f" and <= {MAX_BLOCK[bits]}" if bits in MAX_BLOCK else "")
        )
    return None


def deployable(bits: int, group_size: int | None, in_features: int, *, scheme: str = "linear") -> bool:
    """Whether a Linear quantized this way can be lowered to ONNX Runtime's CPU kernels."""
    return _reason(bits, group_size, in_features, scheme) is None


def _digest(array: np.ndarray) -> tuple[tuple[int, ...], str]:
    data = np.ascontiguousarray(array, dtype=np.float32)
    return data.shape, hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


def _is_codebook(weight: torch.Tensor) -> bool:
    flat = weight.detach().flatten()
    if flat[:4096].unique().numel() > CODEBOOK_VALUES:
        return False
    return flat.unique().numel() <= CODEBOOK_VALUES


def _pack_nbits(quantized: QuantizedWeight, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits ``B`` [N, n_blocks, block*bits/8] uint8 and ``scales`` [N, n_blocks] float32."""
    bits = quantized.bits
    codes = quantized.codes.numpy().astype(np.int16) + 2 ** (bits - 1)
    out_features, in_features = codes.shape
    per_byte = 8 // bits
    values = codes.astype(np.uint8).reshape(out_features, in_features // block, block // per_byte, per_byte)
    packed = np.zeros(values.shape[:-1], dtype=np.uint8)
    for slot in range(per_byte):
        packed |= values[..., slot] << np.uint8(bits * slot)
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


def _matmul_nodes(
    graph: _Graph, node: onnx.NodeProto, name: str, linear: torch.nn.Linear, *, accuracy_level: int
) -> tuple[list[onnx.NodeProto], LayerLowering]:
    """Nodes computing ``node.input[0] @ W`` (into a temporary name for a Gemm, then + bias)."""
    activation = node.input[0]
    out = node.output[0] if node.op_type == "MatMul" else f"{name}_matmul_out"
    nodes: list[onnx.NodeProto] = []
    quantized: QuantizedWeight | None = getattr(linear, QUANT_ATTR, None)
    in_features = linear.in_features
    if quantized is not None:
        reason = _reason(quantized.bits, quantized.group_size, in_features, "linear")
        if reason:
            raise NotDeployable(f"layer {name!r}: {reason}")
        bits, group = quantized.bits, quantized.group_size
        if bits == 8 and group == in_features:
            x_q, x_scale, x_zero = graph.quantized_activation(activation, nodes)
            codes = graph.add_initializer(quantized.codes.numpy().T.copy(), f"{name}.weight_int8")
            zero = graph.add_initializer(np.zeros((), dtype=np.int8), f"{name}.weight_zero_point")
            scales = graph.add_initializer(quantized.scales.numpy().reshape(-1).astype(np.float32), f"{name}.weight_scale")
            nodes += [
                helper.make_node("MatMulInteger", [x_q, codes, x_zero, zero], [f"{name}_int32"], f"{name}_MatMulInteger"),
                helper.make_node("Cast", [f"{name}_int32"], [f"{name}_float"], f"{name}_Cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [x_scale, scales], [f"{name}_scale"], f"{name}_ScaleMul"),
                helper.make_node("Mul", [f"{name}_float", f"{name}_scale"], [out], f"{name}_OutputMul"),
            ]
            return nodes, LayerLowering("MatMulInteger", bits, group)
        block = _nbits_block(bits, group)
        packed, scales = _pack_nbits(quantized, block)
        attrs = {"K": in_features, "N": linear.out_features, "bits": bits, "block_size": block}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        inputs = [activation, graph.add_initializer(packed, f"{name}.weight_q{bits}"), graph.add_initializer(scales, f"{name}.weight_scales")]
        nodes.append(helper.make_node("MatMulNBits", inputs, [out], f"{name}_MatMulNBits", domain=MS_DOMAIN, **attrs))
        return nodes, LayerLowering("MatMulNBits", bits, group, block)
    weight = linear.weight.detach()
    if _is_codebook(weight):
        raise NotDeployable(f"layer {name!r}: a k-means codebook weight has no CPU kernel; only 'linear' is deployable")
    if torch.equal(weight.half().float(), weight):
        half = graph.add_initializer(weight.numpy().T.astype(np.float16), f"{name}.weight_fp16")
        nodes += [
            helper.make_node("Cast", [half], [f"{name}.weight_float"], f"{name}_CastWeight", to=TensorProto.FLOAT),
            helper.make_node("MatMul", [activation, f"{name}.weight_float"], [out], f"{name}_MatMul"),
        ]
        return nodes, LayerLowering("MatMul(fp16->fp32)", 16)
    return [], LayerLowering("MatMul(fp32)", 32)


def _embedding_nodes(graph: _Graph, node: onnx.NodeProto, name: str, quantized: QuantizedWeight) -> list[onnx.NodeProto]:
    if quantized.bits != 8 or quantized.group_size != quantized.codes.shape[1]:
        raise NotDeployable(
            f"embedding {name!r}: bits={quantized.bits}, group_size={quantized.group_size}; "
            "only 8-bit per-row tables are lowered (int8 Gather)"
        )
    codes = graph.add_initializer(quantized.codes.numpy(), f"{name}.weight_int8")
    scales = graph.add_initializer(quantized.scales.numpy().reshape(-1, 1).astype(np.float32), f"{name}.weight_scale")
    ids = node.input[1]
    return [
        helper.make_node("Gather", [codes, ids], [f"{name}_codes"], f"{name}_GatherCodes"),
        helper.make_node("Gather", [scales, ids], [f"{name}_scales"], f"{name}_GatherScales"),
        helper.make_node("Cast", [f"{name}_codes"], [f"{name}_float"], f"{name}_Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}_float", f"{name}_scales"], [node.output[0]], f"{name}_Dequantize"),
    ]


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

    ``accuracy_level`` is MatMulNBits' compute type: 4 (int8 activations,
    rounded per block at run time) was ~20 % faster at batch 1 on AVX2 than 0
    (float math on dequantized weights, which reproduces the weight-only
    simulation to ~1e-6).
    Raises ``NotDeployable`` naming the first layer no CPU kernel can run.
    """
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy_level must be one of 0, 1, 2, 3, 4, got {accuracy_level}")
    proto = onnx.load(str(onnx_in))
    graph = _Graph(proto)
    linears: dict[tuple, list[tuple[str, torch.nn.Linear]]] = {}
    for name, module in _modules(model):  # equal weights (e.g. fully pruned) are assigned in graph order
        linears.setdefault(_digest(module.weight.detach().numpy().T), []).append((name, module))
    expected = sorted(name for group in linears.values() for name, _ in group)
    embedding = model.get_input_embeddings()
    embedding_name = next(name for name, module in model.named_modules() if module is embedding)
    embedding_quant: QuantizedWeight | None = getattr(embedding, QUANT_ATTR, None)
    embedding_key = _digest(embedding.weight.detach().numpy()) if embedding_quant is not None else None

    report: dict[str, LayerLowering] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.graph.node:
        replacement = [_copy(node)]
        weight = _linear_weights(node, graph)
        if weight is not None and linears.get(_digest(weight)):
            name, linear = linears[_digest(weight)].pop(0)
            nodes, report[name] = _matmul_nodes(graph, node, name, linear, accuracy_level=accuracy_level)
            if nodes:
                replacement = nodes
                if node.op_type == "Gemm":
                    bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
                    out = nodes[-1].output[0]
                    replacement.append(
                        helper.make_node("Add", [out, *bias], [node.output[0]], f"{name}_AddBias")
                        if bias
                        else helper.make_node("Identity", [out], [node.output[0]], f"{name}_Out")
                    )
        elif node.op_type == "Gather" and embedding_key is not None and node.input[0] in graph.initializers:
            if _digest(graph.array(node.input[0])) == embedding_key:
                replacement = _embedding_nodes(graph, node, embedding_name, embedding_quant)
                report[embedding_name] = LayerLowering("Gather(int8)", embedding_quant.bits, embedding_quant.group_size)
        new_nodes.extend(replacement)

    missing = sorted(set(expected) - set(report))
    if embedding_quant is not None and embedding_name not in report:
        missing.append(embedding_name)
    if missing:
        raise ValueError(f"{onnx_in} has no MatMul/Gemm/Gather whose weight equals the model's {missing}; export this same model with export_onnx first")
    graph.graph.ClearField("node")
    graph.graph.node.extend(new_nodes)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    graph.drop_unused_initializers()
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(onnx_out))
    return LoweringReport(str(onnx_out), onnx_out.stat().st_size, report)
