"""Trials per hour with 1 and with 2 single-threaded workers, and the framework's share of a trial's time.

Runs the same config twice in one go, each a fresh study in a scratch folder
with its own MLflow store: once in-process with 1 worker, once on a local Ray
with 2 workers (1 torch thread each). Reports, from the studies themselves:

- throughput: trials per hour over the optimize span (first trial start to
  last trial end) and the 2-worker / 1-worker ratio;
- framework overhead: per worker, the time around its trials' work (sampling,
  storage, Ray dispatch inside a trial; MLflow logging, the progress line and
  the next ask between two trials) over its time from first trial start to
  last trial end; workers idling at the very start or end (a 2-worker run's
  last trial has no partner) are reported apart, as ``idle_edges_share``;
- serialization: whether any two trials' latency timings overlapped.

Usage: python bench/parallel_workers.py --config search_spaces/quickstart.yaml --trials 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autocompress.cli import setup_logging
from autocompress.config import load_config, parse_config
from autocompress.controller.run import run_search


def one_run(config_path: str, workers: int, trials: int, scratch: Path) -> dict:
    data = load_config(config_path).model_dump(mode="json")
    name = f"bench-workers{workers}"
    data["search"].update(n_trials=trials, study_name=name, storage=f"sqlite:///{scratch}/study.db")
    data["execution"].update(workers=workers, threads_per_worker=1)
    data["tracking"].update(uri=f"sqlite:///{scratch}/mlflow.db", experiment=name)
    data["output"] = str(scratch / name)
    config = parse_config(data, source=str(Path(config_path).resolve()))
    started = time.time()
    run_search(config)
    total = time.time() - started
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{scratch}/study.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    span = max(t.datetime_complete.timestamp() for t in done) - min(t.datetime_start.timestamp() for t in done)
    busy = sum(t.user_attrs["metrics"]["worker_seconds"] for t in done)
    framework = active = 0.0
    for worker in {t.user_attrs["worker"] for t in done}:
        own = sorted((t for t in done if t.user_attrs["worker"] == worker), key=lambda t: t.datetime_start)
        first, last = own[0].datetime_start.timestamp(), own[-1].datetime_complete.timestamp()
        active += last - first
        framework += (last - first) - sum(t.user_attrs["metrics"]["worker_seconds"] for t in own)
    windows = sorted((t.user_attrs["timed_from"], t.user_attrs["timed_until"]) for t in done)
    overlaps = sum(1 for a, b in itertools.pairwise(windows) if b[0] < a[1])
    return {
        "workers": workers,
        "threads_per_worker": 1,
        "trials_complete": len(done),
        "trials_failed": sum(t.state == TrialState.FAIL for t in study.trials),
        "optimize_span_s": round(span, 1),
        "command_wall_s": round(total, 1),
        "trials_per_hour": round(len(done) / span * 3600, 1),
        "mean_worker_seconds": round(busy / len(done), 2),
        "framework_overhead": round(framework / active, 4),
        "idle_edges_share": round(1 - active / (span * workers), 4),
        "latency_windows_overlapping": overlaps,
        "distinct_workers": len({t.user_attrs["worker"] for t in done}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quickstart.yaml")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--out", default="bench/results/parallel_workers.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        setup_logging(Path(folder) / "bench.log")
        runs = [one_run(args.config, workers, args.trials, Path(folder)) for workers in (1, 2)]
    result = {
        "config": args.config,
        "trials": args.trials,
        "runs": runs,
        "throughput_ratio_2_over_1": round(runs[1]["trials_per_hour"] / runs[0]["trials_per_hour"], 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
