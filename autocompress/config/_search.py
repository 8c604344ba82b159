"""The ``recovery``, ``search``, ``execution``, ``latency`` and ``tracking`` sections: how the search runs and is measured."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from autocompress.config._base import Strict


class PrunerName(StrEnum):
    SUCCESSIVE_HALVING = "successive_halving"
    HYPERBAND = "hyperband"
    MEDIAN = "median"
    NONE = "none"


class RecoveryConfig(Strict):
    """Knowledge distillation from the teacher after pruning, before quantization (fake-quantized)."""

    temperature: float = Field(2.0, gt=0, description="softmax temperature T of the KD term (scaled by T²); higher: softer teacher targets")
    alpha: float = Field(
        0.5, ge=0, le=1, description="weight of the soft-label KD term; the cross-entropy on true labels gets 1 - alpha"
    )
    hidden_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the hidden-state MSE between mapped student and teacher blocks (MiniLM/TinyBERT style); "
        "0: off; > 0 runs the teacher at every step (slower)",
    )
    attention_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the KL between mapped blocks' head-averaged attention distributions; 0: off; "
        "> 0 runs the teacher at every step, with eager attention (slower)",
    )
    learning_rate: float = Field(
        5e-5, gt=0, description="peak AdamW learning rate of recovery (warm-up over the first 10 % of steps, then linear decay to 0)"
    )
    batch_size: int = Field(32, ge=1, description="training rows per recovery step")
    train_subset: int | None = Field(
        4096,
        ge=1,
        description="training rows (drawn with search.seed) cycled through by distillation; the teacher's logits on them are computed "
        "once and cached; null: the whole train split",
    )
    eval_every: int = Field(
        50,
        ge=1,
        description="recovery steps between intermediate dev-accuracy checks reported to the pruner (also its minimum resource); "
        "smaller: earlier pruning, more scoring time",
    )
    eval_subset: int = Field(
        256,
        ge=1,
        description="dev rows (the first N) scored at each intermediate check; the trial's final accuracy uses the full dev split (see task.dev_subset)",
    )
    pruner: PrunerName = Field(
        PrunerName.SUCCESSIVE_HALVING,
        description="Optuna pruner that stops hopeless recoveries from their intermediate accuracy, comparing students of equal depth; "
        "none: every trial runs all its steps",
    )


class SamplerName(StrEnum):
    NSGA2 = "nsga2"
    TPE = "tpe"
    RANDOM = "random"


class Selection(StrEnum):
    FASTEST = "fastest_within_budget"
    SMALLEST = "smallest_within_budget"
    MOST_ACCURATE = "most_accurate"


class ConstraintsConfig(Strict):
    """Limits a trial must meet to be feasible; the Pareto front keeps feasible trials only (all trials if none is)."""

    max_accuracy_drop: float | None = Field(
        0.01,
        ge=0,
        description="largest accepted drop in task.metric (accuracy by default, else f1 or macro_f1; the name stays for "
        "compatibility) on the dev split versus the teacher, as a fraction (0.01 = 1 point, e.g. 0.91 -> 0.90); "
        "also the budget of the *_within_budget selections; null: no limit",
    )
    max_perplexity_increase: float | None = Field(
        0.05,
        ge=0,
        description="a causal-lm search's limit: largest accepted rise of dev perplexity over the teacher's, relative "
        "(0.05 = +5 %, e.g. 20.0 -> 21.0), whichever task.metric it minimizes; also the budget of the *_within_budget "
        "selections; null: no limit",
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        description="largest accepted latency in ms: the candidate's own median batch-1 latency, measured in its paired probe "
        "(timed interleaved with the teacher); the cost model may skip candidates confidently above it; null: no limit",
    )
    max_size_mb: float | None = Field(
        None,
        gt=0,
        description="largest accepted size in MB (10^6 bytes) of the deployed ONNX file (with any external data); null: no limit",
    )


class FinalTrainingConfig(Strict):
    """After the search, its best students distilled again on a longer budget: search on a short proxy, train the winners long."""

    top_k: int = Field(
        0,
        ge=0,
        description="front students (policies with recovery_steps > 0) picked in turn by search.selection, each distilled "
        "again for recovery_steps and measured as a new trial of the study; where fewer are feasible, students short only of "
        "max_accuracy_drop after their proxy budget fill in, most accurate first; 0: off",
    )
    recovery_steps: int = Field(4000, ge=1, description="distillation steps of each final training (the search's trials use space.recovery_steps)")
    train_subset: int | None = Field(
        None, ge=1, description="training rows the final distillation cycles through (teacher logits computed once, cached); null: the whole train split"
    )
    hidden_weight: float | None = Field(
        None,
        ge=0,
        description="recovery.hidden_weight for the final trainings only: intermediate-layer targets run the teacher at every step, "
        "which a few long trainings afford better than every proxy trial; null: recovery.hidden_weight",
    )
    attention_weight: float | None = Field(
        None, ge=0, description="recovery.attention_weight for the final trainings only; null: recovery.attention_weight"
    )

    def recovery(self, recovery: RecoveryConfig) -> RecoveryConfig:
        """The distillation settings of a final training: ``recovery`` with this stage's loss weights where set."""
        weights = {"hidden_weight": self.hidden_weight, "attention_weight": self.attention_weight}
        return recovery.model_copy(update={name: value for name, value in weights.items() if value is not None})


