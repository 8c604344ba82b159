"""Another job on the machine, for the core-budget tests: a process that holds its share of the cores and logs it.

``holder(folder, want, seconds)`` starts it: it asks for ``want`` cores, rebalances every 20 ms for ``seconds`` and
writes "time held" lines to its log; ``held_lines(log)`` reads them back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys, time
from autocompress.cores import budget
want, seconds, log = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
shared = budget()
with shared.share(want), open(log, "a", buffering=1) as out:
    end = time.time() + seconds
    while time.time() < end:
        out.write(f"{time.time()} {shared.rebalance()}\\n")
        time.sleep(0.02)
"""


def holder(folder: Path, want: int, seconds: float) -> tuple[subprocess.Popen, Path]:
    log = folder / f"holder-{time.time_ns()}.log"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(want), str(seconds), str(log)])
    return process, log


def held_lines(log: Path) -> list[tuple[float, int]]:
    if not log.exists():
        return []
    return [(float(t), int(h)) for t, h in (line.split() for line in log.read_text().splitlines() if line.count(" ") == 1)]


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)
