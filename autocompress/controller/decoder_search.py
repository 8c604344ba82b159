"""A causal-lm search: weight-only bits per decoder block, every trial deployed with ONNX Runtime GenAI and timed there.

It shares the encoder search's study (signature, budget, resume, interrupted
trials and their retries), its MLflow tracker and its disk retention; a trial
differs: quantize a copy of the teacher (``techniques.decoder_bits``, RTN or
GPTQ) under a sampled ``DecoderPolicy`` → score the torch simulation on dev
(perplexity, KL to the teacher) → lower it into a GenAI folder
(``runtime.genai``) → score that folder on dev (refused when it drifts from
the simulation) and on test (reported, never read by the search) → time its
prefill and decode beside the teacher's float build and the builder's uniform
int4 build in one interleaved probe (``measurement.generation``).

Objectives: dev ``task.metric`` (minimized), decode time per token over the
teacher float build's (the same probe), and the bytes of the folder's model
files in MB. Feasible: dev perplexity at most ``max_perplexity_increase``
above the teacher's (and ``max_size_mb``).
"""

from __future__ import annotations

import copy
import logging
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from autocompress.config import ConfigError, Registration, SearchConfig, Selection
from autocompress.controller.decoder_space import (
    SENSITIVITY_ATTR,
    check_space,
    enqueue_uniform_starts,
    measure_sensitivities,
    sample_policy,
    stored_sensitivity,
)
from autocompress.controller.pareto import BASELINE_ATTR, front_trials
from autocompress.controller.retention import record_study, release_dominated, retention_callback
from autocompress.controller.study import (
    BUDGET_ATTR,
    OWNER_ATTR,
    STATE_ATTR,
    STOP_ATTR,
    UID_ATTR,
    check_resumable,
    fail_orphans,
    is_feasible,
    load_existing,
    open_study,
    planned_total,
    retry_all_interrupted,
    signature,
    study_uid,
    trial_name,
    trial_owner,
    trials_done,
)
from autocompress.credentials import masked
from autocompress.exporters.decoder_exports import export_decoder
from autocompress.models.decoders import decoder_blocks
from autocompress.models.loading import model_config
from autocompress.paths import study_work_dir, write_json
from autocompress.runtime.genai import LOWERING_TOLERANCE, build_genai, check_float_build, genai_logits, model_bytes, run_builder
from autocompress.tasks.causal_lm import CausalLanguageModeling, Windows
from autocompress.tasks.language_modeling import language_scores, perplexity, reference_log_probs, torch_logits
from autocompress.tasks.registry import task_for
from autocompress.techniques.decoder_bits import quantize_decoder
from autocompress.techniques.decoder_policy import DecoderPolicy
from autocompress.techniques.decoder_sensitivity import Sensitivity, group_weights
from autocompress.tracking.registry import MODEL_NAME_TAG, TOKENIZER_TAG, default_model_name
from autocompress.tracking.runs import METRICS_ATTR, PARAMS_ATTR, SEARCH_RUN_ATTR, TRACKING_ATTR, Tracker

log = logging.getLogger("autocompress")

MB = 1e6
REFERENCES = ("teacher fp32", "builder int4")
"""The folders every trial is timed beside: the teacher as the builder writes it in float, and the one-liner users pick."""


@dataclass
class DecoderContext:
    """What every trial of one run shares: the teacher, its dev scores, the reference folders and the probe's prompt."""

    config: SearchConfig
    task: CausalLanguageModeling
    teacher: Any
    tokenizer_folder: Path
    dev: Windows
    test: Windows
    calibration: list[Any]
    reference: list[np.ndarray]
    references: dict[str, Path]
    prompt: np.ndarray
    workdir: Path


def references_folder(workdir: Path, name: str) -> Path:
    return workdir / "references" / name.replace(" ", "-")