class SearchSettings(Strict):
    """The Optuna study: sampler, budget, storage, constraints and how the final policy is chosen."""

    sampler: SamplerName = Field(
        SamplerName.NSGA2,
        description="Optuna sampler: nsga2 (multi-objective genetic, see population_size), tpe (multivariate TPE) or random",
    )
    n_trials: int | None = Field(
        12,
        ge=1,
        description="the study's total budget of finished trials: a re-run or `autocompress resume` completes it (interrupted trials "
        "are retried, not counted); --n-trials N instead adds N to what is done; null: until timeout, stop or Ctrl-C",
    )
    timeout: float | None = Field(
        None, gt=0, description="seconds after which no new trial starts (the running one finishes); --timeout overrides; null: no time limit"
    )
    study_name: str = Field(
        "autocompress",
        description="Optuna study name; the same name and storage resume the study and add trials; "
        "fidelity companions are <study_name>.fidelity.blocks<N>",
    )
    storage: str = Field(
        "sqlite:///autocompress.db",
        description="Optuna storage URL holding the study (a relative sqlite path is relative to the working folder); "
        "env:NAME reads it from environment variable NAME and file:PATH from the first line of a file only its owner may read, "
        "so no copy of a password is kept (argv, job records, logs); $AUTOCOMPRESS_STORAGE overrides it, --storage overrides both",
    )
    seed: int = Field(0, description="seed of the sampler, of torch and of the calibration and distillation samples")
    population_size: int = Field(
        8, ge=2, description="NSGA-II generation size, in trials (nsga2 only); smaller: evolution starts sooner in a short search"
    )
    start_uniform: bool = Field(
        True,
        description="a new study first tries every block at each quantized bit width of the space (unpruned), one trial per width; false: sampler only",
    )
    constraints: ConstraintsConfig = Field(ConstraintsConfig(), description="feasibility limits on accuracy drop, latency and size")
    selection: Selection = Field(
        Selection.FASTEST,
        description="rule choosing best_policy.json from the Pareto front: the fastest or smallest trial within max_accuracy_drop "
        "(the best on task.metric if none is), or the best on task.metric (most_accurate)",
    )
    final_training: FinalTrainingConfig = Field(
        FinalTrainingConfig(), description="the front's best students distilled again, longer, after the search (the usual NAS split)"
    )


class ExecutionConfig(Strict):
    """Where trials run: in this process, or on Ray workers (a local Ray, or a cluster by address)."""

    workers: int = Field(
        1, ge=1, description="trials run at once; 1 runs them in this process, more run each on its own Ray actor; --workers overrides"
    )
    threads_per_worker: int | None = Field(
        None,
        ge=1,
        description="threads of each worker for compression, recovery, verification and scoring (latency is timed with "
        "latency.threads); null: the machine's cores / workers",
    )
    ray_address: str | None = Field(
        None,
        description="an existing Ray cluster (auto, host:6379 or ray://host:10001) to run the workers on, even with workers: 1; "
        "--ray-address overrides; null: a local Ray started for the search when workers > 1",
    )
    heartbeat_seconds: int = Field(
        30,
        ge=1,
        description="Optuna heartbeat of running trials (RDB storages); a trial silent for 3 beats is failed and retried once",
    )


