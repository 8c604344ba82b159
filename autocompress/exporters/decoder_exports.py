"""A decoder search's chosen model in the formats users deploy it with, each reloaded in its own tool and re-scored.

``tracking.export_formats`` of a causal-lm search: ``onnx`` (the ONNX Runtime
GenAI folder the trial was timed as, reloaded with ``onnxruntime_genai``'s
model), ``hf`` (a transformers folder of the simulated weights with the
tokenizer and ``policy.json``) and ``gguf`` (llama.cpp's format, written
from the policy's own codes where its types hold them exactly:
``exporters.decoder_gguf``; a GGUF source model is needed for its metadata
and tokenizer). The chosen policy is applied to the teacher again (RTN and
GPTQ are deterministic on the same calibration windows) and every export's
dev perplexity is measured from the reloaded files and compared with the
perplexity the trial recorded. A format that cannot hold the policy is
refused in one line and the others still export.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from autocompress.exporters.decoder_gguf import GgufRefusal, write_gguf
from autocompress.models.gguf import PACKAGED, packaged_gguf
from autocompress.models.loading import copy_tokenizer
from autocompress.runtime.genai import genai_logits
from autocompress.tasks.language_modeling import Window, perplexity, torch_logits
from autocompress.techniques.decoder_bits import quantize_decoder
from autocompress.techniques.decoder_policy import DecoderPolicy

TOLERANCE = {"onnx": 1e-6, "hf": 1e-4, "gguf": 0.02}
"""Largest relative difference of an export's dev perplexity from the trial's record: the GenAI folder is the file that was
scored; the HF folder holds the same float weights; GGUF stores Q4_1's scale and minimum in float16 (measured on SmolLM2:
0.3 % apart)."""


@dataclass(frozen=True)
class DecoderExport:
    format: str
    folder: Path
    perplexity: float | None
    expected: float
    refused: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None and abs(self.perplexity / self.expected - 1) <= TOLERANCE[self.format]

    def line(self) -> str:
        if self.refused:
            return f"{self.format}: refused: {self.refused}"
        verdict = "same as the trial" if self.ok else f"DIFFERS by more than {TOLERANCE[self.format]:.0%}"
        return f"{self.format}: {self.folder} | dev perplexity {self.perplexity:.4f} reloaded vs {self.expected:.4f} recorded ({verdict})"


def source_gguf(model: str) -> Path | None:
    """The GGUF file the search's ``model`` was converted from, if any."""
    if model in PACKAGED:
        return packaged_gguf(model)
    return Path(model).expanduser() if model.endswith(".gguf") else None


def export_decoder(chosen: dict[str, Any], formats: list[str], output: Path, *, teacher: torch.nn.Module, tokenizer_folder: Path,
                   calibration: list[torch.Tensor], dev: list[Window], model: str) -> list[DecoderExport]:
    """Write the chosen trial (a ``pareto.json`` row) in each of ``formats`` under ``output``/exports and check each one."""
    policy = DecoderPolicy.from_dict(chosen["policy"])
    student = copy.deepcopy(teacher)
    codes = quantize_decoder(student, policy.plan, method=policy.method, calibration=calibration)
    reports = []
    for name in formats:
        folder = output / "exports" / name
        shutil.rmtree(folder, ignore_errors=True)
        if name == "onnx":
            shutil.copytree(chosen["folder"], folder)
            policy.save(folder / "policy.json")
            reports.append(DecoderExport(name, folder, perplexity(genai_logits(folder), dev), chosen["dev_perplexity"]))
        elif name == "hf":
            student.save_pretrained(folder)
            copy_tokenizer(tokenizer_folder, folder)
            policy.save(folder / "policy.json")
            reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            reports.append(DecoderExport(name, folder, perplexity(torch_logits(reloaded), dev), chosen["simulated_dev_perplexity"]))
        else:
            reports.append(_gguf(student, codes, policy, folder, model, dev, chosen["simulated_dev_perplexity"]))
    return reports


def _gguf(student, codes, policy: DecoderPolicy, folder: Path, model: str, dev: list[Window], expected: float) -> DecoderExport:
    source = source_gguf(model)
    if source is None:
        return DecoderExport("gguf", folder, None, expected, f"model {model!r} is not a GGUF file: gguf copies a source GGUF's "
                             "metadata and tokenizer (model: smollm2 or a .gguf path)")
    try:
        path = write_gguf(student, codes, source, folder / "model.gguf")
    except GgufRefusal as refusal:
        return DecoderExport("gguf", folder, None, expected, str(refusal))
    policy.save(folder / "policy.json")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype=torch.float32).eval()
    return DecoderExport("gguf", folder, perplexity(torch_logits(reloaded), dev), expected)
