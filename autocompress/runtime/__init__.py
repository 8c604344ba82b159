"""Deployment: export a compressed model to ONNX, lower its quantization to ONNX Runtime kernels, verify.

Decoders deploy as ONNX Runtime GenAI folders instead: ``runtime.genai``.
"""

from autocompress.runtime._lower import (
    LayerLowering,
    LoweringReport,
    NotDeployable,
    deployable,
    kernel_refusal,
    lower,
    nbits_block,
    tiling_block,
    weight_digest,
)
from autocompress.runtime._onnx import export_onnx
from autocompress.runtime._reference import dynamic_int8
from autocompress.runtime._verify import (
    MATMUL_INTEGER_RTOL,
    LoweringMismatch,
    VerifyReport,
    ort_feed,
    ort_session,
    rounds_activations,
    verify,
)

__all__ = [
    "LayerLowering",
    "MATMUL_INTEGER_RTOL",
    "LoweringMismatch",
    "LoweringReport",
    "NotDeployable",
    "VerifyReport",
    "deployable",
    "dynamic_int8",
    "export_onnx",
    "kernel_refusal",
    "lower",
    "nbits_block",
    "tiling_block",
    "ort_feed",
    "ort_session",
    "rounds_activations",
    "verify",
    "weight_digest",
]
