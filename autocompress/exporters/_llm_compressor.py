"""The ``llm-compressor`` format: a recipe for llm-compressor's ``QuantizationModifier`` beside the float model.

``recipe.yaml`` follows llm-compressor's recipe layout
(``quant_stage`` → ``quant_modifiers`` → ``QuantizationModifier``): one
config group per distinct weight setting (bits; ``channel`` = one scale per
output channel, or ``group`` of ``group_size`` input columns; symmetric int),
its ``targets`` the exact module names, and ``ignore`` every Linear kept in
float (pooler, classifier, 32- and 16-bit layers). 8-bit per-channel layers
also get dynamic per-tensor asymmetric 8-bit input activations, the rounding
our simulation does for them (ONNX Runtime's ``DynamicQuantizeLinear``). A
quantized word embedding is one more group (int, one scale per row).
``model/`` holds the float model the recipe applies to (``save_shrunk`` with
remote code when blocks were reshaped, else ``save_pretrained``).

Verification does what a user does without llm-compressor itself (which pins
an older transformers): load ``model/``, read the recipe, build
compressed-tensors' ``QuantizationConfig`` from its groups and ``ignore``,
``apply_quantization_config``, then compute each weight's scales as
llm-compressor's weight observer does (memoryless min-max per channel or
group → ``calculate_qparams``) and freeze. The Linear and Embedding forwards
compressed-tensors installs then fake-quantize weights (and activations).

compressed-tensors' symmetric int grid differs from ours: codes in
``[-2^(b-1), 2^(b-1)-1]`` with ``scale = absmax / ((2^b - 1) / 2)``, where ours
are ``[-(2^(b-1)-1), 2^(b-1)-1]`` with ``scale = absmax / (2^(b-1)-1)``. The
largest weight of a channel or group is clipped to ``(2^b-2)/(2^b-1)`` of
itself (7/7.5 at 4 bits), so logits differ from the simulation by more than
rounding noise, most at low bits; the tolerance grows with the fewest bits used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from autocompress.compress import layer_plan
from autocompress.exporters._base import Exporter, NotExpressible, Source, quantized_layers, torch_logits
from autocompress.policy import Policy
from autocompress.quantizer import QUANT_ATTR, runs_as_matmul_integer
from autocompress.shrunk_bert import BLOCKS_ATTR, save_shrunk

RECIPE = "recipe.yaml"
MODEL_DIR = "model"
MODIFIER = "QuantizationModifier"
DYNAMIC_UINT8_INPUTS = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "tensor", "dynamic": True}
"""Per-tensor asymmetric 8-bit input rounding computed at run time, as ``simulate_dynamic_uint8`` does."""

TOLERANCE = {8: 0.05, 7: 0.1, 6: 0.15, 5: 0.3, 4: 0.6, 3: 1.2, 2: 3.0}
"""Max |Δlogit| allowed by the fewest weight bits in the recipe (see ``tolerance_for``)."""
FLOAT_TOLERANCE = 1e-3
"""No quantized layer: the same float math (16-bit layers are saved already rounded to half precision)."""
RECIPE_HEADER = """\
# llm-compressor recipe written by autocompress (QuantizationModifier, compressed-tensors schema).
# Apply to model/ with llm-compressor's oneshot(model=..., recipe="recipe.yaml"), or without it with
# compressed_tensors.quantization.apply_quantization_config(model, QuantizationConfig(config_groups=..., ignore=...))
# and min-max weight scales (calculate_qparams); see autocompress.exporters._llm_compressor.load_quantized.
"""


class LlmCompressorExporter(Exporter):
    """A QuantizationModifier recipe plus the float model, checked by applying it with compressed-tensors."""

    name = "llm-compressor"
    tolerance = TOLERANCE[4]

    def tolerance_for(self, source: Source, files: Path) -> float:
        """Scaled to the coarsest grid in the written recipe: compressed-tensors' grid differs from ours by up to one step.

        Measured on the probe MiniLM (128 SST-2 dev rows), max |Δlogit| against
        the simulation: ≈0.01 for 8-bit per channel, 0.1-0.2 for 4-bit (group 32
        or per channel) on a few blocks, 0.5 for 4-bit everywhere; 2-bit instead
        of 4-bit on two blocks gives > 1. Each entry keeps ~2x headroom over
        what we measured at that width.
        """
        recipe = read_recipe(files / RECIPE)
        bits = [group["weights"]["num_bits"] for group in recipe["config_groups"].values()]
        return TOLERANCE[min(bits)] if bits else FLOAT_TOLERANCE

    def check(self, policy: Policy) -> None:
        if policy.scheme == "kmeans":
            quantized = sorted(name for name, spec in policy.layers.items() if 2 <= spec.bits <= 8)
            if quantized:
                raise NotExpressible(
                    f"llm-compressor: scheme='kmeans' (layers {', '.join(quantized[:4])}{' …' if len(quantized) > 4 else ''}) "
                    "has no compressed-tensors equivalent: its int/float schemes are uniform grids with scales, not per-layer codebooks"
                )

    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        recipe, notes = build_recipe(source)
        (folder / RECIPE).write_text(RECIPE_HEADER + yaml.safe_dump(recipe, sort_keys=False))
        model_dir = folder / MODEL_DIR
        model = source.float_copy()
        half = _copy_half_precision_layers(model, source)
        if hasattr(model.config, BLOCKS_ATTR):
            save_shrunk(model, model_dir)
        else:
            model.save_pretrained(model_dir)
        if half:
            notes.append(f"{len(half)} 16-bit layers: a recipe has no half-precision scheme, so model/ stores their weights "
                         "already rounded to float16 (as float32) and the recipe ignores them")
        loaded = load_quantized(folder)
        files = [RECIPE, *(str(p.relative_to(folder)) for p in sorted(model_dir.rglob("*")) if p.is_file())]
        return files, torch_logits(loaded, source.dev), notes


def build_recipe(source: Source) -> tuple[dict[str, Any], list[str]]:
    """The recipe dict for ``source`` and notes on what it holds; targets and ``ignore`` use the saved model's module names."""
    model = source.float_model
    quantized = quantized_layers(source)
    groups: dict[tuple, list[str]] = {}
    ignore = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name not in quantized:
            ignore.append(name)
            continue
        q = quantized[name]
        groups.setdefault((q.bits, _group(q.group_size, module.in_features), runs_as_matmul_integer(q.bits, q.group_size, module.in_features)), []).append(name)
    embedding = getattr(source.model.get_input_embeddings(), QUANT_ATTR, None)
    if embedding is not None:
        name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        groups.setdefault((embedding.bits, _group(embedding.group_size, model.get_input_embeddings().embedding_dim), False), []).append(name)
    config_groups = {}
    for index, ((bits, group_size, activations), targets) in enumerate(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0, item[0][2]))):
        weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group" if group_size else "channel", "dynamic": False}
        if group_size:
            weights["group_size"] = group_size
        config_groups[f"group_{index}"] = {"targets": targets, "weights": weights, **({"input_activations": dict(DYNAMIC_UINT8_INPUTS)} if activations else {})}
    recipe = {"quant_stage": {"quant_modifiers": {MODIFIER: {"ignore": ignore, "config_groups": config_groups}}}}
    notes = [f"{sum(map(len, groups.values()))} modules in {len(config_groups)} config groups, {len(ignore)} Linear layers ignored (float)",
             "weights get compressed-tensors' own symmetric int grid ([-2^(b-1), 2^(b-1)-1], scale absmax/((2^b-1)/2), llm-compressor's "
             "min-max observer), not ours ([-(2^(b-1)-1), 2^(b-1)-1], scale absmax/(2^(b-1)-1)): weights differ by up to one step"]
    if embedding is not None:
        notes.append(f"word embedding: int{embedding.bits}, one scale per row (compressed-tensors quantizes Embedding targets)")
    return recipe, notes