def prepare(config: SearchConfig, workdir: Path) -> DecoderContext:
    """Load the teacher and the splits and build the reference folders (once per study)."""
    task = task_for(config)
    assert isinstance(task, CausalLanguageModeling)
    teacher = task.teacher()
    model = teacher.load()
    dev, test = task.load_split("dev"), task.load_split("test")
    calibration = task.calibration_ids()
    reference = reference_log_probs(torch_logits(model), list(dev))
    folders = {}
    for name, precision in zip(REFERENCES, ("fp32", "int4"), strict=True):
        folder = references_folder(workdir, name)
        if not folder.is_dir():  # built under another name, then renamed: a build cut short leaves only a .partial folder
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            run_builder(teacher.path, partial, precision)
            partial.rename(folder)
        folders[name] = folder
    check_float_build(folders["teacher fp32"], model)  # every trial is lowered into this float graph (build_genai's float_build)
    prompt = task.latency_inputs(dev, None, count=1)[0]["input_ids"][0].numpy()
    return DecoderContext(config, task, model, teacher.path, dev, test, calibration, reference, folders, prompt, workdir)


def measure_baseline(context: DecoderContext) -> dict[str, Any]:
    """The teacher's and the builder int4 folder's perplexities and bytes: measured when the study is new, then stored with it."""
    dev, test, int4 = list(context.dev), list(context.test), genai_logits(context.references["builder int4"])
    return {"dev_perplexity": perplexity(torch_logits(context.teacher), dev), "test_perplexity": perplexity(torch_logits(context.teacher), test),
            "size_bytes": model_bytes(context.references["teacher fp32"]), "int4_size_bytes": model_bytes(context.references["builder int4"]),
            "int4_dev_perplexity": perplexity(int4, dev), "int4_test_perplexity": perplexity(int4, test),
            "windows": {"context": context.config.task.max_length, "stride": context.config.task.max_length, "dev": len(dev),
                        "test": len(test), "dev_tokens_scored": context.dev.tokens_scored, "test_tokens_scored": context.test.tokens_scored}}


@dataclass(frozen=True)
class DecoderPreflight:
    """What a causal-lm search checked before loading any weights; ``describe`` is ``--dry-run``'s report."""

    config: SearchConfig
    task_line: str
    signature: dict[str, Any]
    study: optuna.Study | None
    windows: dict[str, int]

    def describe(self) -> str:
        config, space = self.config, self.config.decoder
        study = f"{config.search.study_name!r} in {masked(config.search.storage)}: " + (
            "new" if self.study is None else f"{len(self.study.get_trials(deepcopy=False))} trials")
        blocks = "per block" if space.per_block else "one for all blocks"
        if space.average_bits:
            blocks = (f"per block, allocated by measured KL under average bits {space.average_bits} (one per trial; the KL of each "
                      f"group quantized alone measured once per study on {space.sensitivity_windows} dev windows)")
        return "\n".join([
            f"config: {config.source} (valid)",
            self.task_line,
            f"data: {self.windows['dev']} dev windows, {self.windows['train']} GPTQ calibration windows, {self.windows['test']} test "
            f"windows (report only), {config.task.max_length} tokens each",
            f"space: attention bits {space.attention_bits} and MLP bits {space.mlp_bits} {blocks}; lm_head bits {space.head_bits}, "
            f"group sizes {space.group_sizes}, methods {space.methods} per trial",
            "teacher: the model as it is, not fine-tuned",
            f"study: {study}; {config.search.n_trials or 'no'} trials this run",
            f"each trial: quantize, build an ONNX Runtime GenAI folder, score it on dev and test, time prefill of "
            f"{space.prompt_tokens} tokens and decode of {space.new_tokens} beside the teacher fp32 and builder int4 folders "
            f"in {config.latency.rounds} rounds",
        ])


def decoder_preflight(config: SearchConfig) -> DecoderPreflight:
    """Every check a causal-lm search can make without loading weights; a one-line ``ConfigError`` on the first failure."""
    task = task_for(config)
    shape = model_config(config)
    task_line = task.check(shape)
    check_space(config, shape)
    windows = {split: len(task.load_split(split)) for split in ("dev", "train", "test")}
    wanted = {"dev": config.task.dev_subset, "train": config.decoder.calibration_windows if "gptq" in config.decoder.methods else 0}
    for split, count in wanted.items():
        if count and windows[split] < count:
            raise ConfigError(f"{config.source}: field 'task.dev': {config.task.dev} holds {windows['dev'] + windows['train']} windows of "
                              f"{config.task.max_length} tokens; task.dev_subset ({config.task.dev_subset}) and "
                              f"decoder.calibration_windows ({config.decoder.calibration_windows}) need more")
    expected = signature(config, task.locate_teacher().key) | {"decoder": config.decoder.model_dump(mode="json")}
    study = load_existing(config)
    if study is not None:
        check_resumable(study, config, expected)
    return DecoderPreflight(config, task_line, expected, study, windows)


