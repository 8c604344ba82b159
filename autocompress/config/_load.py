"""The whole config, and reading it: one YAML file (``yaml.safe_load``) validated into ``SearchConfig``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from autocompress.config._base import DATA_ROOT_ENV, RENAMED_FIELDS, STORAGE_ENV, ConfigError, Strict
from autocompress.config._decoder import DecoderConfig
from autocompress.config._search import (
    DECODER_EXPORTS,
    ExecutionConfig,
    ExportFormat,
    LatencyConfig,
    RecoveryConfig,
    SearchSettings,
    TrackingConfig,
)
from autocompress.config._space import SpaceConfig
from autocompress.config._task import TaskConfig, TeacherConfig
from autocompress.deprecation import rename_deprecated


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
    decoder: DecoderConfig = Field(DecoderConfig(), description="a causal-lm search's choices: weight-only bits per decoder block")
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
    def _output_precision_needs_embeddings(self) -> "SearchConfig":
        if self.space.output_precision != ["float32"] and self.task.type != "embedding":
            raise ValueError(f"space.output_precision {self.space.output_precision} quantizes output embeddings; "
                             f"task.type {self.task.type!r} returns none (allowed: [float32], or task.type embedding)")
        return self

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

    @model_validator(mode="after")
    def _decoders_run_here(self) -> "SearchConfig":
        decoder = self.task.type == "causal-lm"
        if decoder and (self.execution.workers > 1 or self.latency.backend != "onnxruntime"):
            raise ValueError("a causal-lm search runs its trials in its own process on ONNX Runtime GenAI: "
                             "execution.workers must be 1 and latency.backend onnxruntime")
        allowed = DECODER_EXPORTS if decoder else tuple(f for f in get_args(ExportFormat) if f != "gguf")
        wrong = [f for f in self.tracking.export_formats if f not in allowed]
        if wrong:
            raise ValueError(f"tracking.export_formats {wrong}: a task.type {self.task.type!r} search exports {', '.join(allowed)}")
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
    if os.environ.get(STORAGE_ENV) and isinstance(data, dict) and isinstance(data.get("search", {}), dict):
        data = {**data, "search": {**data.get("search", {}), "storage": f"env:{STORAGE_ENV}"}}  # the reference, never the URL
    return parse_config(data, source=str(path))
