"""Search configuration: a YAML file validated into typed, strict models.

Every model forbids unknown fields, so a misspelt key fails at load time with
the file, the field's path and what is allowed, as one line (``ConfigError``).
A field renamed since an earlier release (``RENAMED_FIELDS``) still loads,
with a one-line warning naming the new name.
Relative data paths resolve against the data root: ``$AUTOCOMPRESS_DATA_ROOT``
if set, else ``task.data_root`` (relative to the config file).
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autocompress.deprecation import rename_deprecated

DATA_ROOT_ENV = "AUTOCOMPRESS_DATA_ROOT"
RENAMED_FIELDS = {
    "task.validation": "test",
    "task.validation_subset": "test_subset",
    "task.hf_validation_split": "hf_test_split",
}
"""Old dotted field path -> its name now (same section): the test split was called validation before dev was split off."""
DEPLOYABLE_BITS = (2, 4, 8, 16, 32)
MetricName = Literal["accuracy", "f1", "macro_f1"]
"""The task metrics a search can optimize (``autocompress.tasks.metrics`` computes them)."""


class ConfigError(ValueError):
    """A configuration file is missing, malformed or invalid; the message is one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(Strict):
    """A text-classification task and its three splits: train, dev (search decisions) and test (the final report).

    The teacher and distillation train on ``train``; every search decision
    (objective, constraints, pruner) reads ``dev``; ``test`` is only scored for
    the report, never read by the search. Without a ``dev`` file (or
    ``hf_dev_split``), ``dev_size`` rows are carved from the training file,
    stratified by label and seeded, and held out from teacher training and
    distillation.
    """

    data_root: str | None = Field(
        None,
        description="folder the relative train/dev/test paths resolve against; a relative value is relative to the config file; "
        "$AUTOCOMPRESS_DATA_ROOT overrides it; null: the config file's folder",
    )
    train: str | None = Field(
        "sst2/train.tsv",
        description="training file under data_root: .tsv or .csv (a header row, or none with task.columns), .jsonl, "
        ".json (JSON lines or one array of objects) or .parquet; the teacher and distillation train on it, "
        "minus the dev rows carved from it when dev is null; its labels define the task's labels unless task.labels is set; "
        "null only with hf_dataset",
    )
    dev: str | None = Field(
        None,
        description="dev file: every search decision (objective task.metric, constraints, pruner, selection) reads it; "
        "null: carve dev_size rows from train, stratified by label and seeded by split_seed, held out of all training",
    )
    test: str | None = Field(
        "sst2/validation.tsv",
        description="untouched test file, scored only for the final report and never read by the search "
        "(SST-2's public validation set, as its test labels are hidden); null only with hf_dataset",
    )
    dev_size: int = Field(
        1000,
        ge=2,
        description="rows carved from train as the dev split when dev (or hf_dev_split) is null, else ignored; "
        "more rows: less noisy search decisions, fewer training rows; must be below the training rows",
    )
    split_seed: int = Field(
        0,
        description="seed of the stratified dev carve-out; changing it changes the dev rows, the training rows and so the teacher's cache key",
    )
    hf_dataset: str | None = Field(
        None,
        description="Hugging Face dataset id (datasets.load_dataset) read instead of the train/dev/test files; a ClassLabel "
        "label feature gives the label names; null: read the files",
    )
    hf_config: str | None = Field(None, description="configuration name of hf_dataset (e.g. sst2 of glue); null: the dataset's default")
    hf_train_split: str = Field("train", description="split of hf_dataset used as train (with hf_dataset only)")
    hf_dev_split: str | None = Field(
        None, description="split of hf_dataset used as dev; null: carve dev_size rows from hf_train_split, as for files"
    )
    hf_test_split: str = Field("validation", description="split of hf_dataset used as the test split of the final report (with hf_dataset only)")
    text_column: str = Field("sentence", description="column (file header, task.columns entry or dataset feature) holding the text")
    text_pair_column: str | None = Field(
        None,
        description="column holding the second text of a sentence-pair task (premise/hypothesis, question/sentence: GLUE MRPC, "
        "QNLI, MNLI style); both texts are tokenized together as one input; null: one text per row",
    )
    label_column: str = Field(
        "label",
        description="column holding the label: integers 0 .. N-1 (kept as the class ids) or words (World, entailment; "
        "mapped to ids in the order of task.labels, else sorted by name)",
    )
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="the label names in class-id order, written to the exported models' id2label; words in the data must be "
        "among them, integers are their ids; null: the train split's words sorted by name, or for integer labels "
        "the Hugging Face ClassLabel names, else 0, 1, ...",
    )
    num_labels: int | None = Field(
        None,
        ge=2,
        description="number of classes: the size of the classification head; null: inferred from task.labels or the train "
        "split's labels (integers: the largest + 1, without gaps); when given it must agree with them",
    )
    columns: list[str] | None = Field(
        None,
        min_length=1,
        description="names of the columns of a headerless .tsv/.csv file, by position (the file then has no header row "
        "and every line must have this many fields); null: the first line is the header",
    )
    metric: MetricName = Field(
        "accuracy",
        description="the dev metric the search maximizes, constrains (search.constraints.max_accuracy_drop) and selects with: "
        "accuracy; f1, the F1 of label 1 (binary tasks only); or macro_f1, the unweighted mean of every class's F1; "
        "all of accuracy, the task's F1 (f1 for 2 labels, else macro_f1) and this one are recorded on dev and test",
    )
    max_length: int = Field(
        64,
        ge=8,
        le=512,
        description="tokens per sentence after truncation, for training, scoring and latency timing; raise it for long texts (slower)",
    )
    train_subset: int | None = Field(
        None,
        ge=1,
        description="rows of the train split drawn (seeded, without replacement) for the teacher and distillation, "
        "e.g. for a quick trial run; null: all rows",
    )
    dev_subset: int | None = Field(
        None,
        ge=1,
        description="score only the first N dev rows (a carved dev split is shuffled, so a random sample); "
        "faster trials, noisier decisions; null: all rows",
    )
    test_subset: int | None = Field(None, ge=1, description="score only the first N test rows in the final report; null: all rows")

    @model_validator(mode="after")
    def _labels_agree(self) -> "TaskConfig":
        if self.labels is not None:
            repeated = sorted({name for name in self.labels if self.labels.count(name) > 1})
            if repeated:
                raise ValueError(f"task.labels names each class once; repeated: {repeated}")
            if self.num_labels is not None and self.num_labels != len(self.labels):
                raise ValueError(f"task.num_labels ({self.num_labels}) disagrees with the {len(self.labels)} names of task.labels")
        if self.columns is not None:
            if self.hf_dataset:
                raise ValueError("task.columns names the columns of headerless .tsv/.csv files; a Hugging Face dataset names its own")
            needed = [self.text_column, self.label_column, *([self.text_pair_column] if self.text_pair_column else [])]
            missing = [name for name in needed if name not in self.columns]
            if missing or len(set(self.columns)) != len(self.columns):
                problem = f"lacks {missing}" if missing else "repeats a name"
                raise ValueError(f"task.columns {self.columns} {problem}; it must name text_column, label_column (and text_pair_column) once each")
        return self


