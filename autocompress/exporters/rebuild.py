"""Rebuild what a trial built, from a study's trial, an MLflow run or a policy file, for export.

A trial's model is a function of its search config (model, task, teacher
recipe), its policy and its seed; all three are kept in the study and in its
MLflow runs. Rebuilding reuses the cached teacher and the search's own dev
rows and calibration batch, then checks that the rebuilt model scores what
the trial recorded (within half a point) before anything is exported. A
distilled student's trial keeps its trained float weights; where that folder
is still on this machine they are loaded instead of distilling it again.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocompress.config import ConfigError, SearchConfig, load_config, parse_config
from autocompress.controller.study import FINAL_OF_ATTR
from autocompress.exporters import Source
from autocompress.exporters._base import MAX_ACCURACY_DROP
from autocompress.exporters.decoder_exports import DecoderOrigin
from autocompress.models.shrunk import load_shrunk
from autocompress.policy import Policy
from autocompress.techniques.decoder_policy import FORMAT as DECODER_POLICY
from autocompress.techniques.decoder_policy import DecoderPolicy
from autocompress.tracking.runs import ARTIFACT_TAG, METRICS_ATTR, SEARCH_RUN_ATTR, TRIAL_TAG


@dataclass(frozen=True)
class Origin:
    """Where a model comes from: the config it was searched under, its policy and seed, and what its trial measured."""

    config: SearchConfig
    policy: Policy
    seed: int
    label: str
    recorded: dict[str, Any] = field(default_factory=dict)
    """The trial's own numbers (dev_accuracy or dev_cosine, ..., latency_ms, ...); empty for a bare policy file."""
    trained: Path | None = None
    """The trial's distilled float weights (``save_shrunk`` folder), if it kept them."""
    final: bool = False
    """A final training: distilled on ``search.final_training``'s rows and loss weights."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where it was found, for the export report: ``study`` and ``trial``, ``run_id``, or ``policy_file``."""

    def provenance(self) -> dict[str, Any]:
        """What an export records of its model's origin: where it was found and what its trial measured."""
        return {"label": self.label, **self.source, "final": self.final, "recorded": self.recorded}


RECORDED = ("dev_accuracy", "test_accuracy", "simulated_dev_score", "latency_ms", "speedup", "size_bytes")
"""What an origin keeps of its trial's numbers, besides the task's own metrics."""


def _decoder(config: SearchConfig, policy: dict[str, Any], label: str, recorded: dict[str, Any], artifact: str | None,
             source: dict[str, Any]) -> DecoderOrigin:
    """A causal-lm trial's origin: its decoder policy, the perplexities it recorded and its GenAI folder (``artifact``'s)."""
    try:
        decoder_policy = DecoderPolicy.from_dict(policy)
    except (ValueError, KeyError) as error:
        raise ConfigError(f"{label}: {error}") from None
    kept = {k: float(recorded[k]) for k in ("dev_perplexity", "simulated_dev_perplexity") if k in recorded}
    return DecoderOrigin(config, decoder_policy, label, kept, Path(artifact).parent if artifact else None, source)


def from_trial(study: Any, number: int) -> Origin | DecoderOrigin:
    """Trial ``number`` of a study made by ``autocompress search``."""
    search = study.user_attrs.get(SEARCH_RUN_ATTR)
    if search is None:
        raise ConfigError(f"study {study.study_name!r} holds no search config; was it made by autocompress search?")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials or trials[number].state.name != "COMPLETE":
        done = sorted(n for n, t in trials.items() if t.state.name == "COMPLETE")
        raise ConfigError(f"study {study.study_name!r}: trial {number} is not a completed trial; completed: {done}")
    attrs = trials[number].user_attrs
    config = parse_config(search["config"], source=f"study {study.study_name!r}")
    source = {"study": study.study_name, "trial": number}
    if config.task.type == "causal-lm":
        return _decoder(config, attrs["policy"], f"trial {number} of study {study.study_name!r}", attrs.get(METRICS_ATTR, {}),
                        attrs.get("artifact"), source)
    recorded = {k: attrs[k] for k in RECORDED if k in attrs} | dict(attrs.get("scores") or {})
    trained = Path(attrs["trained_model"]) if attrs.get("trained_model") else None
    return Origin(config, Policy.from_dict(attrs["policy"], source=f"trial {number}"), int(attrs["seed"]), f"trial {number} of study {study.study_name!r}",
                  recorded, trained, FINAL_OF_ATTR in attrs, source)


