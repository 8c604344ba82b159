"""Measurements of a compressed model: the task's metrics, storage size and real latency.

``generation`` times a decoder's GenAI folders (prefill ms, decode tokens/s), paired.
"""

from autocompress.config import MetricName
from autocompress.measurement._accuracy import accuracy, model_scores
from autocompress.measurement._deployed import Deployment, Scored, deploy, deploy_and_measure, deploy_and_score, onnx_scores
from autocompress.measurement._latency import (
    LatencyProbe,
    LatencyResult,
    OrtProbe,
    PairedLatency,
    TorchProbe,
    fingerprint_id,
    hardware_fingerprint,
    latency_inputs,
    measure_paired,
    pick_sentences,
)
from autocompress.measurement._size import estimated_size_bytes, shipped_bytes, sparsity
from autocompress.tasks.metrics import METRICS, check_metric, classification_scores, split_scores, task_metrics

__all__ = [
    "Deployment",
    "Scored",
    "LatencyProbe",
    "LatencyResult",
    "METRICS",
    "MetricName",
    "OrtProbe",
    "PairedLatency",
    "TorchProbe",
    "accuracy",
    "check_metric",
    "classification_scores",
    "deploy",
    "deploy_and_measure",
    "deploy_and_score",
    "fingerprint_id",
    "hardware_fingerprint",
    "latency_inputs",
    "measure_paired",
    "model_scores",
    "onnx_scores",
    "estimated_size_bytes",
    "pick_sentences",
    "shipped_bytes",
    "sparsity",
    "split_scores",
    "task_metrics",
]
