"""Export formats: each one an ``Exporter`` in its own module, registered here by its ``--format`` name.

``onnx`` (the lowered ONNX Runtime model), ``hf`` (a Hugging Face folder),
``ort-recipe`` (ONNX Runtime's own quantization tools rebuild the model),
``torchao`` (a per-module torchao config) and ``llm-compressor`` (a recipe
that compressed-tensors applies). Each verifies its output in the target tool.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autocompress.exporters._base import Exporter

FORMATS = {
    "onnx": "autocompress.exporters._onnx:OnnxExporter",
    "hf": "autocompress.exporters._hf:HuggingFaceExporter",
    "ort-recipe": "autocompress.exporters._ort_recipe:OrtRecipeExporter",
    "torchao": "autocompress.exporters._torchao:TorchaoExporter",
    "llm-compressor": "autocompress.exporters._llm_compressor:LlmCompressorExporter",
}
"""Imported on use: a format's own tool (torchao, compressed-tensors) is only needed by that format."""


def exporter(name: str) -> Exporter:
    """The exporter registered as ``name``."""
    if name not in FORMATS:
        raise ValueError(f"unknown export format {name!r}; allowed: {', '.join(FORMATS)}")
    module, _, attribute = FORMATS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)()


_BASE = ("ExportMismatch", "ExportReport", "Exporter", "NotExpressible", "Source")


def __getattr__(name: str) -> Any:
    """The interface (``Source``, ``Exporter``, ...) loads torch on first use, so the CLI starts fast."""
    if name in _BASE:
        return getattr(importlib.import_module("autocompress.exporters._base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMATS", "ExportMismatch", "ExportReport", "Exporter", "NotExpressible", "Source", "exporter"]