def from_run(run_id: str, *, tracking_uri: str | None = None) -> Origin | DecoderOrigin:
    """The trial behind an MLflow child run of a search (its policy, seed and its parent's config)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        with tempfile.TemporaryDirectory() as folder:
            policy_file = Path(client.download_artifacts(run_id, "policy.json", folder))
            policy_data = json.loads(policy_file.read_text())
            config = json.loads(Path(client.download_artifacts(parent.info.run_id, "config.json", folder)).read_text())
            policy = None if policy_data.get("format") == DECODER_POLICY else Policy.load(policy_file)
    except (MlflowException, KeyError, OSError) as error:
        raise ConfigError(f"run {run_id}: not a trial run of an autocompress search at {client.tracking_uri} ({error})") from None
    config = parse_config(config, source=f"run {parent.info.run_id} config.json")
    label = f"run {run_id} (trial {run.data.tags.get(TRIAL_TAG)})"
    if policy is None:
        return _decoder(config, policy_data, label, run.data.metrics, run.data.tags.get(ARTIFACT_TAG), {"run_id": run_id})
    metric = config.task.metric
    recorded = {k: run.data.metrics[k] for k in (*RECORDED, f"dev_{metric}", f"test_{metric}") if k in run.data.metrics}
    trained = Path(run.data.tags["trained_model"]) if "trained_model" in run.data.tags else None
    return Origin(config, policy, int(run.data.params.get("seed", 0)), label, recorded,
                  trained, FINAL_OF_ATTR in run.data.tags, {"run_id": run_id})


def from_policy(path: str | Path, *, config: str | Path, seed: int = 0) -> Origin | DecoderOrigin:
    """A policy file, applied under a search config (its model, task and teacher)."""
    source, label = {"policy_file": str(path)}, f"policy {path}"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = {}  # Policy.load says what is wrong with it
    if isinstance(data, dict) and data.get("format") == DECODER_POLICY:
        search = load_config(config)
        if search.task.type != "causal-lm":
            raise ConfigError(f"{label}: a decoder policy applies under a task.type 'causal-lm' config; {config} is {search.task.type!r}")
        return _decoder(search, data, label, {}, None, source)
    return Origin(load_config(config), Policy.load(path), seed, label, source=source)


def rebuild(origin: Origin) -> Source:
    """The origin's model, built as its trial built it (or its kept weights); refuses one that scores more than half a point off the record."""
    from autocompress.controller.trial import task_batches
    from autocompress.models.loading import load_tokenizer
    from autocompress.tasks.registry import task_for

    config = origin.config
    task = task_for(config)
    teacher, head = task.teacher(), task.head().for_policy(origin.policy)
    tokenizer = load_tokenizer(str(teacher.path))
    dev, _, calibration = task_batches(config, tokenizer)
    try:
        if origin.trained is not None and (origin.trained / "config.json").is_file():
            source = Source.from_float(load_shrunk(origin.trained), origin.policy, dev=dev, tokenizer_dir=teacher.path, head=head)
        else:
            source = _train_again(origin, teacher, tokenizer, dev=dev, calibration=calibration, head=head)
    except ValueError as error:  # a policy that does not fit this model (heads, widths, blocks)
        raise ConfigError(f"{origin.label}: does not apply to {config.model}: {error}") from None
    # the rebuilt model is the torch simulation: compare with the trial's own (trials made before it was recorded: the artifact's)
    recorded = origin.recorded.get("simulated_dev_score", origin.recorded.get(f"dev_{head.metric}"))
    rebuilt = source.scores[head.metric]
    if recorded is not None and abs(rebuilt - recorded) > MAX_ACCURACY_DROP:
        raise ConfigError(f"{origin.label}: the rebuilt model scores {head.metric} {rebuilt:.4f} on dev, the trial recorded {recorded:.4f}; "
                          "the cached teacher or the data changed since the search")
    return source


def _train_again(origin: Origin, teacher: Any, tokenizer: Any, *, dev: Any, calibration: Any, head: Any) -> Source:
    """Apply the origin's policy to the teacher with its seed, distilling a student on the rows its trial used."""
    from autocompress.controller.trial import distillation_setup, seeded
    from autocompress.techniques import Recovery

    config, policy = origin.config, origin.policy
    model = teacher.load()
    recovery = Recovery(distillation_setup(config, model, teacher, tokenizer, final=origin.final)) if policy.recovery_steps else None
    with seeded(origin.seed):
        return Source.build(model, policy, dev=dev, tokenizer_dir=teacher.path, calibration=calibration, recovery=recovery,
                            prepare=lambda technique: technique.for_task(config, tokenizer), head=head)
