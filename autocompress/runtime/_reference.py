"""The alternative a user would pick instead of a search: ONNX Runtime's dynamic int8 one-liner.

Every trial is timed beside it, so each carries ``speedup_vs_int8``: the
speed-up over what ``quantize_dynamic`` gives for free.
"""

from __future__ import annotations

import logging
from pathlib import Path


def dynamic_int8(fp32_onnx: str | Path, out: str | Path) -> Path:
    """``onnxruntime.quantization.quantize_dynamic`` with its defaults on ``fp32_onnx``, as users call it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # quantize_dynamic logs every node at INFO
    try:
        quantize_dynamic(str(fp32_onnx), str(out), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(quiet)
    return out
