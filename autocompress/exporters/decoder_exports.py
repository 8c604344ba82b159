"""A decoder policy in the formats users deploy it with, each reloaded in its own tool and re-scored.

A causal-lm search's chosen trial (``tracking.export_formats``), or any trial,
MLflow trial run or policy file through ``autocompress export`` and ``pick``
(a ``DecoderOrigin``): ``onnx`` (the ONNX Runtime GenAI folder the trial was
timed as, copied while it is still on this machine, else lowered again;
reloaded with ``onnxruntime_genai``'s model), ``hf`` (a transformers folder of
the simulated weights with the tokenizer and ``policy.json``) and ``gguf``
(llama.cpp's format, written from the policy's own codes where its types hold
them exactly: ``exporters.decoder_gguf``; a GGUF source model is needed for
its metadata and tokenizer) and ``llm-compressor`` (its recipe, and the model
as a compressed-tensors checkpoint: ``exporters.decoder_compressed_tensors``). The policy is applied to the teacher again (RTN
and GPTQ are deterministic on the same calibration windows); the rebuilt
simulation must score the dev perplexity its trial recorded, and every
export's dev perplexity is measured from the reloaded files and compared.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from autocompress.config import DECODER_EXPORTS, ConfigError, SearchConfig
from autocompress.exporters.decoder_compressed_tensors import write_compressed_tensors
from autocompress.exporters.decoder_gguf import GgufRefusal, write_gguf
from autocompress.models.gguf import PACKAGED, packaged_gguf
from autocompress.models.loading import copy_tokenizer
from autocompress.runtime.genai import GENAI_BITS, LOWERING_TOLERANCE, build_genai, genai_logits
from autocompress.tasks.language_modeling import Window, perplexity, torch_logits
from autocompress.techniques.decoder_bits import quantize_decoder
from autocompress.techniques.decoder_policy import FLOAT, DecoderPolicy

SAME_FILE, SAME_WEIGHTS, GGUF_TOLERANCE = 1e-6, 1e-4, 0.02
"""Largest relative difference of an export's dev perplexity from what it is compared with: a copied GenAI folder is the
file the trial scored; the HF folder and the rebuilt simulation hold the same float weights; GGUF stores Q4_1's scale and
minimum in float16 (measured on SmolLM2: 0.3 % apart). A GenAI folder lowered again is held to the trial's own lowering
check (``LOWERING_TOLERANCE`` from the simulation)."""


@dataclass(frozen=True)
class DecoderExport:
    format: str
    folder: Path
    perplexity: float | None
    expected: float
    tolerance: float
    against: str = "recorded"
    refused: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None and abs(self.perplexity / self.expected - 1) <= self.tolerance

    def line(self) -> str:
        if self.refused:
            return f"{self.format}: refused: {self.refused}"
        verdict = "same as the trial" if self.ok else f"DIFFERS by more than {self.tolerance:.2%}"
        return f"{self.format}: {self.folder} | dev perplexity {self.perplexity:.4f} reloaded vs {self.expected:.4f} {self.against} ({verdict})"


@dataclass(frozen=True)
class DecoderOrigin:
    """A decoder policy and the search config it applies under: a study's trial, an MLflow trial run or a policy file."""

    config: SearchConfig
    policy: DecoderPolicy
    label: str
    recorded: Mapping[str, float] = field(default_factory=dict)
    """The trial's ``dev_perplexity`` (its GenAI folder) and ``simulated_dev_perplexity``; empty for a bare policy file."""
    folder: Path | None = None
    """The trial's GenAI folder, if it was kept."""
    source: Mapping[str, Any] = field(default_factory=dict)
    """Where it was found: ``study`` and ``trial``, ``run_id``, or ``policy_file``."""


def source_gguf(model: str) -> Path | None:
    """The GGUF file the search's ``model`` was converted from, if any."""
    if model in PACKAGED:
        return packaged_gguf(model)
    return Path(model).expanduser() if model.endswith(".gguf") else None


