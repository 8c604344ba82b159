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
Each module's applied setting must equal the policy's exactly; the logits on
the dev rows must then stay within the tolerance and half a point of accuracy.

compressed-tensors' symmetric int grid differs from ours: codes in
``[-2^(b-1), 2^(b-1)-1]`` with ``scale = absmax / ((2^b - 1) / 2)``, where ours
are ``[-(2^(b-1)-1), 2^(b-1)-1]`` with ``scale = absmax / (2^(b-1)-1)`` (at 4
bits: a channel's largest positive weight becomes 7/7.5 of itself, its most
negative -8/7.5). Weights may land one step from ours, so logits differ from
the simulation by more than rounding noise, the more the fewer the bits; 8-bit
per-channel layers' run-time activation rounding amplifies that. At 2 bits
the two are different quantizers (ours ternary), so 2 bits are refused.
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

from autocompress.exporters._base import Exporter, ExportMismatch, NotExpressible, Source, quantized_layers, torch_outputs
from autocompress.models.shrunk import is_shrunk, save_shrunk
from autocompress.policy import Policy
from autocompress.techniques import layer_plan
from autocompress.techniques.quantizer import QUANT_ATTR, runs_as_matmul_integer

RECIPE = "recipe.yaml"
MODEL_DIR = "model"
MODIFIER = "QuantizationModifier"
DYNAMIC_INPUTS = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "tensor", "dynamic": True}
"""Per-tensor asymmetric 8-bit input rounding computed at run time: what ``simulate_dynamic_uint8`` does (uint8 = int8 + 128)."""

WEIGHT_STEP_TOLERANCE = 0.1
"""Max |Δlogit| per 8-bit weight step, scaled by ``2**(8 - b)`` for the fewest weight bits ``b``.

Measured on the probe MiniLM (128 SST-2 dev rows, logits within ±5.5),
every block quantized, activations float: 0.056 at 8 bits (group 32), 0.24
at 6 (×4), 1.04-1.10 at 4 (×16, per channel or group 32), 2.36 at 3 (×32):
0.056-0.074 per step, so 0.1 leaves 1.35-1.8x headroom.
"""
ACTIVATION_FACTOR = 2.0
"""Times the source's own activation-rounding effect, added when layers round activations.

The export rounds activations on the same per-tensor grid, but from inputs
that its slightly different weights moved, so different elements flip a step:
|export - source| <= weight term + |export's rounding effect| + |source's|,
and the two effects are of one size. Measured: all blocks 8-bit per channel,
0.93 against 0.1 + 2 x 0.61.
"""
FLOAT_TOLERANCE = 1e-4
"""No quantized weight: the same float math (16-bit layers are saved already rounded to half precision)."""
RECIPE_HEADER = """\
# llm-compressor recipe written by autocompress (QuantizationModifier, compressed-tensors schema).
# Apply to model/ with llm-compressor's oneshot(model=..., recipe="recipe.yaml"), or without it with
# compressed_tensors.quantization.apply_quantization_config(model, QuantizationConfig(config_groups=..., ignore=...))
# and min-max weight scales (calculate_qparams): autocompress.exporters._llm_compressor.load_quantized does that.
"""


