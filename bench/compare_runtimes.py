"""What users would pick instead, side by side with a search's Pareto models, in one process.

Variants: fp32 torch, fp32 ONNX Runtime, torch dynamic int8, ONNX Runtime
dynamic int8 (uniform, the usual one-liner), ONNX Runtime's transformer
optimizer then dynamic int8 (what Optimum's optimize + quantize gives: the
teacher exported with eager attention so Attention, EmbedLayerNormalization,
SkipLayerNormalization and BiasGelu fuse), every model of a search's
``pareto.json`` (its exported ONNX file as the search timed it, or, where that
file is gone, the policy re-compressed, lowered and verified here), and any
``--onnx LABEL=PATH`` file. Latency rounds are
interleaved across variants (noise hits all of them alike) and each variant's
figure is the median of its per-round medians.

    HF_HUB_OFFLINE=1 python bench/compare_runtimes.py search_spaces/minilm_sst2.yaml \
        --pareto out/minilm-sst2/pareto.json --out bench/results/runtimes.json

With ``--headline``, the searched model that best beats the faster of the two
ONNX Runtime baselines within 1 pt of the teacher (on the untouched split) is
written there with its paired ratios against both (G1 of bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autocompress.config import load_config
from autocompress.controller.trial import by_length, distillation_setup, seeded
from autocompress.measurement import (
    OrtProbe,
    TorchProbe,
    accuracy,
    deploy,
    hardware_fingerprint,
    latency_inputs,
    pick_sentences,
    shipped_bytes,
)
from autocompress.measurement._deployed import onnx_scores
from autocompress.models.loading import load_tokenizer
from autocompress.policy import Policy, field_of
from autocompress.runtime import export_onnx
from autocompress.tasks.data import batches, load_split
from autocompress.tasks.teacher import get_teacher
from autocompress.techniques import Quantization, Recovery, VocabularyPruning, compress, float_techniques

INT8, FUSED_INT8 = "ONNX Runtime dynamic int8", "ONNX Runtime optimized + dynamic int8"
G1_DROP_PT, STRICT_DROP_PT = 1.0, 0.3


def onnx_accuracy(path: Path, batches: list, *, threads: int) -> float:
    return onnx_scores(path, batches, threads=threads)["accuracy"]


def fused_int8(model: torch.nn.Module, example: dict, workdir: Path) -> Path:
    """The teacher as Optimum's optimize + quantize leaves it: eager export, ORT's BERT fusions, dynamic int8."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")  # the sdpa graph has no pattern the attention fusion knows
    exported = export_onnx(eager, workdir / "eager.onnx", example=example)
    config = model.config
    fused = optimize_model(str(exported), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
    fused.save_model_to_file(str(workdir / "fused.onnx"))
    out = workdir / "fused_int8.onnx"
    quantize_dynamic(str(workdir / "fused.onnx"), str(out), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def headline(rows: list[dict], teacher_accuracy: float) -> dict:
    """G1's figures: the searched row with the best min(speed, size) ratio against the faster baseline within 1 pt, the 0.3-pt one,
    each study's chosen row (``chosen`` in its pareto.json) with their mean drop, which of G1's three parts hold,
    and, whatever is met, the most accurate searched row (the best figure reached)."""
    baselines = [r for r in rows if r["variant"] in (INT8, FUSED_INT8)]
    faster = min(baselines, key=lambda r: r["latency_ms"])
    searched = [r for r in rows if "policy" in r]

    def described(row: dict) -> dict:
        ratios = {b["variant"]: {"speedup": b["latency_ms"] / row["latency_ms"], "smaller": b["size_mb"] / row["size_mb"]} for b in baselines}
        return {
            "study": row["study"], "trial": row["trial"], "policy": row["policy"], "dev_accuracy": row["search_dev_accuracy"],
            "test_accuracy": row["accuracy"], "drop_pt": 100 * (teacher_accuracy - row["accuracy"]), "file_bytes": row["bytes"],
            "latency_ms": row["latency_ms"], "vs": ratios,
            "at_least_2x_faster_and_smaller": min(min(v["speedup"], v["smaller"]) for v in ratios.values()) >= 2.0,
            "dominates_both": all(v["speedup"] > 1 and v["smaller"] > 1 for v in ratios.values())
            and all(row["accuracy"] >= b["accuracy"] for b in baselines),
        }

    def best(budget_pt: float) -> dict | None:
        within = [r for r in searched if 100 * (teacher_accuracy - r["accuracy"]) <= budget_pt + 1e-9]
        if not within:
            return None
        return described(max(within, key=lambda r: min(faster["latency_ms"] / r["latency_ms"], faster["size_mb"] / r["size_mb"])))

    g1, strict = best(G1_DROP_PT), best(STRICT_DROP_PT)
    chosen = [described(r) for r in searched if r.get("search_chosen")]  # one per study: what its selection handed out
    mean_drop = statistics.fmean(c["drop_pt"] for c in chosen) if chosen else None
    parts = {
        "within_1pt_2x_faster_and_smaller": bool(g1 and g1["at_least_2x_faster_and_smaller"]),
        "chosen_mean_within_1pt_over_3_seeds": len(chosen) >= 3 and mean_drop <= G1_DROP_PT + 1e-9,
        "within_0_3pt_dominating_both": bool(strict and strict["dominates_both"]),
    }
    return {
        "teacher_test_accuracy": teacher_accuracy,
        "faster_baseline": faster["variant"],
        "g1_met": all(parts.values()),
        "g1_parts": parts,
        "g1_within_1pt": g1,
        "within_0_3pt": strict,
        "chosen_per_study": chosen,
        "chosen_mean_drop_pt": mean_drop,
        "most_accurate_searched": described(max(searched, key=lambda r: r["accuracy"])) if searched else None,
    }


def write_headline(path: Path, summary: dict, *, source: Path) -> None:
    path.write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "timings": str(source), **summary}, indent=2))
    print(json.dumps(summary, indent=2))


