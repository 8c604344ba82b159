"""The ``torchao`` format: the float model plus a per-module torchao config that quantizes it on load.

``model/`` is the policy's model after structure, pruning and recovery, in
float: a Hugging Face folder (``shrunk.save_shrunk``'s when blocks were
reshaped). ``torchao_config.json`` is ``torchao.core.config.config_to_dict`` of
an ``FqnToConfig`` naming every quantized module by its fully qualified name:

- 8-bit per output channel: ``Int8DynamicActivationInt8WeightConfig`` with
  per-tensor asymmetric int8 activations (``act_mapping_type=ASYMMETRIC``,
  ``granularity=[PerTensor(), PerRow()]``), which mirrors the simulation's
  run-time per-tensor uint8 rounding (ONNX Runtime's ``DynamicQuantizeLinear``);
- 3..7 bits, and 8 bits in groups: ``IntxWeightOnlyConfig(weight_dtype=torch.intN,
  granularity=PerGroup(g) or PerAxis(0), mapping_type=SYMMETRIC_NO_CLIPPING_ERR)``;
- a quantized word embedding: the same ``IntxWeightOnlyConfig`` with ``PerAxis(0)``
  (one scale per token row, as ours);
- 32-bit modules are absent.

A user applies it with::

    model = AutoModelForSequenceClassification.from_pretrained(folder / "model")  # or autocompress.models.shrunk.load_shrunk
    config = config_from_dict(json.loads((folder / "torchao_config.json").read_text()))
    torchao.quantize_(model, config, filter_fn=None)

torchao re-quantizes the float weights itself. Its symmetric int``b`` grid has
one more negative code than ours (``-2**(b-1) .. 2**(b-1)-1`` against our
restricted ``±(2**(b-1)-1)``). ``SYMMETRIC_NO_CLIPPING_ERR`` takes
``scale = max(|min|/2**(b-1), max/(2**(b-1)-1))``: wherever the positive side sets
the scale that is exactly our scale and codes; elsewhere torchao's grid is a
little finer than ours. (Plain ``SYMMETRIC``, ``absmax/(2**(b-1)-0.5)``, differs
everywhere and measured twice the logit difference.) ``Int8DynamicActivationInt8WeightConfig``
offers no weight mapping choice: its weight scale is ``absmax/127.5``, ours ``absmax/127``.

Not expressible (``NotExpressible``): k-means codebooks and 16-bit (float16)
layers, for which torchao 0.18 has no CPU config (``Int4WeightOnlyConfig`` needs
a GPU kernel; the ``hf`` and ``onnx`` formats carry them), and 2-bit layers, whose
ternary grid torchao's int2 cannot hold.

On CPU in eager mode these configs do not run faster than float: low-bit
weights are stored unpacked in int8 and dequantized for each matmul, and the
int8 x int8 product falls back to an int32 matmul (measured about 2x and 4x
slower than float on MiniLM); torchao's fast paths need ``torch.compile`` or a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from autocompress.exporters._base import Exporter, ExportMismatch, NotExpressible, Source, quantized_layers, torch_outputs
from autocompress.models.shrunk import is_shrunk, load_shrunk, save_shrunk
from autocompress.policy import Policy
from autocompress.techniques import layer_plan
from autocompress.techniques.quantizer import QUANT_ATTR, runs_as_matmul_integer

CONFIG_FILE = "torchao_config.json"
MODEL_DIR = "model"

TOLERANCE = 1.0
"""Largest |Δlogit| against the source accepted.