class LlmCompressorExporter(Exporter):
    """A QuantizationModifier recipe plus the float model, checked by applying it with compressed-tensors."""

    name = "llm-compressor"
    tolerance = WEIGHT_STEP_TOLERANCE

    def tolerance_for(self, source: Source, files: Path) -> float:
        """From the source's policy, never from the written recipe (a wrong recipe must not widen its own tolerance)."""
        settings = expected_settings(source)
        if not settings:
            return FLOAT_TOLERANCE
        tolerance = self.tolerance * 2 ** (8 - min(bits for bits, _, _ in settings.values()))
        if any(activations for _, _, activations in settings.values()):
            tolerance += ACTIVATION_FACTOR * float(np.abs(source.outputs - source.float_activation_outputs).max())
        return tolerance

    def check(self, policy: Policy) -> None:
        quantized = sorted(name for name, spec in policy.layers.items() if 2 <= spec.bits <= 8)
        if policy.scheme == "kmeans" and quantized:
            raise NotExpressible(
                f"llm-compressor: scheme='kmeans' (layers {_some(quantized)}) has no compressed-tensors equivalent: "
                "its int/float schemes are uniform grids with scales, not per-layer codebooks"
            )
        ternary = sorted(name for name, spec in policy.layers.items() if spec.bits == 2)
        if ternary:
            raise NotExpressible(
                f"llm-compressor: bits=2 (layers {_some(ternary)}): our 2-bit grid is ternary, {{-1, 0, 1}} x absmax, while "
                "compressed-tensors' symmetric int2 has four levels, {-2, -1, 0, 1} x absmax/1.5 (a different quantizer, "
                "on our probe classifier it agreed with ours on 15 % of predictions); use 3 bits or more"
            )

    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        recipe, notes = build_recipe(source)
        (folder / RECIPE).write_text(RECIPE_HEADER + yaml.safe_dump(recipe, sort_keys=False))
        model_dir = folder / MODEL_DIR
        model = source.float_copy()
        half = _copy_half_precision_layers(model, source)
        if is_shrunk(model.config):
            save_shrunk(model, model_dir)
        else:
            model.save_pretrained(model_dir)
        if half:
            notes.append(
                f"{len(half)} 16-bit layers: a recipe has no half-precision scheme, so model/ stores their weights "
                "already rounded to float16 (as float32) and the recipe ignores them"
            )
        files = [RECIPE, *(str(p.relative_to(folder)) for p in sorted(model_dir.rglob("*")) if p.is_file())]
        return files, self.verify(source, folder), notes

    def verify(self, source: Source, folder: Path) -> np.ndarray:
        """Apply the written recipe as a user would; check each module got the policy's setting; return the logits on ``source.dev``."""
        model = load_quantized(folder)
        expected, applied = expected_settings(source), applied_settings(model)
        wrong = sorted(set(expected) | set(applied), key=str)
        wrong = [name for name in wrong if expected.get(name) != applied.get(name)]
        if wrong:
            detail = "; ".join(
                f"{name}: recipe gives {_describe(applied.get(name))}, policy {_describe(expected.get(name))}"
                for name in wrong[:4]
            )
            raise ExportMismatch(
                f"{self.name}: compressed-tensors applied the recipe to {len(wrong)} modules unlike the policy: {detail}"
                f"{' …' if len(wrong) > 4 else ''}"
            )
        logits = torch_outputs(model, source)
        if not np.isfinite(logits).all():
            raise ExportMismatch(f"{self.name}: the recipe-quantized model gives non-finite logits")
        return logits


Setting = tuple[int, "int | None", bool]
"""(weight bits, group size or None for per output channel, dynamic 8-bit input activations)."""


def expected_settings(source: Source) -> dict[str, Setting]:
    """What the policy quantized in ``source.model``, by module name: the recipe must reproduce exactly this."""
    modules = dict(source.model.named_modules())
    settings = {
        name: (
            q.bits,
            _group(q.group_size, modules[name].in_features),
            runs_as_matmul_integer(q.bits, q.group_size, modules[name].in_features),
        )
        for name, q in quantized_layers(source).items()
    }
    embedding = source.model.get_input_embeddings()
    quantized = getattr(embedding, QUANT_ATTR, None)
    if quantized is not None:
        name = next(n for n, m in modules.items() if m is embedding)
        settings[name] = (quantized.bits, _group(quantized.group_size, embedding.embedding_dim), False)
    return settings


def applied_settings(model: torch.nn.Module) -> dict[str, Setting | str]:
    """What compressed-tensors set up on each module of ``model``; anything outside our settings as a description."""
    settings: dict[str, Setting | str] = {}
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None:
            continue
        weights, inputs = scheme.weights, scheme.input_activations
        dynamic_inputs = inputs is not None and all(getattr(inputs, key) == value for key, value in DYNAMIC_INPUTS.items())
        ours = (
            weights is not None and weights.type == "int" and weights.symmetric and not weights.dynamic
            and weights.strategy in ("channel", "group") and (inputs is None or dynamic_inputs) and scheme.output_activations is None
        )  # fmt: skip
        if ours:
            settings[name] = (weights.num_bits, weights.group_size if weights.strategy == "group" else None, dynamic_inputs)
        else:
            settings[name] = f"weights {weights}, inputs {inputs}, outputs {scheme.output_activations}"
    return settings


