"""Search configuration: a YAML file validated into typed, strict models.

Every model forbids unknown fields, so a misspelt key fails at load time with
the file, the field's path and what is allowed, as one line (``ConfigError``).
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

DATA_ROOT_ENV = "AUTOCOMPRESS_DATA_ROOT"
DEPLOYABLE_BITS = (2, 4, 8, 16, 32)


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

    data_root: str | None = None
    train: str | None = "sst2/train.tsv"
    dev: str | None = None
    test: str | None = "sst2/validation.tsv"
    dev_size: int = Field(1000, ge=2)
    split_seed: int = 0
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_train_split: str = "train"
    hf_dev_split: str | None = None
    hf_test_split: str = "validation"
    text_column: str = "sentence"
    label_column: str = "label"
    num_labels: int = Field(2, ge=2)
    max_length: int = Field(64, ge=8, le=512)
    train_subset: int | None = Field(None, ge=1)
    dev_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)


class TeacherConfig(Strict):
    """How the uncompressed reference is obtained: a fine-tuned checkpoint, or fine-tuning."""

    checkpoint: str | None = None
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0


class PruneMode(StrEnum):
    NONE = "none"
    LOCAL = "local"
    GLOBAL = "global"


class SpaceConfig(Strict):
    """Choices the sampler may make, per encoder block unless noted."""

    weight_bits: list[Literal[2, 3, 4, 5, 6, 7, 8, 16, 32]] = Field(default_factory=lambda: [4, 8, 32], min_length=1)
    quant_scheme: list[Literal["linear", "kmeans"]] = Field(default_factory=lambda: ["linear"], min_length=1)
    group_size: list[int | None] = Field(default_factory=lambda: [None], min_length=1)
    prune_mode: PruneMode = PruneMode.LOCAL
    prune_ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5], min_length=1)
    embedding_bits: list[Literal[4, 8, 32]] = Field(default_factory=lambda: [32], min_length=1, description="4 or 8: one scale per token row")
    heads: list[int] | None = Field(None, min_length=1, description="heads kept per block; null: all")
    ffn_widths: list[int] | None = Field(None, min_length=1, description="FFN width per block; null: full")
    num_blocks: list[int] | None = Field(None, min_length=1, description="blocks kept, evenly spaced; null: all")
    recovery_steps: list[int] = Field(default_factory=lambda: [0], min_length=1, description="KD fine-tune steps per trial")
    simulation_only: bool = Field(False, description="allow choices no CPU runtime executes (3/5/6/7 bits, kmeans)")

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

    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft-label KD term; 1 - alpha for labels")
    hidden_weight: float = Field(0.0, ge=0)
    attention_weight: float = Field(0.0, ge=0)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    train_subset: int = Field(4096, ge=1, description="training sentences distilled on (teacher logits cached)")
    eval_every: int = Field(50, ge=1)
    eval_subset: int = Field(256, ge=1, description="validation rows scored at each intermediate step")
    pruner: PrunerName = PrunerName.SUCCESSIVE_HALVING


class SamplerName(StrEnum):
    NSGA2 = "nsga2"
    TPE = "tpe"
    RANDOM = "random"


class Selection(StrEnum):
    FASTEST = "fastest_within_budget"
    SMALLEST = "smallest_within_budget"
    MOST_ACCURATE = "most_accurate"


class ConstraintsConfig(Strict):
    max_accuracy_drop: float | None = Field(0.01, ge=0)
    max_latency_ms: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)


class SearchSettings(Strict):
    sampler: SamplerName = SamplerName.NSGA2
    n_trials: int | None = Field(12, ge=1)
    timeout: float | None = Field(None, gt=0)
    study_name: str = "autocompress"
    storage: str = "sqlite:///autocompress.db"
    seed: int = 0
    population_size: int = Field(8, ge=2)
    start_uniform: bool = Field(True, description="a new study first tries every block at each bit width of the space")
    constraints: ConstraintsConfig = ConstraintsConfig()
    selection: Selection = Selection.FASTEST


class LatencyConfig(Strict):
    """Batch-1 latency of the deployed artifact on real validation sentences."""

    backend: Literal["onnxruntime", "torch"] = "onnxruntime"
    threads: int = Field(2, ge=1)
    sentences: int = Field(32, ge=1)
    warmup: int = Field(10, ge=0)
    repeats: int = Field(100, ge=2, description="timed batch-1 calls, cycling through the sentences")


class TrackingConfig(Strict):
    uri: str | None = None
    experiment: str = "autocompress"


class SearchConfig(Strict):
    """The whole content of a search-space file."""

    model: str = "default"
    task: TaskConfig = TaskConfig()
    teacher: TeacherConfig = TeacherConfig()
    space: SpaceConfig = SpaceConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    search: SearchSettings = SearchSettings()
    latency: LatencyConfig = LatencyConfig()
    tracking: TrackingConfig = TrackingConfig()
    output: str = "out"
    source: str | None = Field(None, exclude=True, description="file the config was read from")

    @model_validator(mode="after")
    def _simulation_needs_torch(self) -> "SearchConfig":
        if self.space.simulation_only and self.latency.backend != "torch":
            raise ValueError("space.simulation_only: true needs latency.backend: torch (ONNX Runtime cannot run those choices)")
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


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
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
