"""Measurements of a compressed model: accuracy, storage size and real latency."""

from autocompress.measure._accuracy import accuracy, predict
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

__all__ = [
    "Deployment",
    "LatencyProbe",
    "LatencyResult",
    "OrtProbe",
    "PairedLatency",
    "TorchProbe",
    "accuracy",
    "deploy",
    "deploy_and_measure",
    "fingerprint_id",
    "hardware_fingerprint",
    "latency_inputs",
    "measure_paired",
    "estimated_size_bytes",
    "pick_sentences",
    "predict",
    "shipped_bytes",
    "sparsity",
]
