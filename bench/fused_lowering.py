"""Do ONNX Runtime's fused BERT kernels speed up our lowered students? One student, four files, timed interleaved.

The student: the quickstart teacher's blocks 1, 2, 3, 5 with HEADS heads and
FFN neurons per block, int8 per channel, a 4-bit embedding of 12,000 rows (no
training: only speed and the lowering's exactness are at stake). Files: our
lowering of the usual (sdpa) export; the eager export run through
``onnxruntime.transformers.optimizer`` (packed Attention fusion, then
MultiHeadAttention fusion) before our lowering; and the teacher's two user
baselines (``quantize_dynamic``; optimizer + ``quantize_dynamic``).

    HF_HUB_OFFLINE=1 python bench/fused_lowering.py HEADS FFN ATTENTION_WIDTH   # e.g. 6 768 192
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.fusion_options import AttentionOpType, FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from autocompress.config import load_config
from autocompress.controller.trial import by_length
from autocompress.measurement import OrtProbe, latency_inputs, pick_sentences
from autocompress.measurement._deployed import deploy, onnx_scores
from autocompress.models.loading import load_tokenizer
from autocompress.policy import Policy
from autocompress.runtime import export_onnx
from autocompress.runtime._lower import lower
from autocompress.tasks.data import batches, load_split
from autocompress.tasks.teacher import get_teacher
from autocompress.techniques import Quantization, compress, float_techniques


def main(heads: int, ffn: int, width: int, workdir: Path = Path("/tmp/autocompress-fused")) -> None:
    config = load_config("search_spaces/quickstart.yaml")
    teacher = get_teacher(config)
    model, tokenizer = teacher.load(), load_tokenizer(str(teacher.path))
    test = batches(by_length(load_split(config, "test")), tokenizer, batch_size=64, max_length=64)
    inputs = latency_inputs(tokenizer, pick_sentences(load_split(config, "test").texts, n=32), max_length=64)
    workdir.mkdir(parents=True, exist_ok=True)
    policy = Policy.from_dict({"layers": {"re:bert\\.encoder\\.layer\\.[0-5]\\..*": {"bits": 8}}, "embedding_bits": 4,
                               "kept_blocks": [1, 2, 3, 5], "heads": {str(i): heads for i in range(6)},
                               "ffn": {str(i): ffn for i in range(6)}, "vocab_rows": 12000})
    float_student = compress(model, policy, techniques=float_techniques(policy, prepare=lambda technique: technique.for_task(config, tokenizer)),
                             calibration=test[0])
    student = compress(float_student, policy, techniques=(Quantization(),))
    files = {"ours, unfused": Path(deploy(student, dev=test[:2], threads=2, workdir=workdir / "plain")[0].path)}
    example = {k: v[:2] for k, v in test[0].items() if k != "labels"}
    student.set_attn_implementation("eager")
    eager = export_onnx(student, workdir / "eager.onnx", example=example)
    for name, op in (("ours, Attention-fused", None), ("ours, MultiHeadAttention-fused", AttentionOpType.MultiHeadAttention)):
        options = FusionOptions("bert")
        if op is not None:
            options.attention_op_type, options.use_multi_head_attention = op, True
        fused = optimize_model(str(eager), model_type="bert", num_heads=heads, hidden_size=width, optimization_options=options, opt_level=0)
        fused.save_model_to_file(str(workdir / "fused.fp32.onnx"))
        print(name, Counter(n.op_type for n in fused.model.graph.node).most_common(8))
        try:
            files[name] = Path(lower(student, workdir / "fused.fp32.onnx", workdir / f"{len(files)}.onnx").path)
        except ValueError as error:
            print(f"{name}: not lowered: {str(error)[:200]}")
    teacher_fp32 = export_onnx(model, workdir / "teacher.onnx", example=example)
    quantize_dynamic(str(teacher_fp32), str(workdir / "int8.onnx"), weight_type=QuantType.QInt8)
    model.set_attn_implementation("eager")
    optimized = optimize_model(str(export_onnx(model, workdir / "teacher_eager.onnx", example=example)), model_type="bert",
                               num_heads=model.config.num_attention_heads, hidden_size=model.config.hidden_size)
    optimized.save_model_to_file(str(workdir / "teacher_fused.onnx"))
    quantize_dynamic(str(workdir / "teacher_fused.onnx"), str(workdir / "fused_int8.onnx"), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    files = {"teacher, ORT int8": workdir / "int8.onnx", "teacher, optimized + ORT int8": workdir / "fused_int8.onnx", **files}
    probes = {name: OrtProbe(path, threads=2) for name, path in files.items()}
    medians: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(7):
        for name, probe in probes.items():
            medians[name].append(probe.measure(inputs, batch_size=1, warmup=5, repeats=40).median_ms)
    reference = statistics.median(medians["teacher, ORT int8"])
    for name, path in files.items():
        ms = statistics.median(medians[name])
        accuracy = onnx_scores(path, test, threads=2)["accuracy"]
        print(f"{name:32s} test acc {accuracy:.4f}  {path.stat().st_size / 1e6:6.2f} MB  {ms:.3f} ms  {reference / ms:.2f}x ORT int8")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
