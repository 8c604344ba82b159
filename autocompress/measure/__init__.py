"""Measurements of a compressed model: accuracy and the task's F1, storage size and real latency."""

from autocompress.measure._accuracy import accuracy, model_scores, predict
from autocompress.measure._deployed import Deployment, deploy, deploy_and_measure
from autocompress.measure._latency import (
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
from autocompress.measure._size import estimated_size_bytes, shipped_bytes, sparsity
from autocompress.metrics import METRICS, MetricName, check_metric, classification_scores, split_scores, task_metrics

__all__ = [
    "Deployment",
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
    "fingerprint_id",
    "hardware_fingerprint",
    "latency_inputs",
    "measure_paired",
    "model_scores",
    "estimated_size_bytes",
    "pick_sentences",
    "predict",
    "shipped_bytes",
    "sparsity",
    "split_scores",
    "task_metrics",
]
