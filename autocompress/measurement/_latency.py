"""Latency of a model on real sentences, with one interface and a torch and an ONNX Runtime backend.

Timings are serialized across processes by an exclusive ``fcntl.flock`` on a
lock file, so parallel trials of one search never time at the same moment on
the same cores, and they hold every core of the machine's budget
(``autocompress.cores``), so no other job's work runs beside them. Each call
is timed on its own; the result keeps the median, the 90th percentile and a
distribution-free 95 % confidence interval of the median (binomial order
statistics).

A speed-up is measured *paired* (``measure_paired``): the candidate and its
reference models run interleaved, in rounds with a rotating order, under one
hold of the lock, and the reported figure is the median over rounds of the
per-round ratio of medians. A burst of foreign load then slows both sides of
a round alike instead of skewing one model's figure, as timing the reference
once and dividing every later trial by it did.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autocompress.cores import every_core, exclusive_lock
from autocompress.models.families import TOKENIZER_INPUTS
from autocompress.paths import latency_lock_path
from autocompress.runtime import ort_feed, ort_session

Z_95 = 1.959964


@dataclass(frozen=True)
class LatencyResult:
    """Per-call latency statistics of one measurement; ``started``/``finished`` are epoch seconds."""

    median_ms: float
    p90_ms: float
    ci_low_ms: float
    ci_high_ms: float
    n: int
    batch_size: int
    backend: str
    threads: int
    started: float
    finished: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float | int | str]) -> LatencyResult:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown LatencyResult fields {unknown}; allowed: {sorted(names)}")
        return cls(**data)


def median_ci(samples_ms: Sequence[float], *, z: float = Z_95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics (normal approx. to the binomial)."""
    ordered = sorted(samples_ms)
    n = len(ordered)
    half_width = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half_width) - 1)
    high = min(n - 1, math.ceil(n / 2 + half_width))
    return ordered[low], ordered[high]