def torch_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--pareto", type=Path, nargs="*", default=[], help="pareto.json files of searches; their policies are re-measured here")
    parser.add_argument("--exported", type=Path, nargs="*", default=[], metavar="DIR",
                        help="`autocompress export --format onnx` folders of study trials: the file a user gets from that trial today, "
                        "timed as a searched model (its export_report.json names the study and trial)")
    parser.add_argument("--onnx", nargs="*", default=[], metavar="LABEL=PATH", help="more exported ONNX files to time side by side")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=60, help="timed batch-1 calls per variant per round")
    parser.add_argument("--throughput-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/runtimes.json"))
    parser.add_argument("--headline", type=Path, help="write the G1 model's figures here (bench/results/headline.json)")
    parser.add_argument("--rows-from", type=Path, help="time nothing: recompute --headline from the rows of an earlier --out file")
    args = parser.parse_args()
    if args.rows_from:
        if not args.headline:
            parser.error("--rows-from needs --headline")
        saved = json.loads(args.rows_from.read_text())
        teacher = next(r for r in saved["rows"] if r["variant"] == "fp32 torch")["accuracy"]
        write_headline(args.headline, headline(saved["rows"], teacher), source=args.rows_from)
        return

    config = load_config(args.config)
    teacher = get_teacher(config)
    model = teacher.load()
    tokenizer = load_tokenizer(str(teacher.path))
    examples = load_split(config, "test")  # the untouched split: accuracies here are on rows no search read
    validation = batches(by_length(examples), tokenizer, batch_size=64, max_length=config.task.max_length)
    dev = batches(by_length(load_split(config, "dev")), tokenizer, batch_size=64, max_length=config.task.max_length)
    inputs = latency_inputs(tokenizer, pick_sentences(examples.texts, n=config.latency.sentences), max_length=config.task.max_length)
    workdir = Path(tempfile.mkdtemp(prefix="autocompress-bench-"))
    example = {k: v[:2] for k, v in validation[0].items() if k != "labels"}
    torch.set_num_threads(args.threads)

    def timed(onnx_path: Path) -> dict:
        """An ONNX file as a variant: its probe, accuracy on the untouched split and shipped bytes."""
        return {"probe": OrtProbe(onnx_path, threads=args.threads), "accuracy": onnx_accuracy(onnx_path, validation, threads=args.threads),
                "bytes": shipped_bytes(onnx_path)}

    variants: dict[str, dict] = {}
    fp32 = export_onnx(model, workdir / "fp32.onnx", example=example)
    variants["fp32 torch"] = {"probe": TorchProbe(model, threads=args.threads), "accuracy": accuracy(model, validation), "bytes": torch_bytes(model)}
    variants["fp32 ONNX Runtime"] = timed(fp32)

    dynamic = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    variants["torch dynamic int8"] = {"probe": TorchProbe(dynamic, threads=args.threads), "accuracy": accuracy(dynamic, validation), "bytes": torch_bytes(dynamic)}

    from onnxruntime.quantization import QuantType, quantize_dynamic

    ort_int8 = workdir / "ort_dynamic_int8.onnx"
    quantize_dynamic(str(fp32), str(ort_int8), weight_type=QuantType.QInt8)
    variants[INT8] = timed(ort_int8)
    fused = fused_int8(model, example, workdir)
    variants[FUSED_INT8] = timed(fused)

    rows_in = [(path, row) for path in args.pareto for row in json.loads(path.read_text())]
    rows_in = [(path, {**row, "artifact": str(path.parent / row["artifact"]) if row.get("artifact") else None}) for path, row in rows_in]
    rebuild = [(path, row) for path, row in rows_in if not (row.get("artifact") and Path(row["artifact"]).is_file())]
    kd = distillation_setup(config, model, teacher, tokenizer) if any(field_of(r["policy"], "recovery_steps") for _, r in rebuild) else None
    calibration = batches(load_split(config, "train").sample(32, seed=config.search.seed), tokenizer, batch_size=32, max_length=config.task.max_length)[0]
    vocabulary = VocabularyPruning.for_task(config, tokenizer) if any(field_of(r["policy"], "vocab_rows") for _, r in rebuild) else None
    for path, row in rows_in:
        if (path, row) in rebuild:
            policy = Policy.from_dict(row["policy"])
            recovery = Recovery(kd) if policy.recovery_steps else None
            techniques = (*float_techniques(policy, prepare=lambda technique: vocabulary, recovery=recovery), Quantization())
            with seeded(row["seed"]):
                compressed = compress(model, policy, techniques=techniques, calibration=calibration)
            report, _ = deploy(compressed, dev=dev, threads=args.threads, workdir=workdir / f"trial-{row['trial']}")
            onnx_path = report.path
        else:
            onnx_path = Path(row["artifact"])
        variants[f"{path.parent.name} trial {row['trial']}"] = {
            **timed(onnx_path),
            "search_dev_accuracy": row["dev_accuracy"],
            "search_test_accuracy": row["test_accuracy"],
            "search_speedup": row["speedup"],
            "search_speedup_vs_int8": row["speedup_vs_int8"],
            "search_size_bytes": row["size_bytes"],
            "search_chosen": bool(row.get("chosen")),
            "re_compressed": (path, row) in rebuild,
            "study": path.parent.name,
            "trial": row["trial"],
            "policy": row["policy"],
        }
    for folder in args.exported:
        report = json.loads((folder / "export_report.json").read_text())
        origin = report.get("origin", {})
        if "study" not in origin:
            parser.error(f"--exported {folder}: its export_report.json names no study and trial (made by `autocompress export` from a study?)")
        variants[f"{origin['study']} trial {origin['trial']}, exported"] = {
            **timed(folder / "model.onnx"),
            "search_dev_accuracy": origin["recorded"]["dev_accuracy"],
            "search_test_accuracy": origin["recorded"].get("test_accuracy"),
            "search_chosen": False,
            "re_compressed": False,
            "study": origin["study"],
            "trial": origin["trial"],
            "policy": json.loads((folder / "policy.json").read_text()),
        }
    for item in args.onnx:
        label, _, onnx_path = item.partition("=")
        if not onnx_path or not Path(onnx_path).is_file():
            parser.error(f"--onnx {item!r}: expected LABEL=PATH to an existing ONNX file")
        variants[label] = timed(Path(onnx_path))

    medians: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            medians[name].append(variant["probe"].measure(inputs, batch_size=1, warmup=5, repeats=args.repeats).median_ms)
    for name, variant in variants.items():
        result = variant["probe"].measure(inputs, batch_size=args.throughput_batch, warmup=1, repeats=5)
        variant["throughput_per_s"] = args.throughput_batch / (result.median_ms / 1000)
        variant["latency_ms"] = statistics.median(medians[name])
        variant["latency_round_medians_ms"] = medians[name]

    base, int8 = variants["fp32 torch"], variants[INT8]
    rows = []
    for name, v in variants.items():
        rows.append({
            "variant": name,
            "accuracy": v["accuracy"],
            "drop_pt": 100 * (base["accuracy"] - v["accuracy"]),
            "size_mb": v["bytes"] / 1e6,
            "latency_ms": v["latency_ms"],
            "throughput_per_s": v["throughput_per_s"],
            "speedup_vs_fp32_torch": base["latency_ms"] / v["latency_ms"],
            "speedup_vs_ort_int8": int8["latency_ms"] / v["latency_ms"],
            "smaller_than_ort_int8": int8["bytes"] / v["bytes"],
            **{k: v[k] for k in v if k.startswith("search_") or k in ("re_compressed", "study", "trial", "policy")},
            "bytes": v["bytes"],
        })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "hardware": hardware_fingerprint(threads=args.threads),
        "teacher": str(teacher.path),
        "test_rows": len(examples),
        "rounds": args.rounds,
        "rows": rows,
    }, indent=2))
    if args.headline:
        write_headline(args.headline, headline(rows, base["accuracy"]), source=args.out)
    print("| variant | accuracy | drop (pt) | size MB | batch-1 ms | batch-%d /s | vs fp32 torch | vs ORT int8 speed | vs ORT int8 size |" % args.throughput_batch)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['accuracy']:.4f} | {r['drop_pt']:+.2f} | {r['size_mb']:.1f} | {r['latency_ms']:.2f} | {r['throughput_per_s']:.0f} | "
              f"{r['speedup_vs_fp32_torch']:.2f}x | {r['speedup_vs_ort_int8']:.2f}x | {r['smaller_than_ort_int8']:.2f}x |")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