def read_recipe(path: Path) -> dict[str, Any]:
    """The ``QuantizationModifier`` arguments of a recipe file (``ignore``, ``config_groups``)."""
    recipe = yaml.safe_load(Path(path).read_text())
    try:
        modifier = recipe["quant_stage"]["quant_modifiers"][MODIFIER]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: expected quant_stage → quant_modifiers → {MODIFIER}") from error
    return {"ignore": modifier.get("ignore") or [], "config_groups": modifier.get("config_groups") or {}}


def load_quantized(folder: Path) -> PreTrainedModel:
    """Load ``folder/model``, apply ``folder/recipe.yaml`` with compressed-tensors, calibrate weight scales: the fake-quantized model."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config

    folder = Path(folder)
    config = json.loads((folder / MODEL_DIR / "config.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(folder / MODEL_DIR, trust_remote_code="auto_map" in config, dtype=torch.float32)
    recipe = read_recipe(folder / RECIPE)
    quantization = QuantizationConfig(
        config_groups={name: QuantizationScheme.model_validate(group) for name, group in recipe["config_groups"].items()},
        ignore=recipe["ignore"],
    )
    apply_quantization_config(model, quantization, show_progress=False)
    calibrate_weights_(model)
    return model.eval()


@torch.no_grad()
def calibrate_weights_(model: torch.nn.Module) -> int:
    """Give every quantized module's weight its scale and zero point as llm-compressor's memoryless min-max observer does; freeze it.

    Returns how many modules were calibrated. Dynamic activations need no
    calibration: their ranges are computed on each forward.
    """
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization import QuantizationStatus, QuantizationStrategy
    from compressed_tensors.quantization.utils import calculate_qparams

    count = 0
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None or scheme.weights.dynamic:
            continue
        args, weight = scheme.weights, module.weight.detach()
        if weight.numel() == 0:
            continue
        if args.strategy == QuantizationStrategy.CHANNEL:
            low, high = weight.amin(dim=-1, keepdim=True), weight.amax(dim=-1, keepdim=True)
        elif args.strategy == QuantizationStrategy.GROUP:
            blocks = weight.unflatten(-1, (-1, args.group_size))
            low, high = blocks.amin(dim=-1), blocks.amax(dim=-1)
        elif args.strategy == QuantizationStrategy.TENSOR:
            low, high = weight.min().reshape(1), weight.max().reshape(1)
        else:
            raise ValueError(f"{name}: weight strategy {args.strategy!r} is not one this exporter calibrates")
        scale, zero_point = calculate_qparams(low, high, args)
        if module.weight_scale.shape != scale.shape:
            raise ValueError(f"{name}: calibrated scale has shape {tuple(scale.shape)}, compressed-tensors expects {tuple(module.weight_scale.shape)}")
        update_offload_parameter(module, "weight_scale", scale.to(module.weight_scale.dtype))
        if hasattr(module, "weight_zero_point"):
            update_offload_parameter(module, "weight_zero_point", zero_point.to(module.weight_zero_point.dtype))
        module.quantization_status = QuantizationStatus.FROZEN
        count += 1
    return count


def _group(group_size: int, in_features: int) -> int | None:
    """``None`` for one scale per output channel (a group spanning the whole row), else the group size."""
    return None if group_size == in_features else group_size


def _copy_half_precision_layers(model: PreTrainedModel, source: Source) -> list[str]:
    """Put the 16-bit layers' half-precision-rounded weights (the source's) into ``model``; return their names."""
    plan: Mapping = layer_plan(source.float_model, source.policy)
    names = [name for name, spec in plan.items() if spec.bits == 16]
    simulated = dict(source.model.named_modules())
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).weight.copy_(simulated[name].weight)
    return names
