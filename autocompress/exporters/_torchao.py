"""The ``torchao`` format: the float model plus a per-module torchao config that quantizes it on load.

``model/`` is the policy's model after structure, pruning and recovery, in
float (a Hugging Face folder; ``save_shrunk``'s when blocks were reshaped).
``torchao_config.json`` is ``torchao.core.config.config_to_dict`` of an
``FqnToConfig`` naming every quantized module by its fully qualified name:

- 8-bit per output channel: ``Int8DynamicActivationInt8WeightConfig`` with
  per-tensor asymmetric int8 activations (``act_mapping_type=ASYMMETRIC``,
  ``granularity=[PerTensor(), PerRow()]``), which mirrors the simulation's run-time
  per-tensor uint8 rounding (ONNX Runtime's ``DynamicQuantizeLinear``);
- 2..7 bits, and 8 bits in groups: ``IntxWeightOnlyConfig(weight_dtype=torch.intN,
  granularity=PerGroup(g) or PerAxis(0), mapping_type=SYMMETRIC)``;
- a quantized word embedding: ``IntxWeightOnlyConfig(weight_dtype=torch.intN,
  granularity=PerAxis(0))`` on the embedding (one scale per token row, as ours);
- 32-bit modules are absent.

A user applies it with::

    model = AutoModelForSequenceClassification.from_pretrained(folder / "model")  # or shrunk_bert.load_shrunk
    config = config_from_dict(json.load(open(folder / "torchao_config.json")))
    torchao.quantize_(model, config, filter_fn=None)

``Int4WeightOnlyConfig`` is not used: it needs a GPU kernel. torchao (0.18) has
no CPU config for our 16-bit (float16-rounded) layers or for k-means codebooks,
so those policies raise ``NotExpressible``; the ``hf`` and ``onnx`` formats carry them.

torchao re-quantizes the float weights itself, on its own symmetric grid:
codes in ``[-2**(b-1), 2**(b-1) - 1]`` with ``scale = absmax / (2**(b-1) - 0.5)``,
where ours restricts codes to ``±(2**(b-1) - 1)`` with ``scale = absmax / (2**(b-1) - 1)``.
Its codes therefore differ from the simulation's by about one step here and
there, which is why this format's tolerance is not an exact one. Low-bit
layers are stored unpacked in int8 and dequantized to float for each matmul
on CPU (torchao has no low-bit CPU kernel outside its experimental builds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from autocompress.compress import layer_plan
from autocompress.exporters._base import Exporter, ExportMismatch, NotExpressible, Source, quantized_layers, torch_logits
from autocompress.policy import Policy
from autocompress.quantizer import QUANT_ATTR, runs_as_matmul_integer
from autocompress.shrunk_bert import BLOCKS_ATTR, load_shrunk, save_shrunk

CONFIG_FILE = "torchao_config.json"
MODEL_DIR = "model"

TOLERANCE = 1.0
"""Largest |Δlogit| against the source accepted.