def run_trial(trial: optuna.Trial, context: DecoderContext, baseline: dict[str, Any],
              sensitivity: dict[int, Sensitivity] | None = None) -> tuple[float, float, float]:
    trial.set_user_attr(OWNER_ATTR, trial_owner())  # first: a process killed while sampling leaves a trial resume can fail
    config = context.config
    policy = sample_policy(trial, config, len(decoder_blocks(context.teacher)), sensitivity, group_weights(context.teacher.config))
    trial.set_user_attr("policy", policy.to_dict())
    trial.set_user_attr(PARAMS_ATTR, policy.params())
    student = copy.deepcopy(context.teacher)
    codes = quantize_decoder(student, policy.plan, method=policy.method, calibration=context.calibration)
    dev = list(context.dev)
    simulated = language_scores(torch_logits(student), context.reference, dev)
    folder = context.workdir / trial_name(trial.number)
    shutil.rmtree(folder, ignore_errors=True)
    build_genai(student, context.tokenizer_folder, codes, folder, float_build=context.references["teacher fp32"])
    average_bits = policy.average_bits(student)
    del student
    lowered = genai_logits(folder)  # one ONNX Runtime session for dev and test
    deployed = language_scores(lowered, context.reference, dev)
    drift = context.task.head().mismatch(simulated, deployed, 0.0, rounds_activations=True, max_drop=LOWERING_TOLERANCE)
    if drift:
        raise RuntimeError(f"trial {trial.number}: the GenAI folder's {drift} (the torch simulation); not deployed")
    test = perplexity(lowered, list(context.test))
    del lowered
    from autocompress.measurement.generation import generation_speed  # onnxruntime_genai: imported by the trials that time

    speeds = generation_speed({"trial": folder, **context.references}, context.prompt, new_tokens=config.decoder.new_tokens,
                              rounds=config.latency.rounds)
    mine, teacher, int4 = speeds["trial"], speeds["teacher fp32"], speeds["builder int4"]
    size = model_bytes(folder)
    metrics = {
        "dev_perplexity": deployed["perplexity"], "dev_kl_to_teacher": deployed["kl_to_teacher"], "test_perplexity": test,
        "simulated_dev_perplexity": simulated["perplexity"], "perplexity_increase": deployed["perplexity"] / baseline["dev_perplexity"] - 1,
        "test_perplexity_increase": test / baseline["test_perplexity"] - 1,
        "decode_tokens_per_s": mine.decode_tokens_per_s, "prefill_ms": mine.prefill_ms,
        "decode_speedup": mine.decode_tokens_per_s / teacher.decode_tokens_per_s,
        "decode_vs_builder_int4": mine.decode_tokens_per_s / int4.decode_tokens_per_s,
        "prefill_speedup": teacher.prefill_ms / mine.prefill_ms,
        "size_mb": size / MB, "compression": baseline["size_bytes"] / size, "bytes_vs_builder_int4": size / baseline["int4_size_bytes"],
        "average_bits": average_bits,
    }
    trial.set_user_attr(METRICS_ATTR, metrics)
    trial.set_user_attr("artifact", str(folder / "model.onnx"))
    limits = config.search.constraints
    if limits.max_perplexity_increase is not None:
        trial.set_constraint("perplexity_increase", metrics["perplexity_increase"] - limits.max_perplexity_increase)
    if limits.max_size_mb is not None:
        trial.set_constraint("size_mb", metrics["size_mb"] - limits.max_size_mb)
    log.info("trial %d complete: dev %s %.4g, decode %.2fx the teacher, %.1f MB", trial.number, config.task.metric,
             metrics[f"dev_{config.task.metric}"], metrics["decode_speedup"], metrics["size_mb"])
    return metrics[f"dev_{config.task.metric}"], 1 / metrics["decode_speedup"], metrics["size_mb"]


def trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A completed trial as a table row: its metrics, policy and GenAI folder."""
    return {"trial": trial.number, "feasible": is_feasible(trial), **trial.user_attrs[METRICS_ATTR], "policy": trial.user_attrs["policy"],
            "folder": str(Path(trial.user_attrs["artifact"]).parent)}


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The front's trials as table rows, the fastest decode first."""
    return sorted((trial_row(trial) for trial in front_trials(study)), key=lambda r: -r["decode_speedup"])


def select(rows: list[dict[str, Any]], rule: Selection, metric: str) -> dict[str, Any] | None:
    """The chosen feasible front trial: the fastest decode, the smallest folder, or the best dev metric."""
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        return None
    dev = f"dev_{metric}"
    if rule is Selection.MOST_ACCURATE:
        return min(feasible, key=lambda r: (r[dev], -r["decode_speedup"]))
    if rule is Selection.FASTEST:
        return max(feasible, key=lambda r: (r["decode_speedup"], -r[dev]))
    return min(feasible, key=lambda r: (r["size_mb"], r[dev]))


def format_table(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    lines = [f"teacher: dev ppl {baseline['dev_perplexity']:.3f}, test ppl {baseline['test_perplexity']:.3f}, "
             f"{baseline['size_bytes'] / MB:.1f} MB; builder int4: test ppl {baseline['int4_test_perplexity']:.3f}, "
             f"{baseline['int4_size_bytes'] / MB:.1f} MB",
             f"{'trial':>5} {'ok':>5} {'dev ppl':>8} {'test ppl':>8} {'bits':>5} {'decode':>7} {'vs int4':>7} {'MB':>7} chosen"]
    for row in rows:
        lines.append(f"{row['trial']:>5} {row['feasible']!s:>5} {row['dev_perplexity']:8.3f} {row['test_perplexity']:8.3f} "
                     f"{row['average_bits']:5.2f} {row['decode_speedup']:6.2f}x {row['decode_vs_builder_int4']:6.2f}x "
                     f"{row['size_mb']:7.1f} {'*' if row.get('chosen') else ''}")
    return "\n".join(lines)


def finish(study: optuna.Study, config: SearchConfig, tracker: Tracker, context: DecoderContext) -> tuple[list[dict[str, Any]], dict | None]:
    """Write ``pareto.json``, and for the chosen trial ``best_policy.json``, ``best_model/`` (its GenAI folder, which
    ``onnxruntime_genai.Model`` loads) and its exports (``tracking.export_formats``, each reloaded and checked); tag the
    front in MLflow and register the chosen folder."""
    output = Path(config.output)
    rows = front_rows(study) if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) else []
    if config.tracking.keep_artifacts == "front" and UID_ATTR in study.user_attrs:
        release_dominated(study, study_work_dir(study_uid(study)))
    chosen = select(rows, config.search.selection, config.task.metric)
    rows = [{**row, "chosen": chosen is not None and row["trial"] == chosen["trial"]} for row in rows]
    write_json(output / "pareto.json", rows)
    best_policy, best_model = output / "best_policy.json", output / "best_model"
    best_policy.unlink(missing_ok=True)
    shutil.rmtree(best_model, ignore_errors=True)
    if chosen is not None:
        policy = DecoderPolicy.from_dict(chosen["policy"])
        policy.save(best_policy)
        shutil.copytree(chosen["folder"], best_model)
        policy.save(best_model / "policy.json")
    print(format_table(rows, study.user_attrs[BASELINE_ATTR]))
    tracker.log_front({row["trial"] for row in rows}, rows, [])
    if chosen is not None:
        print(f"chosen: trial {chosen['trial']}, written to {best_model} (an ONNX Runtime GenAI folder) and {best_policy}")
        register = config.tracking.registry
        numbers = [] if register is Registration.NONE else [chosen["trial"]]
        if register is Registration.FRONT:
            numbers = [row["trial"] for row in rows if row["feasible"]]
        folders = {row["trial"]: best_model if row["chosen"] else Path(row["folder"]) for row in rows}
        name = config.tracking.registered_model or default_model_name(study.study_name)
        for registered in tracker.register_genai(numbers, folders, champion=chosen["trial"], name=name):
            print(f"registered {registered.uri} (version {registered.version})")
        if config.tracking.export_formats and study.user_attrs.get(STATE_ATTR) != "interrupted":
            for report in export_decoder(policy, config.tracking.export_formats, output / "exports", teacher=context.teacher,
                                         tokenizer_folder=context.tokenizer_folder, calibration=context.calibration,
                                         dev=list(context.dev), model=config.model, recorded=chosen, folder=Path(chosen["folder"]),
                                         label=f"trial {chosen['trial']}"):
                print(report.line())
    else:
        print(f"\nno trial met the constraints {config.search.constraints.model_dump(exclude_none=True)}: nothing chosen")
    print(tracker.where())
    return rows, chosen