def build_recipe(source: Source) -> tuple[dict[str, Any], list[str]]:
    """The recipe dict for ``source`` and notes on it; targets and ``ignore`` are the saved model's exact module names."""
    settings = expected_settings(source)
    groups: dict[Setting, list[str]] = {}
    for name, setting in settings.items():
        groups.setdefault(setting, []).append(name)
    ignore = [
        name
        for name, module in source.float_model.named_modules()
        if isinstance(module, torch.nn.Linear) and name not in settings
    ]
    config_groups = {}
    for index, ((bits, group_size, activations), targets) in enumerate(
        sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0, item[0][2]))
    ):
        weights = {
            "num_bits": bits,
            "type": "int",
            "symmetric": True,
            "strategy": "group" if group_size else "channel",
            "dynamic": False,
        }
        if group_size:
            weights["group_size"] = group_size
        config_groups[f"group_{index}"] = {
            "targets": targets,
            "weights": weights,
            **({"input_activations": dict(DYNAMIC_INPUTS)} if activations else {}),
        }
    recipe = {"quant_stage": {"quant_modifiers": {MODIFIER: {"ignore": ignore, "config_groups": config_groups}}}}
    notes = [
        f"{len(settings)} modules in {len(config_groups)} config groups; {len(ignore)} Linear layers ignored (kept in float)"
    ]
    if settings:
        notes.append(
            "weights get compressed-tensors' symmetric int grid (codes [-2^(b-1), 2^(b-1)-1], scale absmax/((2^b-1)/2), as "
            "llm-compressor's min-max observer computes it), not ours (codes [-(2^(b-1)-1), 2^(b-1)-1], scale absmax/(2^(b-1)-1)): "
            "a weight may land one step away"
        )
    if any(activations for _, _, activations in settings.values()):
        notes.append(
            "8-bit per-channel layers: dynamic per-tensor asymmetric int8 input activations, our uint8 rounding shifted by 128"
        )
    embedding = source.model.get_input_embeddings()
    if hasattr(embedding, QUANT_ATTR):
        notes.append(
            f"word embedding: int{getattr(embedding, QUANT_ATTR).bits}, one scale per row (compressed-tensors quantizes Embedding targets)"
        )
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
    model = AutoModelForSequenceClassification.from_pretrained(
        folder / MODEL_DIR, trust_remote_code="auto_map" in config, dtype=torch.float32
    )
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
            raise ValueError(
                f"{name}: calibrated scale has shape {tuple(scale.shape)}, compressed-tensors expects {tuple(module.weight_scale.shape)}"
            )
        update_offload_parameter(module, "weight_scale", scale.to(module.weight_scale.dtype))
        if hasattr(module, "weight_zero_point"):
            update_offload_parameter(module, "weight_zero_point", zero_point.to(module.weight_zero_point.dtype))
        module.quantization_status = QuantizationStatus.FROZEN
        count += 1
    return count


def _group(group_size: int, in_features: int) -> int | None:
    """``None`` for one scale per output channel (a group spanning the whole row), else the group size."""
    return None if group_size == in_features else group_size


def _describe(setting: Setting | str | None) -> str:
    if setting is None:
        return "float"
    if isinstance(setting, str):
        return setting
    bits, group_size, activations = setting
    return f"int{bits} {f'group {group_size}' if group_size else 'per channel'}{' + dynamic int8 inputs' if activations else ''}"


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (" …" if len(names) > 4 else "")


def _copy_half_precision_layers(model: PreTrainedModel, source: Source) -> list[str]:
    """Put the 16-bit layers' half-precision-rounded weights (the source's) into ``model``; return their names."""
    plan: Mapping = layer_plan(source.float_model, source.policy)
    names = [name for name, spec in plan.items() if spec.bits == 16]
    simulated = dict(source.model.named_modules())
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).weight.copy_(simulated[name].weight)
    return names
