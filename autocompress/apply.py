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
from autocompress.export import TOKENIZER_FILES, write_json
from autocompress.pareto import format_table, measured_row
from autocompress.paths import cache_root
from autocompress.policy import Policy
from autocompress.search import resolved


def apply_policy(config: SearchConfig, policy: Policy, *, output: Path, seed: int = 0) -> dict[str, Any]:
    """Compress ``config``'s teacher under ``policy``, measure it like a trial and write it into ``output``; return its row."""
    from autocompress.models import block_linears
    from autocompress.techniques import Recovery
    from autocompress.trial import SearchContext, distillation_setup, evaluate

    config = resolved(config)
    digest = hashlib.sha256(json.dumps([config.model, config.teacher.model_dump(mode="json"), policy.to_dict()]).encode()).hexdigest()[:12]
    context = SearchContext.build(config, cache_root() / "work" / f"apply-{digest}")
    blocks = len(block_linears(context.model))
    bad = sorted(i for i in {*policy.heads, *policy.ffn, *(policy.kept_blocks or ())} if i >= blocks)
    if bad:
        raise ConfigError(f"{config.model}: the policy names blocks {bad}, the model has {blocks} (0..{blocks - 1})")
    recovery = Recovery(distillation_setup(config, context.model, context.teacher, context.tokenizer)) if policy.recovery_steps else None
    try:
        measurement = evaluate(policy, context, name="apply", recovery=recovery, seed=seed)
    except ValueError as error:  # heads or widths beyond the model's, a group size that does not tile a layer
        raise ConfigError(f"{config.model}: the policy does not apply: {error}") from None
    row = measured_row({**asdict(measurement), "policy": policy.to_dict(), "seed": seed}, context.baseline, trial="applied", feasible="")
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy2(measurement.artifact, output / "model.onnx")
    policy.save(output / "policy.json")
    for name in TOKENIZER_FILES:
        if (context.teacher.path / name).is_file():
            shutil.copy2(context.teacher.path / name, output / name)
    write_json(output / "measurement.json", {**row, "artifact": "model.onnx", "model": config.model, "baseline": context.baseline})
    print(format_table([row], context.baseline))
    return row