def run_decoder_search(config: SearchConfig, *, added: int | None = None, total: int | None = None) -> tuple[list[dict[str, Any]], dict | None]:
    """Run or resume a causal-lm search until its study holds its budget of finished trials; its front and chosen row."""
    study = open_study(config, decoder_preflight(config).signature)
    orphans, retried = fail_orphans(study), retry_all_interrupted(study)
    if orphans or retried:
        log.warning("trials %s were interrupted (their process is gone); retrying %s", orphans or retried, retried)
    budget = planned_total(study, config, added=added, total=total)
    remaining = None if budget is None else max(0, budget - trials_done(study.get_trials(deepcopy=False)))
    for key, value in ((BUDGET_ATTR, budget), (STOP_ATTR, False), (STATE_ATTR, "running")):
        study.set_user_attr(key, value)
    workdir = study_work_dir(study_uid(study))
    record_study(workdir, study, config)
    log.info("preparing the teacher, its dev scores and the reference GenAI folders")
    context = prepare(config, workdir)
    if BASELINE_ATTR not in study.user_attrs:
        study.set_user_attr(BASELINE_ATTR, measure_baseline(context))
    baseline = study.user_attrs[BASELINE_ATTR]
    sensitivity = None
    if config.decoder.average_bits:
        if SENSITIVITY_ATTR not in study.user_attrs:
            study.set_user_attr(SENSITIVITY_ATTR, measure_sensitivities(config, context.teacher, context.dev, context.reference))
        sensitivity = {size: stored_sensitivity(study, size) for size in config.decoder.group_sizes}
    study.set_user_attr(TRACKING_ATTR, {"uri": config.tracking.uri, "experiment": config.tracking.experiment})
    study.set_user_attr(SEARCH_RUN_ATTR, {
        "params": {"model": config.model, "task": "causal-lm", "teacher_key": context.task.locate_teacher().key,
                   "sampler": config.search.sampler.value, "storage": masked(config.search.storage)},
        "metrics": {f"teacher_{k}": float(v) for k, v in baseline.items() if isinstance(v, (int, float))},
        "tags": {"python": sys.version.split()[0], "platform": platform.platform(), TOKENIZER_TAG: str(context.tokenizer_folder),
                 MODEL_NAME_TAG: config.tracking.registered_model or default_model_name(study.study_name)},
        "config": {**config.model_dump(mode="json"), "search": {**config.search.model_dump(mode="json"), "storage": masked(config.search.storage)},
                   "tracking": {**config.tracking.model_dump(mode="json"), "uri": masked(config.tracking.uri) if config.tracking.uri else None}},
    })
    tracker = Tracker(study=study, experiment=config.tracking.experiment, tracking_uri=config.tracking.uri)
    tracker.sync()
    enqueue_uniform_starts(study, config, len(decoder_blocks(context.teacher)))
    state = "failed"
    try:
        if remaining != 0:
            retention = [retention_callback(workdir)] if config.tracking.keep_artifacts == "front" else []
            study.optimize(lambda trial: run_trial(trial, context, baseline, sensitivity), n_trials=remaining, timeout=config.search.timeout,
                           gc_after_trial=True, catch=(Exception,), callbacks=[tracker.callback, *retention])
        state = "finished"
    except KeyboardInterrupt:
        state = "interrupted"
        raise
    finally:
        study.set_user_attr(STATE_ATTR, state)
        tracker.sync()
        result = finish(study, config, tracker, context)
        tracker.finish()
    return result
