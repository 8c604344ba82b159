"""AutoRound's AutoScheme allocation for SmolLM2 at our granularity, for bench/decoder_allocation.py (issue #27, L3).

Run with a Python that has ``auto-round`` (``pip install auto-round==0.16.1``; not a dependency of autocompress). Options:
asymmetric integer weights in groups of 32 at 2 and 4 bits (our grid), scale and zero-point bits not counted (as our
``average_bits``), ``lm_head`` left to the caller (AutoRound leaves it unquantized by default), and one scheme per block
for q/k/v/o and one for gate/up/down (``shared_layers``: what a ``DecoderPolicy`` and the GenAI builder's fused
``qkv_proj`` can hold). Calibration: the texts given (the bench passes the windows our GPTQ calibrates on). Writes
one ``{"average_bits": target, "attention_bits": [...], "mlp_bits": [...]}`` per target (AutoScheme caches its layer
scores under ``~/.cache/auto_round``, so the targets after the first cost little) and the seconds it took.

Usage: python bench/autoscheme_allocation.py --average-bits 2.75 3.0 --texts calibration.json --out allocation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from auto_round import AutoRound, AutoScheme
from auto_round.schemes import QuantizationScheme
from transformers import AutoModelForCausalLM, AutoTokenizer

from autocompress.models.loading import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--average-bits", type=float, nargs="+", required=True)
    parser.add_argument("--texts", type=Path, required=True, help="a JSON list of calibration texts")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    folder = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = json.loads(args.texts.read_text())
    options = [QuantizationScheme.from_dict({"bits": bits, "sym": False, "group_size": 32, "data_type": "int", "act_bits": 16})
               for bits in (2, 4)]
    started, allocations = time.time(), []
    for target in args.average_bits:  # one AutoRound per target; AutoScheme caches its layer scores on disk, so only the first scores
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        scheme = AutoScheme(avg_bits=target, options=options, ignore_scale_zp_bits=True, nsamples=len(texts), seqlen=args.seqlen,
                            dataset=str(args.texts), shared_layers=[["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]],
                            low_gpu_mem_usage=False, enable_torch_compile=False)
        rounder = AutoRound(model, tokenizer, scheme=scheme, iters=0, nsamples=len(texts), seqlen=args.seqlen, dataset=str(args.texts),
                            device_map="cpu", enable_torch_compile=False)
        rounder.configure_layer_config()  # AutoScheme's selection, without quantizing (our GPTQ quantizes every allocation alike)
        bits = lambda name, config=rounder.layer_config: int(config[name]["bits"])  # noqa: E731
        blocks = model.config.num_hidden_layers
        allocations.append({"average_bits": target, "attention_bits": [bits(f"model.layers.{i}.self_attn.q_proj") for i in range(blocks)],
                            "mlp_bits": [bits(f"model.layers.{i}.mlp.gate_proj") for i in range(blocks)]})
    args.out.write_text(json.dumps({"seconds": time.time() - started, "allocations": allocations}, indent=1))


if __name__ == "__main__":
    main()