def _pad(encodings: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad 1-row encodings to the longest; zeros are masked out, so the pad id does not matter."""
    longest = max(e["input_ids"].shape[-1] for e in encodings)
    names = [name for name in TOKENIZER_INPUTS if name in encodings[0]]
    return {
        name: torch.stack(
            [torch.nn.functional.pad(e[name].reshape(-1), (0, longest - e[name].shape[-1])) for e in encodings]
        )
        for name in names
    }


def make_batches(inputs: Sequence[Mapping[str, torch.Tensor]], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of ``batch_size`` sentences (wrapping around), each padded to its longest."""
    if not inputs:
        raise ValueError("inputs is empty; pass tokenized real sentences (see latency_inputs)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = max(1, len(inputs) // batch_size)
    return [_pad([inputs[(b * batch_size + i) % len(inputs)] for i in range(batch_size)]) for b in range(count)]


def pick_sentences(texts: Sequence[str | tuple[str, str]], *, n: int = 32) -> list[str | tuple[str, str]]:
    """``n`` real sentences (or sentence pairs) at evenly spaced length quantiles, so their lengths match the split's; deterministic."""
    if not 1 <= n <= len(texts):
        raise ValueError(f"n must be in 1..{len(texts)} (number of texts), got {n}")
    by_length = sorted(range(len(texts)), key=lambda i: (len(texts[i]) if isinstance(texts[i], str) else sum(map(len, texts[i])), i))
    positions = [round((k + 0.5) * len(texts) / n - 0.5) for k in range(n)]
    return [texts[by_length[p]] for p in positions]


def latency_inputs(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | tuple[str, str]], *, max_length: int = 128, batch_size: int = 1
) -> list[dict[str, torch.Tensor]]:
    """Tokenize each sentence, or (text, pair) of a sentence-pair task, on its own (unpadded, 1 x length tensors), as a probe expects.

    ``batch_size`` > 1: consecutive texts (``pick_sentences`` orders them by length) padded together, ``batch_size`` per call.
    """
    calls = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    return [
        dict(tokenizer(*([list(call)] if isinstance(call[0], str) else [[t[0] for t in call], [t[1] for t in call]]),
                       padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        for call in calls
    ]


class LatencyProbe(ABC):
    """Times one model's forward pass on real inputs; subclasses supply the backend call."""

    backend: str

    def __init__(self, *, threads: int, lock_path: str | Path | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.lock_path = Path(lock_path) if lock_path is not None else latency_lock_path()

    @abstractmethod
    def _prepare(self, batch: Mapping[str, torch.Tensor]) -> object:
        """Convert a padded batch to the backend's input once, outside the timed region."""

    @abstractmethod
    def _run(self, prepared: object) -> None:
        """One forward pass."""

    @contextmanager
    def _timing_context(self) -> Iterator[None]:
        """Backend state held while timing (thread count, inference mode); none by default."""
        yield

    def measure(
        self,
        inputs: Sequence[Mapping[str, torch.Tensor]],
        *,
        batch_size: int = 1,
        warmup: int = 10,
        repeats: int = 100,
    ) -> LatencyResult:
        """Time ``repeats`` calls (after ``warmup``) cycling through ``inputs``, holding the lock throughout."""
        if repeats < 2 or warmup < 0:
            raise ValueError(f"need repeats >= 2 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
        paired = measure_paired(
            {"model": self}, inputs, candidate="model", warmup=warmup, repeats=repeats, rounds=1, batch_size=batch_size
        )
        return paired.results["model"]


class TorchProbe(LatencyProbe):
    """Eager torch on CPU under ``inference_mode`` with ``threads`` intra-op threads."""

    backend = "torch"

    def __init__(self, model: PreTrainedModel, *, threads: int, lock_path: str | Path | None = None) -> None:
        super().__init__(threads=threads, lock_path=lock_path)
        self.model = model.eval()

    def _prepare(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(batch)

    @contextmanager
    def _timing_context(self) -> Iterator[None]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(previous)

    def _run(self, prepared: dict[str, torch.Tensor]) -> None:
        self.model(**prepared)


class OrtProbe(LatencyProbe):
    """ONNX Runtime CPU: fixed intra-op threads, one inter-op thread, sequential, all graph optimizations.

    Its session does not spin: in a paired probe, three sessions whose idle
    threads busy-wait on 2 cores timed at 2x their standalone latency with 95 %
    intervals of the ratio spanning 0.4-5x; without spinning, paired timings
    match standalone ones within about 15 % (absolute latency is ~30 % above
    a lone spinning session's, the same for every model compared).
    """

    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, *, threads: int, lock_path: str | Path | None = None) -> None:
        super().__init__(threads=threads, lock_path=lock_path)
        self.session: ort.InferenceSession = ort_session(onnx_path, threads=threads, spinning=False)

    def _prepare(self, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return ort_feed(self.session, batch)

    def _run(self, prepared: dict[str, np.ndarray]) -> None:
        self.session.run(None, prepared)


@dataclass(frozen=True)
class PairedLatency:
    """Interleaved timing of a candidate and its references (see ``measure_paired``).

    ``results`` holds each model's own statistics (keys as passed in); ``ratios[ref]`` is
    candidate / reference latency, the median over rounds of the per-round ratio of medians,
    and ``ratio_ci[ref]`` the distribution-free 95 % interval of that median over rounds.
    """

    results: dict[str, LatencyResult]
    ratios: dict[str, float]
    ratio_ci: dict[str, tuple[float, float]]
    rounds: int

    def to_dict(self) -> dict:
        return {
            "results": {name: result.to_dict() for name, result in self.results.items()},
            "ratios": dict(self.ratios),
            "ratio_ci": {name: [low, high] for name, (low, high) in self.ratio_ci.items()},
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PairedLatency:
        unknown = sorted(set(data) - {"results", "ratios", "ratio_ci", "rounds"})
        if unknown:
            raise ValueError(f"unknown PairedLatency fields {unknown}; allowed: ['ratio_ci', 'ratios', 'results', 'rounds']")
        return cls(
            results={name: LatencyResult.from_dict(result) for name, result in data["results"].items()},
            ratios={name: float(ratio) for name, ratio in data["ratios"].items()},
            ratio_ci={name: (float(low), float(high)) for name, (low, high) in data["ratio_ci"].items()},
            rounds=int(data["rounds"]),
        )


def _time_rounds(
    probes: Mapping[str, LatencyProbe],
    prepared: Mapping[str, Sequence[object]],
    *,
    warmup: int,
    per_round: int,
    rounds: int,
    lock_path: str | Path,
) -> tuple[dict[str, list[list[float]]], dict[str, tuple[float, float]]]:
    """The one timing loop: warm up every model, then ``rounds`` rounds of ``per_round`` calls each.

    The order of models rotates every round (ABC, BCA, CAB, ...); each model's
    ``_timing_context`` is entered around its own block of calls, outside the timed
    region. Returns each model's per-round samples (ms) and its (started, finished)
    epoch seconds: from the start of its warm-up to the end of its last timed call.
    """
    names = list(probes)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    with every_core(), exclusive_lock(lock_path):  # no other job's work on the cores, no other timing at all
        for name in names:
            batches = prepared[name]
            with probes[name]._timing_context():
                started[name] = time.time()
                for i in range(warmup):
                    probes[name]._run(batches[i % len(batches)])
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                probe, batches, block = probes[name], prepared[name], []
                with probe._timing_context():
                    for i in range(r * per_round, (r + 1) * per_round):
                        batch = batches[i % len(batches)]
                        begin = time.perf_counter_ns()
                        probe._run(batch)
                        block.append((time.perf_counter_ns() - begin) / 1e6)
                    finished[name] = time.time()
                samples[name].append(block)
    return samples, {name: (started[name], finished[name]) for name in names}


def measure_paired(
    probes: Mapping[str, LatencyProbe],
    inputs: Sequence[Mapping[str, torch.Tensor]],
    *,
    candidate: str,
    warmup: int = 10,
    repeats: int = 100,
    rounds: int = 10,
    batch_size: int = 1,
    lock_path: str | Path | None = None,
) -> PairedLatency:
    """Time ``candidate`` interleaved with every other probe (its references) under one hold of the lock.

    Each model gets ``warmup`` untimed calls, then ``rounds`` rounds in which every model
    runs ``repeats // rounds`` timed calls on the same batches, the order of models rotating
    each round. The lock is ``lock_path``, else the candidate probe's.
    """
    if not probes:
        raise ValueError("probes is empty; pass the candidate and at least its reference probes by name")
    if candidate not in probes:
        raise ValueError(f"unknown candidate {candidate!r}; probes are {sorted(probes)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if repeats < rounds:
        raise ValueError(f"repeats must be >= rounds (at least one timed call per round), got repeats={repeats}, rounds={rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    batches = make_batches(inputs, batch_size)
    prepared = {name: [probe._prepare(batch) for batch in batches] for name, probe in probes.items()}
    per_round = repeats // rounds
    samples, spans = _time_rounds(
        probes,
        prepared,
        warmup=warmup,
        per_round=per_round,
        rounds=rounds,
        lock_path=lock_path if lock_path is not None else probes[candidate].lock_path,
    )
    results = {}
    for name, probe in probes.items():
        flat = [ms for block in samples[name] for ms in block]
        low, high = median_ci(flat)
        results[name] = LatencyResult(
            median_ms=float(np.median(flat)),
            p90_ms=float(np.percentile(flat, 90)),
            ci_low_ms=low,
            ci_high_ms=high,
            n=len(flat),
            batch_size=batch_size,
            backend=probe.backend,
            threads=probe.threads,
            started=spans[name][0],
            finished=spans[name][1],
        )
    ratios, ratio_ci = {}, {}
    for name in probes:
        if name == candidate:
            continue
        per_round_ratios = [
            float(np.median(cand) / np.median(ref)) for cand, ref in zip(samples[candidate], samples[name], strict=True)
        ]
        ratios[name] = float(np.median(per_round_ratios))
        ratio_ci[name] = tuple(float(x) for x in median_ci(per_round_ratios))
    return PairedLatency(results=results, ratios=ratios, ratio_ci=ratio_ci, rounds=rounds)


def hardware_fingerprint(*, threads: int | None = None) -> dict[str, str | int | None]:
    """What a latency number depends on: CPU model, cores, threads used, library and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def fingerprint_id(fingerprint: Mapping[str, object]) -> str:
    """A short stable hash of a fingerprint (key order does not matter)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]
