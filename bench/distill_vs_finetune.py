"""A student distilled from the teacher vs the same student fine-tuned on labels only, at equal steps.

The student keeps ``--blocks`` evenly spaced teacher blocks (Taylor-ranked
heads and FFN neurons when asked), starts from the teacher's weights, and is
trained twice from the same start: once with KD (``alpha`` of soft labels at
temperature T) and once with ``alpha=0`` (plain cross-entropy, no teacher).
Validation accuracy is recorded every ``--eval-every`` steps.

    HF_HUB_OFFLINE=1 python bench/distill_vs_finetune.py search_spaces/minilm_sst2_joint.yaml \
        --blocks 3 --steps 300 --out bench/results/distill_vs_finetune.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from autocompress.config import load_config
from autocompress.controller.trial import by_length, distillation_setup
from autocompress.distill import recover
from autocompress.measurement import accuracy
from autocompress.models.loading import block_linears, load_tokenizer
from autocompress.policy import Policy
from autocompress.tasks.data import batches, load_split
from autocompress.tasks.teacher import get_teacher
from autocompress.techniques import StructuredPruning, evenly_spaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/distill_vs_finetune.json"))
    args = parser.parse_args()

    config = load_config(args.config)
    settings = config.recovery
    teacher = get_teacher(config)
    model = teacher.load()
    tokenizer = load_tokenizer(str(teacher.path))
    kd = distillation_setup(config, model, teacher, tokenizer)
    validation = batches(by_length(load_split(config, "test")), tokenizer, batch_size=64, max_length=config.task.max_length)
    kept = evenly_spaced(args.blocks, len(block_linears(model)))
    policy = Policy(kept_blocks=kept)
    start = copy.deepcopy(model)
    StructuredPruning().apply(start, policy, {}, calibration=kd.train_batches[0])
    results = {"teacher_accuracy": accuracy(model, validation), "student_blocks": list(kept),
               "untrained_student_accuracy": accuracy(start, validation)}
    for name, alpha in (("distilled", settings.alpha), ("labels_only", 0.0)):
        student = copy.deepcopy(start)
        began = time.perf_counter()
        result = recover(student, model, kd.train_batches, steps=args.steps,
                         settings=settings.model_copy(update={"alpha": alpha, "eval_every": args.eval_every}),
                         teacher_logits=kd.teacher_logits, eval_batches=kd.eval_batches)
        results[name] = {"alpha": alpha, "validation_accuracy": accuracy(student, validation),
                         "curve_on_eval_subset": result.evaluations, "seconds": time.perf_counter() - began}
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                                    "steps": args.steps, **results}, indent=2))


if __name__ == "__main__":
    main()