class TeacherConfig(Strict):
    """How the uncompressed reference is obtained: a fine-tuned checkpoint, or fine-tuning."""

    checkpoint: str | None = Field(
        None,
        description="already fine-tuned classifier (local folder or hub id) used as the teacher, the recipe below ignored; "
        "null: fine-tune `model` with this recipe, cached by a hash of model files, training data and recipe",
    )
    steps: int = Field(
        1000, ge=1, description="AdamW optimizer steps of teacher fine-tuning over the shuffled train split; more: a better teacher, a longer first run"
    )
    batch_size: int = Field(32, ge=1, description="training rows per teacher step")
    learning_rate: float = Field(
        5e-5, gt=0, description="peak AdamW learning rate, reached after warm-up, then decayed linearly to 0 at the last step"
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="fraction of steps spent in linear learning-rate warm-up (0.06 = the first 6 %)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW (decoupled) weight decay of teacher fine-tuning")
    seed: int = Field(0, description="seed of the batch order and of torch (the new classification head); part of the teacher's cache key")


class PruneMode(StrEnum):
    NONE = "none"
    LOCAL = "local"
    GLOBAL = "global"


class SpaceConfig(Strict):
    """Choices the sampler may make, per encoder block unless noted."""

    weight_bits: list[Literal[2, 3, 4, 5, 6, 7, 8, 16, 32]] = Field(
        default_factory=lambda: [4, 8, 32],
        min_length=1,
        description="weight bit widths offered for each block's Linear layers; 32: float (unquantized), 16: float16; "
        "without simulation_only only 2, 4, 8, 16, 32 (ONNX Runtime CPU kernels)",
    )
    quant_scheme: list[Literal["linear", "kmeans"]] = Field(
        default_factory=lambda: ["linear"],
        min_length=1,
        description="quantization schemes offered, one per trial: linear (symmetric uniform grid, deployable) "
        "or kmeans (per-layer codebook, simulation_only)",
    )
    group_size: list[int | None] = Field(
        default_factory=lambda: [None],
        min_length=1,
        description="quantization group sizes offered, one per trial, in weight columns per scale (positive); "
        "null: one scale per output channel; smaller groups: more accurate at low bits, a larger file",
    )
    prune_mode: PruneMode = Field(
        PruneMode.LOCAL,
        description="magnitude pruning: none; local (a ratio from prune_ratios per block); global (one ratio, "
        "weights ranked across all layers); classifier and pooler are never pruned",
    )
    prune_ratios: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5],
        min_length=1,
        description="fractions of weights zeroed by magnitude, each in [0, 1) (0.5 = half); the shipped file stores "
        "zeros densely, so this buys sparsity, not size",
    )
    embedding_bits: list[Literal[4, 8, 32]] = Field(
        default_factory=lambda: [32],
        min_length=1,
        description="word-embedding precisions offered, one per trial: 32 float; 4 or 8: integer codes with one scale per token row",
    )
    heads: list[int] | None = Field(
        None,
        min_length=1,
        description="attention-head counts offered per block (the least important heads, by Taylor score, removed); null: keep all heads",
    )
    ffn_widths: list[int] | None = Field(
        None,
        min_length=1,
        description="FFN widths (intermediate neurons kept) offered per block, the least important removed; null: full width",
    )
    num_blocks: list[int] | None = Field(
        None,
        min_length=1,
        description="encoder-block counts offered, one per trial, kept evenly spaced (the last always kept); null: all blocks",
    )
    recovery_steps: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="KD fine-tune steps offered, one per trial, after pruning (see recovery); 0: no recovery; "
        "any value > 0 turns on distillation and the multi-fidelity pruner",
    )
    vocab_rows: list[int | None] = Field(
        default_factory=lambda: [None],
        min_length=1,
        description="word-embedding rows kept, one choice per trial: the special tokens and the tokens the task's "
        "training text uses most; every other token id reads its nearest kept row; null: keep the whole vocabulary",
    )
    simulation_only: bool = Field(
        False,
        description="allow choices no CPU runtime executes (3/5/6/7 bits, kmeans); needs latency.backend: torch, "
        "so trials measure the torch simulation, not a shipped file",
    )

    @model_validator(mode="after")
    def _ratios_in_range(self) -> "SpaceConfig":
        bad = [r for r in self.prune_ratios if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"prune_ratios must lie in [0, 1), got {bad}")
        bad_groups = [g for g in self.group_size if g is not None and g < 1]
        if bad_groups:
            raise ValueError(f"group_size must hold positive column counts or null (per output channel), got {bad_groups}")
        if not self.simulation_only:
            blocked = [b for b in self.weight_bits if b not in DEPLOYABLE_BITS] + [s for s in self.quant_scheme if s != "linear"]
            if blocked:
                raise ValueError(
                    f"{blocked} cannot run on ONNX Runtime's CPU kernels; deployable weight_bits: "
                    f"{list(DEPLOYABLE_BITS)} with quant_scheme [linear], or set space.simulation_only: true"
                )
        if any(steps < 0 for steps in self.recovery_steps):
            raise ValueError(f"recovery_steps must be >= 0, got {self.recovery_steps}")
        for name in ("heads", "ffn_widths", "num_blocks"):
            negative = [v for v in getattr(self, name) or [] if v < (1 if name == "num_blocks" else 0)]
            if negative:
                raise ValueError(f"{name} must hold non-negative counts (num_blocks >= 1), got {negative}")
        return self


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
        description="Optuna storage URL holding the study (a relative sqlite path is relative to the working folder)",
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
    """Batch-1 latency of the deployed artifact on real validation sentences."""

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
        32, ge=1, description="real dev sentences timed, one per call, at evenly spaced length quantiles (capped at the dev size)"
    )
    warmup: int = Field(10, ge=0, description="untimed batch-1 calls per model before timing")
    repeats: int = Field(
        100,
        ge=2,
        description="timed batch-1 calls per model, cycling through the sentences; the latency is their median; "
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


class TrackingConfig(Strict):
    """MLflow: a parent run per study, a nested child run per trial."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI; --tracking-uri overrides; null: $MLFLOW_TRACKING_URI, else MLflow's local default "
        "(sqlite:///mlflow.db in the working folder)",
    )
    experiment: str = Field("autocompress", description="MLflow experiment the runs are logged under (created if missing)")
    registry: Registration = Field(
        Registration.CHOSEN,
        description="models registered when the search ends: chosen (the chosen trial, alias champion), front (every front "
        "trial, the chosen one aliased champion) or none; --register overrides",
    )
    registered_model: str | None = Field(None, description="registered model name; null: autocompress-<study name>")
    export_formats: list[Literal["onnx", "hf", "ort-recipe", "torchao", "llm-compressor"]] = Field(
        ["onnx", "hf"],
        description="formats the chosen trial is exported to when the search ends (OUTPUT/exports/FORMAT, and the exports/ "
        "artifacts of its MLflow run); [] for none",
    )


class SearchConfig(Strict):
    """The whole content of a search-space file."""

    model: str = Field(
        "default", description="model to compress: default (the packaged all-MiniLM-L6-v2), a local folder or a Hugging Face hub id"
    )
    task: TaskConfig = Field(TaskConfig(), description="the classification task and its train, dev and test splits")
    teacher: TeacherConfig = Field(
        TeacherConfig(), description="the uncompressed reference: a fine-tuned checkpoint, or fine-tuning (every field is in its cache key)"
    )
    space: SpaceConfig = Field(SpaceConfig(), description="the choices the sampler may make, per encoder block unless noted")
    recovery: RecoveryConfig = Field(
        RecoveryConfig(), description="distillation from the teacher after pruning, for trials with recovery_steps > 0"
    )
    search: SearchSettings = Field(SearchSettings(), description="the Optuna study: sampler, budget, storage, constraints, selection")
    execution: ExecutionConfig = Field(ExecutionConfig(), description="where trials run: this process, a local Ray or a Ray cluster")
    latency: LatencyConfig = Field(LatencyConfig(), description="batch-1 latency of each model on real dev sentences")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow logging: a parent run per study, a child run per trial")
    output: str = Field(
        "out", description="folder for pareto.json, the front's ONNX files (models/), the chosen best_policy.json and best_model/, and pareto.png (relative to the working folder); --output overrides"
    )
    source: str | None = Field(None, exclude=True, description="file the config was read from")

    @model_validator(mode="after")
    def _simulation_needs_torch(self) -> "SearchConfig":
        if self.space.simulation_only and self.latency.backend != "torch":
            raise ValueError("space.simulation_only: true needs latency.backend: torch (ONNX Runtime cannot run those choices)")
        return self

    @model_validator(mode="after")
    def _final_training_needs_students(self) -> "SearchConfig":
        if self.search.final_training.top_k and max(self.space.recovery_steps) == 0:
            raise ValueError("search.final_training.top_k > 0 needs space.recovery_steps above 0 (it trains the front's distilled students again)")
        return self

    def data_path(self, relative: str) -> Path:
        """Resolve a task file against the data root (environment variable first)."""
        path = Path(relative).expanduser()
        if path.is_absolute():
            return path
        root = os.environ.get(DATA_ROOT_ENV) or self.task.data_root or "."
        root_path = Path(root).expanduser()
        if not root_path.is_absolute() and self.source and not os.environ.get(DATA_ROOT_ENV):
            root_path = Path(self.source).parent / root_path
        return (root_path / path).resolve()


TOP_LEVEL = "(top level)"


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or TOP_LEVEL
    if not error["loc"] and error["type"] == "value_error":  # a rule across sections: its message names the fields
        return str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        parent = error["loc"][:-1]
        return f"unknown field '{field}'; allowed: {', '.join(_allowed_fields(parent))}"
    return f"field '{field}': {error['msg']} (got {error.get('input')!r})"


def _allowed_fields(parent: tuple) -> list[str]:
    model: type[BaseModel] = SearchConfig
    for part in parent:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [name for name in model.model_fields if name != "source"]


def parse_config(data: Any, source: str = "<dict>") -> SearchConfig:
    """Validate a mapping into a ``SearchConfig``; raise a one-line ``ConfigError``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        data = rename_deprecated(data, RENAMED_FIELDS, source=source)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        return SearchConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_describe(first)}{more}") from None


def load_config(path: str | Path) -> SearchConfig:
    """Read and validate a search-space YAML file (``yaml.safe_load``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    return parse_config(data, source=str(path))
