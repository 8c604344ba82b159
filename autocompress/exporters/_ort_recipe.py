"""The ``ort-recipe`` format: per-node settings from which ONNX Runtime's own quantization tools rebuild the mixed model.

The folder holds the compressed model in float (``model.fp32.onnx``: the
policy's structure and pruning, no quantization), ``recipe.json`` and
``rebuild.py``. ``python rebuild.py <folder>`` (onnx and onnxruntime only, no
autocompress) runs ONNX Runtime 1.32's tools pass by pass and writes
``model.onnx``:

1. One ``MatMulNBitsQuantizer`` pass per (bits, block size) group of the
   layers not quantized per channel at 8 bits (``is_symmetric=True``,
   ``accuracy_level`` as recorded). Its ``nodes_to_include`` *adds* to the
   nodes its op types already select, so a pass is limited to its nodes with
   ``nodes_to_exclude``: every other MatMul of ``model.fp32.onnx``. The
   tool's symmetric grid is not ours: codes in [-2**(bits-1), 2**(bits-1) - 1]
   with scale (the block's value of largest magnitude) / -2**(bits-1), where
   autocompress uses [-qmax, qmax] and max|w|/qmax; and it quantizes in
   power-of-two blocks of 16..256 only (its MLAS quantizer raises on 384 and
   512, measured), so a per-channel policy is rebuilt with one scale per block
   of the largest such size that divides the row (128 of 384, 256 of 1536):
   finer than the policy's, never coarser.
2. The word embedding at 4 bits: one more ``MatMulNBitsQuantizer`` pass with
   ``op_types_to_quantize=["Gather"]`` and ``quant_axes=[["Gather", 1]]``
   (blocks along each row, as the policy's per-row scales), every other
   Gather excluded (position and token-type tables included): ``GatherBlockQuantized``.
3. Last, ``onnxruntime.quantization.quantize_dynamic`` with
   ``nodes_to_quantize`` (an empty list would mean *every* node, so the pass
   is left out when no layer needs it), ``op_types_to_quantize=["MatMul"]``,
   ``per_channel=True``, ``reduce_range=False``, int8 weights: the 8-bit
   per-channel layers become DynamicQuantizeLinear + MatMulInteger. Its weight
   grid is ours (symmetric, codes in [-127, 127], scale max|w|/127 per output
   column), and it rounds activations per tensor to uint8 at run time, as the
   simulation does. It goes last because it rewrites every Gemm (pooler,
   classifier) into MatMul + Add, new MatMuls that an earlier-written
   ``nodes_to_exclude`` would not name; ``extra_options`` carries
   ``DefaultTensorType=1`` (float) for the tensors its shape inference cannot
   type behind the com.microsoft nodes of the earlier passes.

Refused (``NotExpressible``, naming the field): ``scheme='kmeans'`` (no
codebook in ORT's tools), bits other than 2, 4, 8 and 32 (16 included: ORT's
tools have no weight-only fp16 pass for chosen MatMuls), groups with no
power-of-two block of 16..256 dividing them, 8-bit embeddings
(``quantize_dynamic`` quantizes a Gather's table per tensor to uint8, not per
row; the Gather path of ``MatMulNBitsQuantizer`` is 4-bit only), and a
quantized layer that exports as Gemm (``MatMulNBitsQuantizer`` takes MatMul
only; the encoder blocks autocompress quantizes export as MatMul).

The exporter runs the written ``rebuild.py`` itself, checks that each pass
turned exactly its nodes into the expected kernel and that the result has,
per kernel, as many nodes as the source's policy asks for, and compares its
logits on the dev rows with the simulation's.
"""

from __future__ import annotations

import json
import runpy
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from autocompress.exporters._base import Exporter, ExportMismatch, NotExpressible, Source, quantized_layers, torch_outputs
from autocompress.policy import Policy
from autocompress.runtime import export_onnx, ort_feed, ort_session, tiling_block, weight_digest
from autocompress.techniques import layer_plan
from autocompress.techniques.quantizer import QUANT_ATTR, QuantizedWeight, runs_as_matmul_integer

