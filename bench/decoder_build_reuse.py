"""A trial's GenAI build, from scratch and lowered into the teacher's float build, on SmolLM2-135M (RTN int4 g32 everywhere).

From scratch: save the quantized copy (540 MB), run the builder in fp32, check it, lower it. Reused (what a search's
trials do): lower into the teacher's fp32 build, made once. Both are built twice, alternately; the two folders'
logits must be identical.

Usage: python bench/decoder_build_reuse.py [--out bench/results/decoder_build_reuse.json]
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from autocompress.models.loading import resolve_model_path
from autocompress.paths import write_json
from autocompress.runtime.genai import build_genai, genai_logits, run_builder
from autocompress.techniques.decoder_bits import quantize_decoder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decoder_build_reuse.json")
    args = parser.parse_args()
    folder = Path(resolve_model_path("smollm2"))
    teacher = AutoModelForCausalLM.from_pretrained(folder).eval()
    work = Path(tempfile.mkdtemp(prefix="build-reuse-"))
    started = time.perf_counter()
    reference = run_builder(folder, work / "teacher-fp32", "fp32")
    reference_s = time.perf_counter() - started
    student = copy.deepcopy(teacher)
    codes = quantize_decoder(student, lambda block, kind: (4, 32), method="rtn")
    seconds: dict[str, list[float]] = {"from scratch": [], "reused": []}
    for round_ in range(2):
        for name, options in (("from scratch", {}), ("reused", {"float_build": reference})):
            started = time.perf_counter()
            build_genai(student, folder, codes, work / f"{name.replace(' ', '-')}-{round_}", **options)
            seconds[name].append(round(time.perf_counter() - started, 2))
    ids = torch.arange(64).add(100).unsqueeze(0)
    identical = bool(np.array_equal(genai_logits(work / "from-scratch-0")(ids), genai_logits(work / "reused-0")(ids)))
    write_json(args.out, {"model": "SmolLM2-135M-Instruct (de-quantized Q4_1 GGUF)", "policy": "RTN int4 g32, every Linear and lm_head",
                          "teacher_fp32_build_s": round(reference_s, 2), "build_s": seconds, "identical_logits": identical,
                          "machine": {"cpu": platform.processor() or platform.machine(), "cores": 2}})
    print(seconds, "identical logits:", identical)


if __name__ == "__main__":
    main()
