"""A decoder policy for llm-compressor users: its recipe, and a compressed-tensors checkpoint holding the policy's own codes.

``recipe.yaml`` is what llm-compressor's ``oneshot`` would run to quantize the
teacher the same way: ``GPTQModifier`` (or ``QuantizationModifier`` for RTN)
with one config group per width, its ``targets`` the exact module names,
asymmetric integer weights in groups (``strategy: group``), and ``ignore`` for
what stays float. llm-compressor's observers choose each group's range by
min-max, ours by the least rounding error, so its result is close to, not
equal to, ours. ``model/`` therefore holds our model itself: the
compressed-tensors checkpoint llm-compressor saves (``quantization_config``
in ``config.json``, ``weight``, ``weight_scale`` and ``weight_zero_point`` per
Linear), in its ``int-quantized`` format, one int8 per weight, which
transformers loads and de-quantizes. (``pack-quantized``, eight 4-bit codes
per int32, packs asymmetric zero points in a layout transformers 5.25 refuses
to load with compressed-tensors 0.20: a size mismatch, measured.) A tied
``lm_head`` that is quantized is untied: the embedding keeps its
de-quantized values in float, as the GenAI folder gathers them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedModel

from autocompress.models.decoders import tied_embedding
from autocompress.models.loading import copy_tokenizer
from autocompress.techniques.decoder_policy import DecoderPolicy
from autocompress.techniques.weight_only import AffineWeight

RECIPE, MODEL_DIR, FORMAT = "recipe.yaml", "model", "int-quantized"
HEADER = """\
# llm-compressor recipe written by autocompress: oneshot(model=TEACHER, recipe="recipe.yaml", dataset=...) quantizes the
# teacher under this policy with llm-compressor's own observers; model/ holds autocompress's quantized model itself as a
# compressed-tensors checkpoint (transformers' from_pretrained loads it).
"""


def recipe(policy: DecoderPolicy, codes: Mapping[str, AffineWeight], model: PreTrainedModel) -> dict:
    """The llm-compressor recipe of ``policy``: one config group per width, every Linear it leaves float ignored."""
    groups: dict[tuple[int, int], list[str]] = {}
    for name, weight in codes.items():
        groups.setdefault((weight.bits, weight.group_size), []).append(name)
    ignore = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and name not in codes]
    config_groups = {
        f"group_{index}": {"targets": names, "weights": {"num_bits": bits, "type": "int", "symmetric": False, "strategy": "group",
                                                         "group_size": group_size, "dynamic": False}}
        for index, ((bits, group_size), names) in enumerate(sorted(groups.items()))
    }
    modifier = "GPTQModifier" if policy.method == "gptq" else "QuantizationModifier"
    return {"quant_stage": {"quant_modifiers": {modifier: {"ignore": ignore, "config_groups": config_groups}}}}


def write_compressed_tensors(student: PreTrainedModel, codes: Mapping[str, AffineWeight], policy: DecoderPolicy, tokenizer_folder: Path,
                             folder: Path) -> Path:
    """Write ``recipe.yaml`` and ``model/`` (``student``: the simulated model, ``codes``: its quantized Linears) under
    ``folder``; the model folder."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, apply_quantization_config

    written = recipe(policy, codes, student)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE).write_text(HEADER + yaml.safe_dump(written, sort_keys=False))
    model = copy.deepcopy(student)
    if "lm_head" in codes and tied_embedding(model):
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    modifier = next(iter(written["quant_stage"]["quant_modifiers"].values()))
    apply_quantization_config(model, QuantizationConfig(config_groups=modifier["config_groups"], ignore=modifier["ignore"]))
    modules = dict(model.named_modules())
    for name, weight in codes.items():
        module, middle = modules[name], 2 ** (weight.bits - 1)  # compressed-tensors' signed grid: codes and zeros shifted by half
        module.weight_scale.data.copy_(weight.scales.to(module.weight_scale.dtype))
        module.weight_zero_point.data.copy_((weight.zeros.to(torch.int32) - middle).to(module.weight_zero_point.dtype))
        module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=FORMAT)
    compressor.compress_model(model)
    out = folder / MODEL_DIR
    model.save_pretrained(out)
    compressor.update_config(str(out))
    copy_tokenizer(tokenizer_folder, out)
    policy.save(out / "policy.json")
    return out
