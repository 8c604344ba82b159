"""Rebuild model.onnx from model.fp32.onnx with ONNX Runtime's own quantization tools, as recipe.json says.

Usage: python rebuild.py [FOLDER]   (default: this script's folder; needs onnx and onnxruntime)

recipe.json lists the passes in order. "quantize_dynamic" passes turn exactly
"nodes_to_quantize" into DynamicQuantizeLinear + MatMulInteger.
"MatMulNBitsQuantizer" passes quantize every node of "op_types_to_quantize"
except "nodes_to_exclude" (its nodes_to_include would add nodes, not limit
them), so each lists every other node; "nodes" says which ones it must turn
into "becomes". After each pass this script checks exactly that.
Written by autocompress's ort-recipe exporter.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

RECIPE_VERSION = 1
QUIET = ("", "onnxruntime.quantization.matmul_nbits_quantizer")


class RecipeMismatch(RuntimeError):
    """A pass did not turn exactly its listed nodes into its kernel."""


def _check(index: int, step: dict, old: set, after: onnx.ModelProto) -> None:
    """``old``: the names of the pass's kernel before it ran (the tools rewrite their input model in place)."""
    listed = step.get("nodes", step.get("nodes_to_quantize"))
    op = step["becomes"]
    new = {n.name: n for n in after.graph.node if n.op_type == op and n.name not in old}
    suffix = "_quant" if step["tool"] == "quantize_dynamic" else "_Q{}".format(step["bits"])
    made = sorted(name[: -len(suffix)] for name in new)
    if made != sorted(listed):
        raise RecipeMismatch(
            "pass {} ({}): {} nodes became {} where the recipe lists {}: made but not listed {}, listed but not made {}".format(
                index, step["tool"], len(made), op, len(listed), sorted(set(made) - set(listed)), sorted(set(listed) - set(made)))
        )
    for node in new.values():
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if "bits" in step and (attrs.get("bits", 4), attrs.get("block_size")) != (step["bits"], step["block_size"]):
            raise RecipeMismatch("pass {}: {} has bits/block_size {} / {}".format(index, node.name, attrs.get("bits"), attrs.get("block_size")))


def _run(step: dict, model: onnx.ModelProto, scratch: Path) -> onnx.ModelProto:
    if step["tool"] == "quantize_dynamic":
        if not step["nodes_to_quantize"]:
            raise ValueError("quantize_dynamic with no nodes_to_quantize would quantize every node")
        source, target = scratch / "in.onnx", scratch / "out.onnx"
        onnx.save(model, str(source))
        quantize_dynamic(
            source, target, op_types_to_quantize=step["op_types_to_quantize"], per_channel=step["per_channel"],
            reduce_range=step["reduce_range"], weight_type=QuantType[step["weight_type"]],
            nodes_to_quantize=step["nodes_to_quantize"], extra_options=dict(step["extra_options"]),
        )
        return onnx.load(str(target))
    if step["tool"] == "MatMulNBitsQuantizer":
        quantizer = MatMulNBitsQuantizer(
            model, bits=step["bits"], block_size=step["block_size"], is_symmetric=step["is_symmetric"],
            accuracy_level=step["accuracy_level"], nodes_to_exclude=step["nodes_to_exclude"],
            op_types_to_quantize=tuple(step["op_types_to_quantize"]),
            quant_axes=tuple(tuple(axis) for axis in step["quant_axes"]) if "quant_axes" in step else None,
        )
        quantizer.process()
        return quantizer.model.model
    raise ValueError("unknown tool {!r} in recipe".format(step["tool"]))


def rebuild(folder: str | Path) -> Path:
    """Apply recipe.json's passes to its input model, check each, and write its output model; return that path."""
    folder = Path(folder)
    recipe = json.loads((folder / "recipe.json").read_text())
    if recipe.get("version") != RECIPE_VERSION:
        raise ValueError("recipe version {!r}; this script reads {}".format(recipe.get("version"), RECIPE_VERSION))
    model = onnx.load(str(folder / recipe["input"]))
    levels = {name: logging.getLogger(name).level for name in QUIET}
    for name in QUIET:  # ORT's tools log every node at INFO and advise pre-processing at WARNING
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for index, step in enumerate(recipe["passes"]):
                old = {n.name for n in model.graph.node if n.op_type == step["becomes"]}
                quantized = _run(step, model, Path(scratch))
                _check(index, step, old, quantized)
                model = quantized
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    kernels = Counter(n.op_type for n in model.graph.node)
    for op, count in recipe["expected_kernels"].items():
        if kernels.get(op, 0) != count:
            raise RecipeMismatch("the rebuilt model has {} {} nodes; the recipe expects {}".format(kernels.get(op, 0), op, count))
    output = folder / recipe["output"]
    onnx.save(model, str(output))
    return output


if __name__ == "__main__":
    print(rebuild(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent))