RECIPE_VERSION = 1
RECIPE_FILE = "recipe.json"
REBUILD_FILE = "rebuild.py"
REBUILD_SCRIPT = Path(__file__).with_name("_ort_rebuild.py")
"""The script shipped as ``rebuild.py``: it imports nothing of autocompress, so a user runs it anywhere ORT is installed."""
FP32_FILE = "model.fp32.onnx"
OUTPUT_FILE = "model.onnx"

NBITS_BITS = (2, 4, 8)
"""Bit widths ``MatMulNBitsQuantizer`` accepts (it asserts 2, 4 or 8)."""
NBITS_BLOCKS = (16, 32, 64, 128, 256)
"""Block sizes its MLAS quantizer accepts for MatMul weights (384 and 512 raise, measured on ORT 1.32)."""
GATHER_BITS = 4
"""Its Gather path quantizes to 4 bits only (``GatherBlockQuantized``; blocks a power of two >= 16)."""
ACCURACY_LEVEL = 0
"""MatMulNBits computes in float on the dequantized weights, as autocompress's own deployment (``measure.EXACT_NBITS``)."""
KERNELS = ("MatMulInteger", "MatMulNBits", "GatherBlockQuantized")

ATOL = 1e-4
SPREAD = 2.0
"""Tolerance: ``ATOL + SPREAD * max|source logits - float_model logits|`` on the dev rows.

ORT's tools re-quantize the float weights on their own grid (see the module
docstring) instead of packing the simulation's codes: the rebuilt model is a
sibling of the simulated one, not a copy, and the two differ by about as much
as quantization moved the logits at all. Their grid is no coarser than ours
(2**bits levels where ours has 2**bits - 1, blocks no larger than our groups),
so rebuilt - float is about source - float at most, and by the triangle
inequality rebuilt - source is within twice that. Measured on the packaged
MiniLM with the probe head, 128 SST-2 dev rows (max|logit| about 5), as
max|rebuilt - source| / max|source - float|: 0.96 (8-bit per channel in
blocks 0-1, 4-bit per channel in 2-3), 0.91 (the same with the 4-bit table),
0.87 (8-bit and 4-bit in groups of 32), 0.93 (every layer 4-bit in groups of
32), 0.93 (every layer 8-bit per channel, MatMulInteger's activation drift
included), 0.97 (2-bit in groups of 32, blocks 0-1); rebuilt - float was
0.66-0.90 of source - float. A float policy gets ATOL: the rebuilt model is
then the fp32 graph. What a wrong pass or node would change is caught first,
and exactly, by the kernel counts.

The half point of accuracy ``compare`` allows still applies, and a sibling
quantization can cost it: on those 128 rows (one row is 0.8 pt) the rebuild
agreed with the simulation's predictions on 94-98 % of rows; it lost one row
with 4-bit per-channel layers and table (autocompress's own lowering lost
two there) and three rows at 2 bits, both refused with ``ExportMismatch``.
"""


def _block(group: int, high: int = NBITS_BLOCKS[-1]) -> int | None:
    """The largest power-of-two block of at least 16 and at most ``high`` that tiles a quantization group (ORT then scales
    each block), or None."""
    return tiling_block(group, NBITS_BLOCKS[0], high)


