"""Apply a policy to a model without searching, and measure it exactly as a trial is measured.

For a newer checkpoint of the architecture a search ran on: the checkpoint is
the teacher, the policy compresses it, and the result is lowered, verified,
scored on dev and test and timed beside the checkpoint and ORT's dynamic
int8 in the same probe, like every trial.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autocompress.config import ConfigError, SearchConfig
from autocompress.controller.pareto import format_table, measured_row
from autocompress.controller.run import resolved
from autocompress.models.loading import copy_tokenizer
from autocompress.paths import cache_root, write_json
from autocompress.policy import Policy


def apply_policy(config: SearchConfig, policy: Policy, *, output: Path, seed: int = 0) -> dict[str, Any]:
    """Compress ``config``'s teacher under ``policy``, measure it like a trial and write it into ``output``; return its row."""
    from autocompress.controller.trial import SearchContext, distillation_setup, evaluate
    from autocompress.techniques import Recovery

    config = resolved(config)
    check_fits(policy, config.teacher.checkpoint or config.model)
    digest = hashlib.sha256(json.dumps([config.model, config.teacher.model_dump(mode="json"), policy.to_dict()]).encode()).hexdigest()[:12]
    context = SearchContext.build(config, cache_root() / "work" / f"apply-{digest}")
    recovery = Recovery(distillation_setup(config, context.model, context.teacher, context.tokenizer)) if policy.recovery_steps else None
    try:
        measurement = evaluate(policy, context, name="apply", recovery=recovery, seed=seed)
    except ValueError as error:  # heads or widths beyond the model's, a group size that does not tile a layer
        raise ConfigError(f"{config.model}: the policy does not apply: {error}") from None
    row = measured_row({**asdict(measurement), "policy": policy.to_dict(), "seed": seed}, context.baseline, trial="applied", feasible="")
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy2(measurement.artifact, output / "model.onnx")
    policy.save(output / "policy.json")
    copy_tokenizer(context.teacher.path, output)
    write_json(output / "measurement.json", {**row, "artifact": "model.onnx", "model": config.model, "baseline": context.baseline})
    print(format_table([row], context.baseline, config.task.metric))
    return row


def check_fits(policy: Policy, model: str) -> None:
    """Refuse, from the model's config alone, a policy naming blocks, heads or FFN widths the model does not have."""
    from transformers import AutoConfig

    from autocompress.models.families import ffn_width, len_blocks
    from autocompress.models.loading import resolve_model_path

    shape = AutoConfig.from_pretrained(resolve_model_path(model))
    blocks, heads, width = len_blocks(shape), shape.num_attention_heads, ffn_width(shape)
    problems = [f"block {i} (the model has {blocks})" for i in sorted({*policy.heads, *policy.ffn, *(policy.kept_blocks or ())}) if i >= blocks]
    problems += [f"heads.{i}: {n} (the model has {heads} per block)" for i, n in policy.heads.items() if n > heads]
    problems += [f"ffn.{i}: {n} (the model's FFN width is {width})" for i, n in policy.ffn.items() if n > width]
    if problems:
        raise ConfigError(f"the policy does not fit {model}: {'; '.join(problems)}")
