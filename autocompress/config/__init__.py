"""Search configuration: a YAML file validated into typed, strict models.

Every model forbids unknown fields, so a misspelt key fails at load time with
the file, the field's path and what is allowed, as one line (``ConfigError``).
A field renamed since an earlier release (``RENAMED_FIELDS``) still loads,
with a one-line warning naming the new name. Relative data paths resolve
against the data root: ``$AUTOCOMPRESS_DATA_ROOT`` if set, else
``task.data_root`` (relative to the config file).

One module per group of sections: ``_task`` (task, teacher), ``_space``,
``_search`` (recovery, search, execution, latency, tracking), ``_load`` (the
whole ``SearchConfig`` and reading it).
"""

from autocompress.config._base import (
    DATA_ROOT_ENV,
    DEPLOYABLE_BITS,
    LABELLED_METRICS,
    MINIMIZED_METRICS,
    OUTPUT_PRECISIONS,
    POLICY_SCHEMA,
    RENAMED_FIELDS,
    SCHEMAS,
    STORAGE_ENV,
    TASK_METRICS,
    ConfigError,
    MetricName,
    OutputPrecision,
    Strict,
    TaskType,
)
from autocompress.config._decoder import DecoderConfig
from autocompress.config._load import TOP_LEVEL, SearchConfig, load_config, parse_config
from autocompress.config._search import (
    DECODER_EXPORTS,
    ConstraintsConfig,
    ExecutionConfig,
    FinalTrainingConfig,
    LatencyConfig,
    PrunerName,
    RecoveryConfig,
    Registration,
    SamplerName,
    SearchSettings,
    Selection,
    TrackingConfig,
)
from autocompress.config._space import PruneMode, SpaceConfig
from autocompress.config._task import PairsConfig, RetrievalConfig, TaskConfig, TeacherConfig

__all__ = [
    "DATA_ROOT_ENV",
    "DECODER_EXPORTS",
    "DEPLOYABLE_BITS",
    "RENAMED_FIELDS",
    "STORAGE_ENV",
    "TOP_LEVEL",
    "ConfigError",
    "ConstraintsConfig",
    "DecoderConfig",
    "ExecutionConfig",
    "FinalTrainingConfig",
    "LABELLED_METRICS",
    "MINIMIZED_METRICS",
    "LatencyConfig",
    "MetricName",
    "OUTPUT_PRECISIONS",
    "POLICY_SCHEMA",
    "SCHEMAS",
    "OutputPrecision",
    "PairsConfig",
    "TASK_METRICS",
    "PruneMode",
    "PrunerName",
    "RecoveryConfig",
    "Registration",
    "RetrievalConfig",
    "SamplerName",
    "SearchConfig",
    "SearchSettings",
    "Selection",
    "SpaceConfig",
    "Strict",
    "TaskConfig",
    "TaskType",
    "TeacherConfig",
    "TrackingConfig",
    "load_config",
    "parse_config",
]
