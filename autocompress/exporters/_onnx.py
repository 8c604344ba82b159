"""The ``onnx`` format: the mixed-precision model on ONNX Runtime's integer kernels, as the search measured it.

The same path as a trial (``measure.deploy``: export, lower, verify against
the torch simulation), then the written file is reloaded in a fresh ONNX
Runtime session and its outputs (logits, or a pooled and normalized
``sentence_embedding``) compared with the source's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autocompress.exporters._base import Exporter, Source
from autocompress.measurement import deploy
from autocompress.runtime import MATMUL_INTEGER_RTOL, ort_feed, ort_session, rounds_activations

EXACT = 1e-4
"""Without run-time activation rounding the file does the simulation's float math on the same codes (seen: 7e-6)."""


class OnnxExporter(Exporter):
    """``model.onnx`` (+ tokenizer, ``policy.json``, ``config.json``) for ``onnxruntime.InferenceSession``.

    ``config.json`` is the model's transformers config, as in Optimum's ONNX
    Runtime folders: its ``id2label``/``label2id`` say what each logit means.
    """

    name = "onnx"
    tolerance = EXACT
    tasks = ("sequence-classification", "embedding")

    def tolerance_for(self, source: Source, files: Path) -> float:
        """Exact to 1e-4, unless 8-bit per-channel layers round activations at run time (see ``runtime.verify``)."""
        rounding = rounds_activations(files / "model.onnx")
        return EXACT + (MATMUL_INTEGER_RTOL * float(np.abs(source.outputs).max()) if rounding else 0.0)

    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        lowering, check = deploy(source.model, dev=source.dev, threads=2, workdir=folder, head=source.head)
        session = ort_session(folder / "model.onnx", threads=2)
        outputs = np.concatenate([session.run([source.head.output_name], ort_feed(session, batch))[0] for batch in source.dev])
        ops = sorted({layer.op for layer in lowering.layers.values()})
        source.model.config.to_json_file(folder / "config.json")
        return ["model.onnx", "config.json"], outputs, [f"kernels: {', '.join(ops) or 'float only'}; file {lowering.file_bytes} bytes"]
