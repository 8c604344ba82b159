"""Size of what ships: the deployed file's bytes, and what unstructured sparsity amounts to.

The size objective and every size column are ``shipped_bytes`` of the lowered
ONNX artifact (plus any external-data files it references). No format we ship
stores zeros sparsely, so magnitude pruning is reported as ``sparsity``, never
as size. Only the simulation-only torch backend, which ships no file, uses
``estimated_size_bytes`` (packed bits plus scales), and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from transformers import PreTrainedModel

from autocompress.techniques.quantizer import QUANT_ATTR

if TYPE_CHECKING:
    from autocompress.policy import LayerSpec

FLOAT_BYTES = 4


def shipped_bytes(onnx_path: str | Path) -> int:
    """Bytes of an ONNX file plus the external-data files its initializers reference."""
    path = Path(onnx_path)
    model = onnx.load(str(path), load_external_data=False)
    external = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in external)


def estimated_size_bytes(model: PreTrainedModel, plan: Mapping[str, LayerSpec], *, scheme: str = "linear") -> int:
    """Dense storage under the plan: packed codes plus scales (or a codebook) per Linear, float32 elsewhere."""
    total = 0.0
    counted: set[int] = set()
    modules = dict(model.named_modules())
    for name, spec in plan.items():
        linear = modules[name]
        quantized = getattr(linear, QUANT_ATTR, None)
        if spec.bits >= 16:
            overhead = 0.0
        elif scheme == "kmeans":
            overhead = FLOAT_BYTES * 2**spec.bits
        else:
            overhead = FLOAT_BYTES * (quantized.scales.numel() if quantized is not None else linear.out_features)
        total += linear.weight.numel() * spec.bits / 8 + overhead
        counted.add(id(linear.weight))
    embedding = model.get_input_embeddings()
    quantized = getattr(embedding, QUANT_ATTR, None)
    if quantized is not None:
        total += embedding.weight.numel() * quantized.bits / 8 + FLOAT_BYTES * quantized.scales.numel()
        counted.add(id(embedding.weight))
    total += sum(p.numel() * FLOAT_BYTES for p in model.parameters() if id(p) not in counted)
    return int(total)


def sparsity(model: PreTrainedModel, names: list[str] | tuple[str, ...]) -> float:
    """Fraction of exactly-zero weights over the named Linear layers (0.0 when none are named)."""
    modules = dict(model.named_modules())
    weights = [modules[name].weight for name in names]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights)) / total if total else 0.0