class OrtRecipeExporter(Exporter):
    """``model.fp32.onnx`` + ``recipe.json`` + ``rebuild.py``: ONNX Runtime's quantization tools rebuild ``model.onnx``."""

    name = "ort-recipe"
    tolerance = ATOL

    def tolerance_for(self, source: Source, files: Path) -> float:
        """Twice how far the policy's own quantization moved the logits from the float model's (see ``SPREAD``)."""
        return ATOL + SPREAD * float(np.abs(source.outputs - torch_outputs(source.float_model, source)).max())

    def check(self, policy: Policy) -> None:
        """Refuse, before anything is written, what ORT's quantization tools cannot rebuild (module docstring)."""
        quantized = {key: spec.bits for key, spec in policy.layers.items() if spec.bits < 32}
        if policy.scheme == "kmeans" and quantized:
            raise NotExpressible(
                f"scheme='kmeans' (layers {sorted(quantized)}): ONNX Runtime's quantization tools have no codebook "
                "quantization; ort-recipe rebuilds only scheme='linear'"
            )
        odd = {key: bits for key, bits in quantized.items() if bits not in NBITS_BITS}
        if odd:
            raise NotExpressible(
                f"bits {sorted(set(odd.values()))} (layers {sorted(odd)}): ONNX Runtime's quantization tools rebuild "
                f"bits {NBITS_BITS} (quantize_dynamic for 8-bit per channel, MatMulNBitsQuantizer for 2/4/8-bit blocks) "
                "and 32; 16 has no weight-only fp16 pass there"
            )
        if policy.embedding_bits not in (GATHER_BITS, 32):
            raise NotExpressible(
                f"embedding_bits={policy.embedding_bits}: quantize_dynamic quantizes a Gather's table per tensor to uint8 "
                f"(one scale), not per row, and MatMulNBitsQuantizer's Gather path is {GATHER_BITS}-bit only; "
                f"ort-recipe rebuilds embedding_bits {GATHER_BITS} or 32"
            )
        if policy.group_size is not None and quantized and _block(policy.group_size) is None:
            raise NotExpressible(
                f"group_size={policy.group_size}: MatMulNBitsQuantizer quantizes in blocks of {NBITS_BLOCKS}, none of which divides it"
            )

    def recipe(self, source: Source, fp32: Path) -> dict[str, Any]:
        """The passes that rebuild ``source.model``'s quantization from ``fp32`` (an export of ``source.float_model``).

        Each Linear is found in the graph by the value of its weight, as
        ``runtime.lower`` does; raises ``NotExpressible`` naming the first layer no pass can rebuild.
        """
        self.check(source.policy)
        graph = onnx.load(str(fp32)).graph
        initializers = {init.name: init for init in graph.initializer}
        by_digest: dict[tuple, list[tuple[str, torch.nn.Linear]]] = {}
        for name, module in source.float_model.named_modules():
            if isinstance(module, torch.nn.Linear) and module.weight.numel():
                by_digest.setdefault(weight_digest(module.weight.detach().numpy().T), []).append((name, module))
        quantized: dict[str, QuantizedWeight] = quantized_layers(source)
        plan = layer_plan(source.float_model, source.policy)
        for name, spec in plan.items():
            if spec.bits < 32 and name not in quantized:  # 16 bits, or a codebook: no QuantizedWeight kept
                what = "bits=16" if spec.bits == 16 else f"scheme={source.policy.scheme!r}"
                raise NotExpressible(f"layer {name!r}: {what} has no pass in ONNX Runtime's quantization tools")

        layers: dict[str, dict[str, Any]] = {}
        dynamic: list[str] = []
        nbits: dict[tuple[int, int], list[str]] = {}
        matmuls = [node.name for node in graph.node if node.op_type == "MatMul"]
        for node in graph.node:
            if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
                continue
            weight = onnx.numpy_helper.to_array(initializers[node.input[1]])
            if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
                weight = weight.T
            candidates = by_digest.get(weight_digest(weight), []) if weight.ndim == 2 else []
            if not candidates:
                continue
            name, linear = candidates.pop(0)
            q = quantized.get(name)
            if q is None:
                layers[name] = {"node": node.name, "op": node.op_type, "bits": 32}  # stays float
                continue
            if node.op_type != "MatMul":
                raise NotExpressible(
                    f"layer {name!r} ({q.bits} bits) exports as {node.op_type}; ONNX Runtime's tools quantize MatMul only"
                )
            group = None if q.group_size == linear.in_features else q.group_size
            entry = {"node": node.name, "op": "MatMul", "bits": q.bits, "group_size": group}
            if runs_as_matmul_integer(q.bits, q.group_size, linear.in_features):
                dynamic.append(node.name)
                layers[name] = entry | {"becomes": "MatMulInteger"}
                continue
            block = _block(q.group_size)
            if q.bits not in NBITS_BITS or block is None:
                raise NotExpressible(
                    f"layer {name!r}: bits={q.bits}, group_size={group}: MatMulNBitsQuantizer takes bits {NBITS_BITS} "
                    f"in blocks of {NBITS_BLOCKS}, none of which tiles a group of {q.group_size}"
                )
            nbits.setdefault((q.bits, block), []).append(node.name)
            layers[name] = entry | {"becomes": "MatMulNBits", "block_size": block}
        missing = sorted(set(quantized) - set(layers))
        if missing:
            raise ValueError(f"{fp32} has no MatMul whose weight equals {missing}; export source.float_model to it")

        passes: list[dict[str, Any]] = []
        for (bits, block), nodes in sorted(nbits.items()):
            passes.append({
                "tool": "MatMulNBitsQuantizer", "becomes": "MatMulNBits", "nodes": nodes, "bits": bits, "block_size": block,
                "is_symmetric": True, "accuracy_level": ACCURACY_LEVEL, "op_types_to_quantize": ["MatMul"],
                "nodes_to_exclude": [n for n in matmuls if n not in nodes],
            })  # fmt: skip
        embedding = self._embedding_pass(source, graph, initializers)
        if embedding is not None:
            passes.append(embedding)
            layers[embedding.pop("layer")] = {"node": embedding["nodes"][0], "op": "Gather", "bits": GATHER_BITS,
                                               "becomes": "GatherBlockQuantized", "block_size": embedding["block_size"]}  # fmt: skip
        if dynamic:  # last: it rewrites every Gemm into MatMul + Add, new MatMuls a later pass would not exclude;
            # DefaultTensorType: the type of tensors its shape inference cannot type behind com.microsoft nodes
            passes.append({  # never an empty nodes_to_quantize: quantize_dynamic reads it as "every node"
                "tool": "quantize_dynamic", "becomes": "MatMulInteger", "nodes_to_quantize": dynamic,
                "op_types_to_quantize": ["MatMul"], "per_channel": True, "reduce_range": False, "weight_type": "QInt8",
                "extra_options": {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
            })  # fmt: skip
        for index, step in enumerate(passes):
            for node in step.get("nodes", step.get("nodes_to_quantize")):
                next(entry for entry in layers.values() if entry["node"] == node)["pass"] = index
        expected = Counter(entry["becomes"] for entry in layers.values() if "becomes" in entry)
        return {
            "format": "autocompress ort-recipe",
            "version": RECIPE_VERSION,
            "onnxruntime": _ort_version(),
            "input": FP32_FILE,
            "output": OUTPUT_FILE,
            "passes": passes,
            "expected_kernels": {op: expected.get(op, 0) for op in KERNELS},
            "layers": layers,
        }

    def _embedding_pass(self, source: Source, graph: onnx.GraphProto, initializers: dict) -> dict[str, Any] | None:
        embedding = source.model.get_input_embeddings()
        q: QuantizedWeight | None = getattr(embedding, QUANT_ATTR, None)
        if q is None:
            return None
        name = next(n for n, m in source.model.named_modules() if m is embedding)
        if q.bits != GATHER_BITS:  # check() refuses 8 bits already
            raise NotExpressible(f"embedding_bits={q.bits}: MatMulNBitsQuantizer's Gather path is {GATHER_BITS}-bit only")
        block = _block(q.group_size, high=2**12)
        if block is None:
            raise NotExpressible(
                f"embedding {name!r}: rows of {q.group_size} have no power-of-two block >= 16 for GatherBlockQuantized"
            )
        table = weight_digest(source.float_model.get_input_embeddings().weight.detach().numpy())
        gathers = [node for node in graph.node if node.op_type == "Gather"]
        match = [
            n.name
            for n in gathers
            if n.input[0] in initializers and weight_digest(onnx.numpy_helper.to_array(initializers[n.input[0]])) == table
        ]
        if len(match) != 1:
            raise ValueError(f"expected one Gather of the word embedding table in the fp32 graph, found {match}")
        return {
            "tool": "MatMulNBitsQuantizer", "becomes": "GatherBlockQuantized", "nodes": match, "bits": GATHER_BITS,
            "block_size": block, "is_symmetric": True, "accuracy_level": ACCURACY_LEVEL, "op_types_to_quantize": ["Gather"],
            "quant_axes": [["Gather", 1]], "nodes_to_exclude": [n.name for n in gathers if n.name not in match], "layer": name,
        }  # fmt: skip

    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        example = {k: v[:2] for k, v in source.dev[0].items() if k != "labels"}
        fp32 = export_onnx(source.float_model, folder / FP32_FILE, example=example)
        try:
            recipe = self.recipe(source, fp32)
        except Exception:
            fp32.unlink()
            raise
        (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
        (folder / REBUILD_FILE).write_text(REBUILD_SCRIPT.read_text())  # self-contained: onnx and onnxruntime only
        logits, notes = self.verify(source, folder)
        return [FP32_FILE, RECIPE_FILE, REBUILD_FILE, OUTPUT_FILE], logits, notes

    def verify(self, source: Source, folder: Path) -> tuple[np.ndarray, list[str]]:
        """Run the folder's ``rebuild.py``, check its kernels against the source's policy, return its dev logits and notes.

        Raises ``ExportMismatch`` when a pass did not turn exactly its nodes
        into its kernel, or the rebuilt model's kernel counts differ from what
        the policy asks (independently of what ``recipe.json`` says).
        """
        try:
            output = rebuild(folder)
        except RuntimeError as error:
            raise ExportMismatch(f"{self.name}: {error}") from error
        recipe = json.loads((folder / RECIPE_FILE).read_text())
        got = Counter(node.op_type for node in onnx.load(str(output), load_external_data=False).graph.node)
        want = _kernels_asked(source)
        found = {op: got.get(op, 0) for op in KERNELS}
        if found != want:
            raise ExportMismatch(f"{self.name}: the rebuilt model has kernels {found}; the policy asks for {want}")
        session = ort_session(output, threads=2)
        logits = np.concatenate([session.run(["logits"], ort_feed(session, batch))[0] for batch in source.dev])
        partial = sorted(
            {
                (e["bits"], e["block_size"])
                for e in recipe["layers"].values()
                if e.get("becomes") == "MatMulNBits" and e.get("group_size") is None
            }
        )
        notes = [
            "passes: " + "; ".join(_describe(step) for step in recipe["passes"])
            if recipe["passes"]
            else "passes: none (float model)",
            f"kernels: {', '.join(f'{n} {op}' for op, n in found.items() if n) or 'float only'}; file {output.stat().st_size} bytes",
        ]
        if partial:
            notes.append(
                "per-channel layers rebuilt with ORT's per-block scales ("
                + ", ".join(f"{b}-bit blocks of {k}" for b, k in partial)
                + ")"
            )
        if any(step["tool"] == "MatMulNBitsQuantizer" for step in recipe["passes"]):
            notes.append(
                "MatMulNBitsQuantizer rounds on its own symmetric grid [-2^(b-1), 2^(b-1)-1], not the policy's [-qmax, qmax]"
            )
        return logits, notes


def _kernels_asked(source: Source) -> dict[str, int]:
    """Per ORT kernel, how many nodes the source's quantization needs (from the models, not from any recipe)."""
    counts = Counter()
    for _, module in source.model.named_modules():
        q = getattr(module, QUANT_ATTR, None)
        if isinstance(module, torch.nn.Linear) and q is not None:
            counts["MatMulInteger" if runs_as_matmul_integer(q.bits, q.group_size, module.in_features) else "MatMulNBits"] += 1
    if getattr(source.model.get_input_embeddings(), QUANT_ATTR, None) is not None:
        counts["GatherBlockQuantized"] += 1
    return {op: counts.get(op, 0) for op in KERNELS}


def _describe(step: dict[str, Any]) -> str:
    if step["tool"] == "quantize_dynamic":
        return f"quantize_dynamic per_channel on {len(step['nodes_to_quantize'])} MatMul"
    return f"MatMulNBitsQuantizer {step['bits']}-bit block {step['block_size']} on {len(step['nodes'])} {step['op_types_to_quantize'][0]}"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def rebuild(folder: str | Path) -> Path:
    """Run ``folder/rebuild.py`` (what a user runs: ``python rebuild.py <folder>``); return the ``model.onnx`` it writes.

    Raises ``RuntimeError`` (``RecipeMismatch``) when a pass does not turn
    exactly its listed nodes into its kernel, ``ValueError`` for a recipe of another version.
    """
    folder = Path(folder)
    script = folder / REBUILD_FILE
    if not script.is_file():
        raise FileNotFoundError(f"{script} is missing; write the folder with the ort-recipe exporter")
    return Path(runpy.run_path(str(script), run_name="ort_recipe_rebuild")["rebuild"](folder))
