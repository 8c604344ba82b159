"""Measurements of a compressed model: accuracy, storage size and real latency."""

from autocompress.measure._accuracy import accuracy, predict
from autocompress.measure._deployed import Deployment, deploy, deploy_and_measure
from autocompress.measure._latency import (
    LatencyProbe,
    LatencyResult,
    OrtProbe,
    TorchProbe,
    fingerprint_id,
    hardware_fingerprint,
    latency_inputs,
    pick_sentences,
)
from autocompress.measure._size import model_size_bytes

__all__ = [
    "Deployment",
    "LatencyProbe",
    "LatencyResult",
    "OrtProbe",
    "TorchProbe",
    "accuracy",
    "deploy",
    "deploy_and_measure",
    "fingerprint_id",
    "hardware_fingerprint",
    "latency_inputs",
    "model_size_bytes",
    "pick_sentences",
    "predict",
]