torchao rounds each weight on its own grid (scale ``absmax/(2**(b-1)-0.5)``, one more
negative code) instead of ours, so each quantized layer differs from the simulation
by up to half a step of either grid; the differences add up through the blocks.
Measured on the packaged MiniLM with its SST-2 probe head (logits of magnitude
about 3 to 8) on 128 dev rows: 0.37 for a mixed 8-bit per-channel / 4-bit
group-32 / float policy, 0.5 with every block 4-bit in groups of 32, 0.15 with
every block 8-bit per channel. A one-step shift of every code of a layer (a
corrupted config, e.g. 2-bit instead of 4) moves the logits by several units,
far past this. Accuracy is checked separately (half a point at most below the source's).
"""


class TorchaoExporter(Exporter):
    """``model/`` (float weights) + ``torchao_config.json`` (``FqnToConfig``) for ``torchao.quantize_`` on CPU."""

    name = "torchao"
    tolerance = TOLERANCE

    def check(self, policy: Policy) -> None:
        """Refuse k-means codebooks and 16-bit layers: torchao 0.18 has no CPU config for either."""
        quantized = {key: spec.bits for key, spec in policy.layers.items() if spec.bits < 32}
        if policy.scheme == "kmeans" and any(bits <= 8 for bits in quantized.values()):
            raise NotExpressible(
                "torchao cannot express scheme='kmeans': its configs quantize on a uniform (affine) grid, "
                "not a per-layer k-means codebook; use scheme='linear' (or the hf format, which stores the rounded weights)"
            )
        half = sorted(key for key, bits in quantized.items() if bits == 16)
        if half:
            raise NotExpressible(
                f"torchao cannot express bits=16 (layers {', '.join(half)}): torchao 0.18 has no float16 weight-only "
                "config for CPU (Float8WeightOnlyConfig is float8, Int4WeightOnlyConfig needs a GPU); "
                "use 8 or 32 bits there, or the hf/onnx formats"
            )

    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        from torchao.core.config import config_to_dict
        from torchao.quantization import FqnToConfig

        mapping, notes = self.configs(source)
        model_dir = folder / MODEL_DIR
        if hasattr(source.float_model.config, BLOCKS_ATTR):
            save_shrunk(source.float_model, model_dir)
            notes.append(f"reshaped blocks: load {MODEL_DIR}/ with autocompress.shrunk_bert.load_shrunk "
                         "or from_pretrained(..., trust_remote_code=True)")
        else:
            source.float_model.save_pretrained(model_dir)
        (folder / CONFIG_FILE).write_text(json.dumps(config_to_dict(FqnToConfig(mapping)), indent=2) + "\n")
        logits = self.verify(source, folder)
        files = [CONFIG_FILE, *sorted(f"{MODEL_DIR}/{p.name}" for p in model_dir.iterdir() if p.is_file())]
        return files, logits, notes

    def configs(self, source: Source) -> tuple[dict[str, object], list[str]]:
        """The torchao config of every quantized module by fully qualified name, and notes on what they approximate."""
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            IntxWeightOnlyConfig,
            MappingType,
            PerAxis,
            PerGroup,
            PerRow,
            PerTensor,
        )

        self.check(source.policy)  # also when write is called directly
        quantized = quantized_layers(source)
        modules = dict(source.float_model.named_modules())
        for name, spec in layer_plan(source.float_model, source.policy).items():  # what the simulation did, per layer
            if spec.bits == 16:
                raise NotExpressible(f"torchao cannot express bits=16 ({name}): no float16 weight-only config for CPU")
            if spec.bits <= 8 and name not in quantized:
                raise NotExpressible(f"{name}: {spec.bits}-bit with scheme={source.policy.scheme!r} has no codes and scales torchao can reproduce")
        mapping: dict[str, object] = {}
        dynamic = grouped = 0
        for name, weight in quantized.items():
            in_features = modules[name].in_features
            if runs_as_matmul_integer(weight.bits, weight.group_size, in_features):
                mapping[name] = Int8DynamicActivationInt8WeightConfig(
                    act_mapping_type=MappingType.ASYMMETRIC, granularity=[PerTensor(), PerRow()], set_inductor_config=False
                )
                dynamic += 1
            else:
                granularity = PerAxis(0) if weight.group_size == in_features else PerGroup(weight.group_size)
                mapping[name] = IntxWeightOnlyConfig(
                    weight_dtype=getattr(torch, f"int{weight.bits}"), granularity=granularity, mapping_type=MappingType.SYMMETRIC_NO_CLIPPING_ERR
                )
                grouped += 1
        notes = []
        if dynamic:
            notes.append(f"{dynamic} 8-bit per-channel layers: Int8DynamicActivationInt8WeightConfig, activations int8 "
                         "per tensor asymmetric (as the simulation's uint8 rounding)")
        if grouped:
            notes.append(f"{grouped} layers: IntxWeightOnlyConfig (stored unpacked in int8, dequantized for each matmul on CPU)")
        if source.policy.embedding_bits < 32:
            embedding = source.float_model.get_input_embeddings()
            name = next(n for n, m in source.float_model.named_modules() if m is embedding)
            if not hasattr(source.model.get_submodule(name), QUANT_ATTR):
                raise NotExpressible(f"embedding_bits={source.policy.embedding_bits}: the source's {name} carries no codes and scales")
            mapping[name] = IntxWeightOnlyConfig(
                weight_dtype=getattr(torch, f"int{source.policy.embedding_bits}"), granularity=PerAxis(0), mapping_type=MappingType.SYMMETRIC
            )
            notes.append(f"embedding_bits={source.policy.embedding_bits}: IntxWeightOnlyConfig per row on {name}")
        if mapping:
            notes.append("torchao rounds the float weights on its own symmetric grid (codes -2^(b-1)..2^(b-1)-1, "
                         "scale absmax/(2^(b-1)-0.5)), not the simulation's restricted one: codes differ by a step here and there")
        else:
            notes.append("nothing quantized: the config is empty and the model stays float")
        return mapping, notes

    def verify(self, source: Source, folder: Path) -> np.ndarray:
        """Reload both files as a user would, apply the config with ``quantize_``, and return the logits on ``source.dev``.

        Raises ``ExportMismatch`` when a configured module is missing from the reloaded model or was left unquantized
        (torchao ignores names that match nothing).
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
        left = [fqn for fqn, cfg in config.fqn_to_config.items() if cfg is not None and not isinstance(model.get_submodule(fqn).weight, TorchAOBaseTensor)]
        if left:
            raise ExportMismatch(f"torchao: quantize_ left {left} in float")
        return torch_logits(model, source.dev)


def load_model(folder: Path) -> torch.nn.Module:
    """The float model from ``model/``: ``load_shrunk`` for reshaped blocks, stock transformers otherwise."""
    config = json.loads((folder / "config.json").read_text())
    if BLOCKS_ATTR in config:
        return load_shrunk(folder)
    return AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