def export_decoder(policy: DecoderPolicy, formats: list[str], root: Path, *, teacher: torch.nn.Module, tokenizer_folder: Path,
                   calibration: list[torch.Tensor], dev: list[Window], model: str, recorded: Mapping[str, float] | None = None,
                   folder: Path | None = None, label: str = "the policy") -> list[DecoderExport]:
    """Write ``policy`` applied to ``teacher`` in each of ``formats`` under ``root``/FORMAT and check each one; ``recorded``
    and ``folder`` are its trial's numbers and GenAI folder, when it has a trial."""
    recorded = recorded or {}
    student = copy.deepcopy(teacher)
    codes = quantize_decoder(student, policy.plan, method=policy.method, calibration=calibration)
    simulated = perplexity(torch_logits(student), dev)
    expected = recorded.get("simulated_dev_perplexity")
    if expected is not None and abs(simulated / expected - 1) > SAME_WEIGHTS:
        raise ConfigError(f"{label}: the rebuilt model scores dev perplexity {simulated:.4f}, its trial recorded {expected:.4f}; "
                          "the model or the text changed since the search")
    against = "recorded" if expected is not None else "simulated"
    reports = []
    for name in formats:
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        if name == "onnx":
            if folder is not None and folder.is_dir() and "dev_perplexity" in recorded:
                shutil.copytree(folder, out)
                reference, tolerance, against_onnx = recorded["dev_perplexity"], SAME_FILE, "recorded"
            else:  # released with the trial's other files, or never searched: lowered again, checked as a trial is
                build_genai(student, tokenizer_folder, codes, out)
                reference, tolerance, against_onnx = simulated, LOWERING_TOLERANCE, "simulated"
            policy.save(out / "policy.json")
            reports.append(DecoderExport(name, out, perplexity(genai_logits(out), dev), reference, tolerance, against_onnx))
        elif name == "hf":
            student.save_pretrained(out)
            copy_tokenizer(tokenizer_folder, out)
            policy.save(out / "policy.json")
            reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            reports.append(DecoderExport(name, out, perplexity(torch_logits(reloaded), dev), simulated, SAME_WEIGHTS, against))
        elif name == "llm-compressor":
            reloaded = AutoModelForCausalLM.from_pretrained(write_compressed_tensors(student, codes, policy, tokenizer_folder, out),
                                                            dtype=torch.float32).eval()
            reports.append(DecoderExport(name, out, perplexity(torch_logits(reloaded), dev), simulated, SAME_WEIGHTS, against))
        else:
            reports.append(_gguf(student, codes, policy, out, model, dev, simulated, against))
    return reports


def export_origin(origin: DecoderOrigin, formats: list[str], root: Path) -> list[DecoderExport]:
    """``autocompress export``/``pick`` of a decoder: a format that cannot hold the policy is a one-line ``ConfigError``
    before any weight is loaded; then the teacher and the search's dev and calibration windows are read again."""
    from autocompress.tasks.registry import task_for

    for name in formats:
        reason = refusal(origin.policy, name, origin.config.model)
        if reason:
            raise ConfigError(f"{origin.label}: --format {name}: {reason}")
    task = task_for(origin.config)
    teacher = task.teacher()
    return export_decoder(origin.policy, formats, root, teacher=teacher.load(), tokenizer_folder=teacher.path,
                          calibration=task.calibration_ids(), dev=list(task.load_split("dev")), model=origin.config.model,
                          recorded=origin.recorded, folder=origin.folder, label=origin.label)


def refusal(policy: DecoderPolicy, name: str, model: str) -> str | None:
    """Why format ``name`` cannot hold ``policy`` (judged from the policy and the model's name alone), or None."""
    widths = {bits for bits in (*policy.attention_bits, *policy.mlp_bits, policy.head_bits) if bits != FLOAT}
    if name not in DECODER_EXPORTS:
        return f"a causal-lm model exports as {', '.join(DECODER_EXPORTS)}"
    if name == "onnx" and widths - set(GENAI_BITS):
        return f"{sorted(widths - set(GENAI_BITS))}-bit layers have no ONNX Runtime CPU kernel; allowed: {list(GENAI_BITS)} bits or float"
    if name == "gguf":
        if source_gguf(model) is None:
            return f"model {model!r} is not a GGUF file: gguf copies a source GGUF's metadata and tokenizer (model: smollm2 or a .gguf path)"
        if widths - {4} or (widths and policy.group_size != 32):
            return (f"{sorted(widths)}-bit groups of {policy.group_size} have no GGUF type the gguf package writes exactly; "
                    "allowed: 4-bit groups of 32 (Q4_1) or float (F32)")
    return None


def _gguf(student, codes, policy: DecoderPolicy, folder: Path, model: str, dev: list[Window], expected: float, against: str) -> DecoderExport:
    source = source_gguf(model)
    if source is None:
        return DecoderExport("gguf", folder, None, expected, GGUF_TOLERANCE, against, refusal(policy, "gguf", model))
    try:
        path = write_gguf(student, codes, source, folder / "model.gguf")
    except GgufRefusal as error:
        return DecoderExport("gguf", folder, None, expected, GGUF_TOLERANCE, against, str(error))
    policy.save(folder / "policy.json")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype=torch.float32).eval()
    return DecoderExport("gguf", folder, perplexity(torch_logits(reloaded), dev), expected, GGUF_TOLERANCE, against)
