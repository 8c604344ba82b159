"""Deployment: export a compressed model to ONNX, lower its quantization to ONNX Runtime kernels, verify."""

from autocompress.runtime._lower import LayerLowering, LoweringReport, NotDeployable, deployable, lower
from autocompress.runtime._onnx import export_onnx
from autocompress.runtime._reference import dynamic_int8
from autocompress.runtime._verify import LoweringMismatch, VerifyReport, ort_feed, ort_session, verify

__all__ = [
    "LayerLowering",
    "LoweringMismatch",
    "LoweringReport",
    "NotDeployable",
    "VerifyReport",
    "deployable",
    "dynamic_int8",
    "export_onnx",
    "lower",
    "ort_feed",
    "ort_session",
    "verify",
]