class LatencyConfig(Strict):
    """Latency of the deployed artifact on real dev texts: one text per call (batch 1), or ``batch_size`` texts per call."""

    backend: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime",
        description="onnxruntime: time the lowered ONNX artifact on ONNX Runtime's CPU kernels (what ships); "
        "torch: eager torch on CPU, needed by space.simulation_only",
    )
    threads: int = Field(
        2,
        ge=1,
        description="intra-op CPU threads for timing and ONNX verification; match the deployment target; "
        "part of the hardware fingerprint keying the latency cost model",
    )
    sentences: int = Field(
        32, ge=1, description="distinct calls timed: real dev sentences at evenly spaced length quantiles, one per call "
        "(batch_size of them per call; capped at the dev size)"
    )
    batch_size: int = Field(
        1,
        ge=1,
        description="texts per timed call: 1 is the latency of one request; 32 is what indexing a corpus sees (its "
        "throughput in texts/s is batch_size x 1000 / ms); a call's texts are of like length and padded together, as an "
        "indexer batches sorted texts; the objective and every speed-up are at this batch size",
    )
    warmup: int = Field(10, ge=0, description="untimed calls per model before timing")
    repeats: int = Field(
        100,
        ge=2,
        description="timed calls per model, cycling through the sentences; the latency is their median; "
        "more: a tighter confidence interval, slower trials",
    )
    rounds: int = Field(
        10,
        ge=1,
        description="rounds in a paired probe: the candidate, the teacher and ORT's dynamic int8 take turns "
        "(repeats // rounds calls each per round, order rotating), so a noisy minute slows all of them alike; "
        "speed-ups are the median over rounds of per-round ratios",
    )

    @model_validator(mode="after")
    def _a_call_per_round(self) -> "LatencyConfig":
        if self.repeats < self.rounds:
            raise ValueError(f"repeats ({self.repeats}) must be >= rounds ({self.rounds}): each round times every model at least once")
        return self


class Registration(StrEnum):
    CHOSEN = "chosen"
    FRONT = "front"
    NONE = "none"


ExportFormat = Literal["onnx", "hf", "ort-recipe", "torchao", "llm-compressor", "gguf"]
DECODER_EXPORTS = ("onnx", "hf", "gguf", "llm-compressor")
"""What a causal-lm search exports (``exporters.decoder_exports``); an encoder search exports all but gguf."""


class TrackingConfig(Strict):
    """MLflow: a parent run per study, a nested child run per trial."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI (env:NAME and file:PATH as for search.storage); --tracking-uri overrides; "
        "null: $MLFLOW_TRACKING_URI, else MLflow's local default (sqlite:///mlflow.db in the working folder); "
        "a server's basic-auth user comes from $MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD",
    )
    experiment: str = Field("autocompress", description="MLflow experiment the runs are logged under (created if missing)")
    registry: Registration = Field(
        Registration.CHOSEN,
        description="models registered when the search ends: chosen (the chosen trial, alias champion), front (every front "
        "trial, the chosen one aliased champion) or none; --register overrides",
    )
    registered_model: str | None = Field(None, description="registered model name; null: autocompress-<study name>")
    keep_artifacts: Literal["front", "all"] = Field(
        "front",
        description="front: a finished trial's local files (ONNX, distilled weights) are deleted once it is off the Pareto front, "
        "which it never re-enters; the front's, the references and the outputs stay; all: keep every trial's files",
    )
    export_formats: list[ExportFormat] = Field(
        ["onnx", "hf"],
        description="formats the chosen trial is exported to when the search ends (OUTPUT/exports/FORMAT, and the exports/ "
        "artifacts of its MLflow run); [] for none. A causal-lm search exports onnx (its ONNX Runtime GenAI folder), hf "
        "and gguf (4-bit groups of 32 as Q4_1, from a GGUF model), not logged to MLflow (the registered model holds the folder)",
    )
