"""Two searches at once on one machine against the same two back to back, with the core budget on and off.

Each search is the CLI a user runs (``python -m autocompress search CONFIG``),
a fresh study of its own, all of them sharing one cache (so one core budget,
one latency lock and one cached teacher, fine-tuned by a warm-up search before
anything is timed). Three arrangements, timed by their wall clock:

- back to back: search A, then search B, budget on;
- together, budget on (``autocompress.cores``): A and B started at once;
- together, budget off (``AUTOCOMPRESS_CORES=off``): each gives torch every core.

Reported: each arrangement's wall time, the ratios of the two together to back to
back (below 1: together finish sooner), and each search's trials and front,
so that faster does not mean less done.

Usage: python bench/shared_cores.py [--config bench/shared_cores.yaml] [--out bench/results/shared_cores.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autocompress.paths import write_json


def launch(config: Path, name: str, scratch: Path, cores: str) -> subprocess.Popen:
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(scratch / "cache"), "AUTOCOMPRESS_CORES": cores, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "autocompress", "search", str(config), "--study-name", name,
               "--storage", f"sqlite:///{scratch}/{name}.db", "--tracking-uri", f"sqlite:///{scratch}/{name}-mlflow.db",
               "--output", str(scratch / name), "--seed", "0"]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=(scratch / f"{name}.log").open("w"), stderr=subprocess.STDOUT)


def arrangement(config: Path, scratch: Path, names: list[str], *, together: bool, cores: str) -> dict:
    started = time.time()
    if together:
        processes = [launch(config, name, scratch, cores) for name in names]
        codes = [process.wait() for process in processes]
    else:
        codes = [launch(config, name, scratch, cores).wait() for name in names]
    wall = time.time() - started
    searches = {}
    for name in names:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{scratch}/{name}.db")
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        searches[name] = {
            "trials_complete": len(done),
            "front": sorted(t.number for t in study.best_trials),
            "dev_accuracy": [round(t.user_attrs["dev_accuracy"], 4) for t in done],
            "speedup": [round(t.user_attrs["speedup"], 3) for t in done],
        }
    return {"wall_s": round(wall, 1), "exit_codes": codes, "searches": searches}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bench/shared_cores.yaml")
    parser.add_argument("--out", default="bench/results/shared_cores.json")
    args = parser.parse_args()
    config = Path(args.config).resolve()
    with tempfile.TemporaryDirectory(prefix="shared-cores-") as folder:
        scratch = Path(folder)
        warm = arrangement(config, scratch, ["warmup"], together=False, cores="")  # fine-tunes and caches the teacher
        runs = {
            "back_to_back": arrangement(config, scratch, ["a1", "b1"], together=False, cores=""),
            "together_budget_on": arrangement(config, scratch, ["a2", "b2"], together=True, cores=""),
            "together_budget_off": arrangement(config, scratch, ["a3", "b3"], together=True, cores="off"),
        }
    sequential = runs["back_to_back"]["wall_s"]
    result = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "config": os.path.relpath(config),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0))},
        "warmup_wall_s": warm["wall_s"],
        **runs,
        "together_on_over_back_to_back": round(runs["together_budget_on"]["wall_s"] / sequential, 3),
        "together_off_over_back_to_back": round(runs["together_budget_off"]["wall_s"] / sequential, 3),
    }
    print(write_json(Path(args.out), result).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