torchao rounds the float weights on its own grid (see the module docstring),
so some codes differ from the simulation's by one step; the differences add up
through the blocks, and an 8-bit layer's per-tensor activation rounding then
lands on other boundaries too. Measured on the packaged MiniLM with its SST-2
probe head (logits up to 4 to 7) on 128 dev rows: 0.33 for 8-bit / 4-bit in
groups of 32 / float blocks, 0.73 for 8-bit per channel / 4-bit per channel /
float blocks with an 8-bit embedding, 0.62 with every block 8-bit per channel,
0.67 with every block 4-bit in groups of 32; 1.8 with every block at 3 bits,
where the two grids part too far (refused by this tolerance). A config edited to
2 bits instead of 4 on two blocks measured 4.2. Accuracy is checked
separately (half a point at most below the source's).
"""

UNSUPPORTED_BITS = {
    16: "torchao 0.18 has no float16 weight-only config for CPU (Float8WeightOnlyConfig is float8, "
    "Int4WeightOnlyConfig needs a GPU); use 8 or 32 bits there, or the hf/onnx formats",
    2: "our 2-bit grid is ternary (codes -1, 0, 1) and torchao's int2 has codes -2..1: wherever the negative side "
    "sets the scale its largest positive level is half of ours (measured: logits 7 apart with every block at 2 bits); "
    "use 3 bits or more, or the hf/onnx formats",
}
"""Weight bits torchao cannot hold on CPU, with why."""


class TorchaoExporter(Exporter):
    """``model/`` (float weights) + ``torchao_config.json`` (``FqnToConfig``) for ``torchao.quantize_`` on CPU."""

    name = "torchao"
    tolerance = TOLERANCE

    def check(self, policy: Policy) -> None:
        """Refuse k-means codebooks, 16-bit and 2-bit layers: torchao 0.18 has no CPU config that holds them."""
        quantized = {key: spec.bits for key, spec in policy.layers.items() if spec.bits < 32}
        if policy.scheme == "kmeans" and any(bits <= 8 for bits in quantized.values()):
            raise NotExpressible(
                "torchao cannot express scheme='kmeans': its configs quantize on a uniform (affine) grid, "
                "not a per-layer k-means codebook; use scheme='linear' (or the hf format, which stores the rounded weights)"
            )
        for bits, reason in UNSUPPORTED_BITS.items():
            keys = sorted(key for key, b in quantized.items() if b == bits)
            if keys:
                raise NotExpressible(f"torchao cannot express bits={bits} (policy layers {', '.join(keys)}): {reason}")

    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        from torchao.core.config import config_to_dict
        from torchao.quantization import FqnToConfig

        mapping, notes = self.configs(source)
        model_dir = folder / MODEL_DIR
        if is_shrunk(source.float_model.config):
            save_shrunk(source.float_model, model_dir)
            notes.append(
                f"reshaped blocks or vocabulary: load {MODEL_DIR}/ with autocompress.models.shrunk.load_shrunk "
                "or from_pretrained(..., trust_remote_code=True)"
            )
        else:
            source.float_model.save_pretrained(model_dir)
        (folder / CONFIG_FILE).write_text(json.dumps(config_to_dict(FqnToConfig(mapping)), indent=2) + "\n")
        logits, matched = self.verify(source, folder)
        if matched:
            share = sum(same for same, _ in matched.values()) / sum(total for _, total in matched.values())
            notes.append(f"torchao's weight values equal the simulation's for {100 * share:.1f} % of the quantized weights")
        files = [CONFIG_FILE, *sorted(f"{MODEL_DIR}/{p.name}" for p in model_dir.iterdir() if p.is_file())]
        return files, logits, notes

    def configs(self, source: Source) -> tuple[dict[str, object], list[str]]:
        """The torchao config of every quantized module by fully qualified name, and notes on what it approximates."""
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            IntxWeightOnlyConfig,
            MappingType,
            PerAxis,
            PerGroup,
            PerRow,
            PerTensor,
        )

        self.check(source.policy)
        quantized = quantized_layers(source)
        for name, spec in layer_plan(source.float_model, source.policy).items():  # what the simulation did, per layer
            if spec.bits in UNSUPPORTED_BITS:
                raise NotExpressible(f"torchao cannot express bits={spec.bits} ({name}): {UNSUPPORTED_BITS[spec.bits]}")
            if spec.bits <= 8 and name not in quantized:
                raise NotExpressible(
                    f"{name}: {spec.bits}-bit with scheme={source.policy.scheme!r} has no codes and scales torchao can reproduce"
                )
        modules = dict(source.float_model.named_modules())
        mapping: dict[str, object] = {}
        dynamic, weight_only = [], []
        for name, weight in quantized.items():
            in_features = modules[name].in_features
            if runs_as_matmul_integer(weight.bits, weight.group_size, in_features):
                mapping[name] = Int8DynamicActivationInt8WeightConfig(
                    act_mapping_type=MappingType.ASYMMETRIC, granularity=[PerTensor(), PerRow()], set_inductor_config=False
                )
                dynamic.append(name)
            else:
                granularity = PerAxis(0) if weight.group_size == in_features else PerGroup(weight.group_size)
                mapping[name] = IntxWeightOnlyConfig(
                    weight_dtype=getattr(torch, f"int{weight.bits}"), granularity=granularity,
                    mapping_type=MappingType.SYMMETRIC_NO_CLIPPING_ERR,
                )  # fmt: skip
                weight_only.append(name)
        notes = []
        if dynamic:
            notes.append(
                f"{len(dynamic)} 8-bit per-channel layers: Int8DynamicActivationInt8WeightConfig, activations int8 "
                "per tensor, asymmetric (as the simulation's uint8 rounding); weight scale absmax/127.5 (ours absmax/127)"
            )
        if weight_only:
            notes.append(
                f"{len(weight_only)} layers: IntxWeightOnlyConfig, SYMMETRIC_NO_CLIPPING_ERR (our scale and codes where "
                "the positive side sets the scale, a slightly finer grid elsewhere)"
            )
        if source.policy.embedding_bits < 32:
            embedding = source.float_model.get_input_embeddings()
            name = next(n for n, m in source.float_model.named_modules() if m is embedding)
            if not hasattr(source.model.get_submodule(name), QUANT_ATTR):
                raise NotExpressible(
                    f"embedding_bits={source.policy.embedding_bits}: the source's {name} carries no codes and scales"
                )
            mapping[name] = IntxWeightOnlyConfig(
                weight_dtype=getattr(torch, f"int{source.policy.embedding_bits}"), granularity=PerAxis(0),
                mapping_type=MappingType.SYMMETRIC_NO_CLIPPING_ERR,
            )  # fmt: skip
            notes.append(f"embedding_bits={source.policy.embedding_bits}: IntxWeightOnlyConfig per row on {name}")
        if mapping:
            notes.append(
                "eager CPU: dequantized or int32 matmuls, no faster than float; torchao's fast paths need torch.compile or a GPU"
            )
        else:
            notes.append("nothing quantized: the config is empty and the model stays float")
        return mapping, notes

    def verify(self, source: Source, folder: Path) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
        """Reload both files as a user would, apply the config with ``quantize_``; return the logits on ``source.dev``.

        Also returns, per configured module, how many of its dequantized weights equal the source's (and of how many).
        Raises ``ExportMismatch`` when the config is not an ``FqnToConfig``, names a module the reloaded model
        lacks, or leaves a configured module in float (torchao ignores names that match nothing).
        """
        from torchao.core.config import config_from_dict
        from torchao.quantization import FqnToConfig, quantize_
        from torchao.utils import TorchAOBaseTensor

        model = load_model(folder / MODEL_DIR)
        config = config_from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        if not isinstance(config, FqnToConfig):
            raise ExportMismatch(f"torchao: {CONFIG_FILE} holds a {type(config).__name__}, not an FqnToConfig")
        modules = dict(model.named_modules())
        absent = [fqn for fqn in config.fqn_to_config if fqn not in modules]
        if absent:
            raise ExportMismatch(f"torchao: {CONFIG_FILE} names modules the reloaded model lacks: {absent}")
        quantize_(model, config, filter_fn=None)
        matched = {}
        for fqn, cfg in config.fqn_to_config.items():
            weight = model.get_submodule(fqn).weight
            if cfg is not None and not isinstance(weight, TorchAOBaseTensor):
                raise ExportMismatch(f"torchao: quantize_ left {fqn} in float")
            if cfg is not None:
                ours = source.model.get_submodule(fqn).weight.detach()
                same = torch.isclose(weight.dequantize(), ours, rtol=1e-5, atol=1e-8)
                matched[fqn] = (int(same.sum()), same.numel())
        return torch_outputs(model, source), matched


def load_model(folder: Path) -> torch.nn.Module:
    """The float model from ``model/``: ``load_shrunk`` for reshaped blocks or vocabulary, stock transformers otherwise."""
    config = json.loads((folder / "config.json").read_text())
    if is_shrunk(config):
        return load_shrunk(folder)
    return AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
