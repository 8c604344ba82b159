"""What a GenAI folder gives a user: its prefill and decode speed, timed beside other folders.

Logits come from the folder's ``model.onnx`` run by ONNX Runtime with an
empty KV cache (``runtime.genai.genai_logits``), so perplexity is scored on
the file that ships. Speed comes from ``onnxruntime_genai``'s ``Generator``,
as users run it, at its default settings: prefill is the milliseconds until
the first token after ``prompt``, decode is tokens per second over the next
``new_tokens`` greedy tokens, batch 1. Folders are timed in interleaved rounds (each round
runs every folder once, in a rotated order) and each reports its median, so a
load that comes and goes falls on all of them alike; the timing holds the
machine's latency lock and every core, as encoder timings do.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autocompress.cores import every_core, exclusive_lock
from autocompress.paths import latency_lock_path


@dataclass(frozen=True)
class GenerationSpeed:
    """Medians over rounds: milliseconds to the first token, and decode tokens per second after it."""

    prefill_ms: float
    decode_tokens_per_s: float


def _one_generation(model, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens + 1, do_sample=False)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(prompt)
    generator.generate_next_token()
    first = time.perf_counter()
    for _ in range(new_tokens):
        generator.generate_next_token()
    done = time.perf_counter()
    return (first - started) * 1e3, new_tokens / (done - first)


def generation_speed(folders: Mapping[str, Path], prompt: np.ndarray, *, new_tokens: int = 64, rounds: int = 5) -> dict[str, GenerationSpeed]:
    """Prefill ms and decode tokens/s of each GenAI folder for ``prompt`` (token ids), timed in interleaved rounds."""
    import onnxruntime_genai as og

    names = list(folders)
    models = {name: og.Model(str(folders[name])) for name in names}
    prompt = np.asarray(prompt, dtype=np.int32)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with exclusive_lock(latency_lock_path()), every_core():
        for name in names:
            _one_generation(models[name], prompt, 4)  # warm-up: first-call allocations are no user's steady state
        for round_ in range(rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[name].append(_one_generation(models[name], prompt, new_tokens))
    return {name: GenerationSpeed(statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs)) for name, runs in times.items()}
