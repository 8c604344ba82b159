"""Latency probes (torch and ONNX Runtime), their cross-process lock, and the hardware fingerprint."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch

from autocompress.measure._latency import (
    LatencyResult,
    OrtProbe,
    TorchProbe,
    exclusive_lock,
    fingerprint_id,
    hardware_fingerprint,
    latency_inputs,
    make_batches,
    median_ci,
    pick_sentences,
)
from autocompress.runtime import export_onnx


@pytest.fixture(scope="module")
def texts(data_root):
    from autocompress.data import read_file

    return read_file(data_root / "sst2" / "validation.tsv", "sentence", "label").texts


@pytest.fixture(scope="module")
def inputs(texts, tokenizer):
    return latency_inputs(tokenizer, pick_sentences(texts, n=8))


@pytest.fixture(scope="module")
def classifier():
    from autocompress.models import load_classifier

    return load_classifier("default")


@pytest.fixture(scope="module")
def onnx_path(classifier, sentence_batches, tmp_path_factory):
    return export_onnx(classifier, tmp_path_factory.mktemp("latency") / "model.onnx", example=sentence_batches[0])


def check_sane(result: LatencyResult, *, repeats: int, batch_size: int, backend: str) -> None:
    assert 0 < result.ci_low_ms <= result.median_ms <= result.ci_high_ms
    assert result.median_ms <= result.p90_ms
    assert (result.n, result.batch_size, result.backend) == (repeats, batch_size, backend)
    assert result.started < result.finished


def test_pick_sentences_is_deterministic_and_spans_real_lengths(texts):
    picked = pick_sentences(texts, n=16)
    assert picked == pick_sentences(texts, n=16)
    assert set(picked) <= set(texts) and len(set(picked)) == 16
    lengths = sorted(len(t) for t in texts)
    picked_lengths = [len(t) for t in picked]
    assert picked_lengths == sorted(picked_lengths)
    assert picked_lengths[0] < lengths[len(lengths) // 2] < picked_lengths[-1]
    with pytest.raises(ValueError, match="n must be in 1..872"):
        pick_sentences(texts, n=0)


def test_batches_pad_to_the_longest_in_each_batch_and_cycle(inputs):
    assert all(x["input_ids"].shape[0] == 1 for x in inputs)  # unpadded single sentences
    singles = make_batches(inputs, 1)
    assert [b["input_ids"].shape for b in singles] == [x["input_ids"].shape for x in inputs]
    pairs = make_batches(inputs, 2)
    assert len(pairs) == 4
    for k, batch in enumerate(pairs):
        lengths = [inputs[2 * k + i]["input_ids"].shape[1] for i in range(2)]
        assert batch["input_ids"].shape == (2, max(lengths))
        assert batch["attention_mask"].sum(1).tolist() == lengths
    wrapped = make_batches(inputs, 12)  # more rows than sentences: wraps around
    assert len(wrapped) == 1 and torch.equal(wrapped[0]["input_ids"][8, : inputs[0]["input_ids"].shape[1]], inputs[0]["input_ids"][0])


def test_ort_probe_batch_1_and_4(onnx_path, inputs, tmp_path):
    probe = OrtProbe(onnx_path, threads=2, lock_path=tmp_path / "lock")
    for batch_size in (1, 4):
        result = probe.measure(inputs, batch_size=batch_size, warmup=2, repeats=16)
        check_sane(result, repeats=16, batch_size=batch_size, backend="onnxruntime")
        assert LatencyResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_torch_probe_restores_thread_count(classifier, inputs, tmp_path):
    before = torch.get_num_threads()
    result = TorchProbe(classifier, threads=1, lock_path=tmp_path / "lock").measure(inputs, warmup=1, repeats=8)
    check_sane(result, repeats=8, batch_size=1, backend="torch")
    assert result.threads == 1 and torch.get_num_threads() == before


def test_two_concurrent_measurements_never_overlap(onnx_path, inputs, tmp_path):
    probes = [OrtProbe(onnx_path, threads=1, lock_path=tmp_path / "lock") for _ in range(2)]
    results: list[LatencyResult] = []
    workers = [threading.Thread(target=lambda p=p: results.append(p.measure(inputs, warmup=2, repeats=24))) for p in probes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    first, second = sorted(results, key=lambda r: r.started)
    assert first.finished <= second.started


def test_lock_excludes_another_process(onnx_path, inputs, tmp_path):
    lock = tmp_path / "lock"
    holder = (
        "import sys, time\n"
        "from autocompress.measure._latency import exclusive_lock\n"
        f"with exclusive_lock({str(lock)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(1.0)\n"
        "    print(time.time(), flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    result = OrtProbe(onnx_path, threads=1, lock_path=lock).measure(inputs, warmup=0, repeats=4)
    released = float(child.stdout.readline())
    assert child.wait() == 0
    assert result.started >= released


def test_exclusive_lock_creates_missing_folders(tmp_path):
    with exclusive_lock(tmp_path / "a" / "b" / "lock"):
        assert (tmp_path / "a" / "b" / "lock").exists()


def test_median_ci_brackets_the_median():
    samples = [float(x) for x in range(1, 101)]
    low, high = median_ci(samples)
    assert (low, high) == (40.0, 61.0)  # ranks 40 and 61 of 100: the 95 % binomial interval


def test_result_round_trip_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown LatencyResult fields"):
        LatencyResult.from_dict({"median_ms": 1.0, "mean_ms": 2.0})


def test_fingerprint_is_complete_and_stable():
    fingerprint = hardware_fingerprint(threads=2)
    assert set(fingerprint) == {"cpu_model", "logical_cores", "threads", "torch", "onnxruntime", "python", "platform"}
    assert fingerprint["cpu_model"] and fingerprint["logical_cores"] >= 1
    assert fingerprint["torch"] == torch.__version__
    same = dict(reversed(list(fingerprint.items())))
    assert fingerprint_id(same) == fingerprint_id(fingerprint) and len(fingerprint_id(fingerprint)) == 12
    assert fingerprint_id(hardware_fingerprint(threads=1)) != fingerprint_id(fingerprint)


def test_probe_rejects_bad_options(onnx_path, inputs):
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        OrtProbe(onnx_path, threads=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        make_batches(inputs, 0)
