"""This machine's cores, shared by the autocompress processes on it instead of fought over.

Each job used to give torch every core: two searches (or a search beside an
``apply``) on one machine oversubscribed them, and a distillation beside a
search ran 12.7x slower than alone. Here each core is a slot file under the
cache (``cores/HOST/slots/N``: a cluster's nodes may share the cache), held
with ``fcntl.flock`` while a process computes, so a process that dies gives
its cores back with its file descriptors.

A block of work (a training, a scoring) asks for ``want`` cores and gets its
fair share, ``total // claimants`` (at least one), where the claimants are the
processes holding or waiting for cores now; torch runs that many threads. A
long block calls ``rebalance()`` between steps: it gives cores back to a job
that started since, takes free ones when that job is gone, and gives every core
to a latency measurement, which holds them all (``every_core``) so that no
other job's work runs while a latency is timed. Waiters line up on a turnstile
lock: a process that releases and asks again between two phases cannot starve
one that waits. A process holds at most one share at a time, and never waits
while holding one, so no two processes wait on each other.

``$AUTOCOMPRESS_CORES`` sets how many cores the jobs share (default: the CPUs
this process may run on); ``off`` lets every block use all it asks for.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO

from autocompress.paths import cache_root

CORES_ENV = "AUTOCOMPRESS_CORES"
POLL_SECONDS = 0.05


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def machine_cores() -> int | None:
    """Cores the jobs on this machine share: ``$AUTOCOMPRESS_CORES``, else the CPUs this process may use; None for ``off``."""
    value = os.environ.get(CORES_ENV, "").strip()
    if value.lower() == "off":
        return None
    if not value:
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${CORES_ENV}={value!r}: allowed values: a whole number of cores (1 or more), or off")
    return int(value)


def _try_flock(handle: IO) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _others_holding(folder: Path) -> int:
    """How many other live processes hold their file in ``folder`` (each process's file is named by its pid)."""
    count = 0
    for path in folder.iterdir():
        if path.name == str(os.getpid()):
            continue
        try:
            with path.open("r") as handle:
                if not _try_flock(handle):
                    count += 1
                    continue
        except FileNotFoundError:
            continue
        try:
            os.kill(int(path.name), 0)
        except ProcessLookupError:  # its process is gone: nobody reopens this name unless the pid comes back
            path.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass
    return count


class CoreBudget:
    """``total`` cores as slot files in ``folder``; one per process (``budget()``), holding at most one share at a time."""

    def __init__(self, folder: Path, total: int) -> None:
        self.folder, self.total = folder, total
        for part in ("slots", "claims", "timing"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        self._slots: dict[int, IO] = {}
        self._want = 0
        self._timing = False
        self._threads_before: int | None = None
        self._mutex = threading.RLock()
        self._claim = (folder / "claims" / str(os.getpid())).open("a")
        self._timing_file = (folder / "timing" / str(os.getpid())).open("a")

    @property
    def held(self) -> int:
        return len(self._slots)

    @contextmanager
    def share(self, want: int) -> Iterator[int]:
        """Hold this process's share of at most ``want`` cores for the block (waiting for one); yields how many."""
        with self._mutex:
            if self._slots:  # nested: the enclosing block's share serves this one
                yield len(self._slots)
                return
            self._want = max(1, want)
            torch = sys.modules.get("torch")
            self._threads_before = torch.get_num_threads() if torch else None
            try:
                self._take(exclusive=False)
                yield len(self._slots)
            finally:
                self._release()
                self._want = 0
                if torch and self._threads_before:
                    torch.set_num_threads(self._threads_before)

    @contextmanager
    def every_core(self) -> Iterator[None]:
        """Hold every core (a latency measurement): waits until the jobs holding some give them back."""
        with self._mutex:
            outer = self._want if self._slots else 0
            self._release()  # never wait while holding cores: the enclosing share waits again afterwards
            fcntl.flock(self._timing_file, fcntl.LOCK_EX)
            self._timing = True
            try:
                self._take(exclusive=True)
                yield
            finally:
                self._timing = False
                self._release()
                fcntl.flock(self._timing_file, fcntl.LOCK_UN)
                if outer:
                    self._take(exclusive=False)

    def rebalance(self) -> int:
        """Between two steps of a block: give cores back to jobs that want them (all of them to a timing), or take free
        ones when they are gone. Returns the cores now held."""
        with self._mutex:
            if not self._slots or not self._want or self._timing:
                return len(self._slots)
            if _others_holding(self.folder / "timing"):
                self._release()
                self._take(exclusive=False)  # behind the timing on the turnstile
                return len(self._slots)
            share = self._fair_share()
            if len(self._slots) > share:
                for index in sorted(self._slots)[share:]:
                    self._drop(index)
            elif len(self._slots) < share:
                with (self.folder / "turnstile").open("a") as turnstile:
                    if _try_flock(turnstile):  # nobody waits: the free cores are ours to take
                        self._grab(share)
            self._set_threads()
            return len(self._slots)

    def _fair_share(self) -> int:
        return max(1, min(self._want, self.total // (1 + _others_holding(self.folder / "claims"))))

    def _take(self, *, exclusive: bool) -> None:
        """Wait in line for cores: every one of them, or a fair share (at least one)."""
        fcntl.flock(self._claim, fcntl.LOCK_EX)
        with exclusive_lock(self.folder / "turnstile"):
            while True:
                target = self.total if exclusive else self._fair_share()
                self._grab(target)
                if len(self._slots) >= target or (self._slots and not exclusive):
                    break
                time.sleep(POLL_SECONDS)
        if not exclusive:
            self._set_threads()

    def _grab(self, target: int) -> None:
        for index in range(self.total):
            if len(self._slots) >= target:
                return
            if index in self._slots:
                continue
            handle = (self.folder / "slots" / str(index)).open("a")
            if _try_flock(handle):
                self._slots[index] = handle
            else:
                handle.close()

    def _drop(self, index: int) -> None:
        handle = self._slots.pop(index)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    def _release(self) -> None:
        for index in list(self._slots):
            self._drop(index)
        fcntl.flock(self._claim, fcntl.LOCK_UN)

    def _set_threads(self) -> None:
        torch = sys.modules.get("torch")
        if torch and self._slots and torch.get_num_threads() != len(self._slots):
            torch.set_num_threads(len(self._slots))


@lru_cache(maxsize=None)
def _budget(pid: int, folder: Path, total: int) -> CoreBudget:
    return CoreBudget(folder, total)


def budget() -> CoreBudget | None:
    """This process's view of the machine's budget (None when ``$AUTOCOMPRESS_CORES`` is off)."""
    total = machine_cores()
    return None if total is None else _budget(os.getpid(), cache_root() / "cores" / socket.gethostname(), total)


@contextmanager
def cores(want: int) -> Iterator[int]:
    """This process's share of the machine's cores, at most ``want``, for a block of compute; torch runs that many threads."""
    shared = budget()
    if shared is None:
        yield want
        return
    with shared.share(want) as held:
        yield held


@contextmanager
def every_core() -> Iterator[None]:
    """Every core of the machine's budget, for a latency measurement."""
    shared = budget()
    if shared is None:
        yield
        return
    with shared.every_core():
        yield


def rebalance() -> int | None:
    """Call between two steps of a long block (see ``CoreBudget.rebalance``); the cores now held, None without a budget."""
    shared = budget()
    return None if shared is None else shared.rebalance()
