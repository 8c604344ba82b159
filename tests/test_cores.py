"""The machine's core budget, across real processes: shares, timing holding every core, dead holders, no deadlock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from core_holder import held_lines as lines
from core_holder import holder, wait_for

from autocompress.cores import budget, cores, every_core, machine_cores, rebalance


@pytest.fixture
def two_cores(tmp_path, monkeypatch):
    """A budget of two cores in a cache of the test's own, shared with the processes it starts."""
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTOCOMPRESS_CORES", "2")
    return tmp_path


def test_alone_a_block_gets_what_it_asks_and_torch_runs_that_many_threads(two_cores):
    before = torch.get_num_threads()
    with cores(2) as held:
        assert held == 2 and budget().held == 2 and torch.get_num_threads() == 2
        with cores(1) as nested:  # a block inside another uses the enclosing share
            assert nested == 2
    with cores(1) as held:
        assert held == 1 and torch.get_num_threads() == 1
    assert budget().held == 0 and torch.get_num_threads() == before


def test_two_jobs_split_the_cores_and_one_takes_them_back_when_the_other_is_done(two_cores):
    process, log = holder(two_cores, want=2, seconds=60)
    try:
        wait_for(lambda: any(h == 2 for _, h in lines(log)))
        with cores(2) as held:  # waits until the first job's next step gives one back
            assert held == 1 and torch.get_num_threads() == 1
            wait_for(lambda: lines(log)[-1][1] == 1)
            assert rebalance() == 1  # still two claimants: nothing more to take
        wait_for(lambda: lines(log)[-1][1] == 2)  # alone again: the first job takes the free core back
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_timing_holds_every_core_while_the_other_job_waits(two_cores):
    process, log = holder(two_cores, want=2, seconds=60)
    try:
        wait_for(lambda: any(h == 2 for _, h in lines(log)))
        with every_core():
            assert budget().held == 2
            start = time.time()
            time.sleep(0.5)
            end = time.time()
        wait_for(lambda: lines(log)[-1][0] > end)
        assert not [t for t, _ in lines(log) if start < t < end]  # the other job did not run a step meanwhile
        assert lines(log)[-1][1] == 2  # and has its cores back
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_block_inside_a_share_times_on_every_core_and_gets_its_share_back(two_cores):
    with cores(1):
        assert budget().held == 1
        with every_core():
            assert budget().held == 2 and rebalance() == 2  # a timing keeps every core to the end
        assert budget().held == 1 and torch.get_num_threads() == 1


def test_a_killed_job_gives_its_cores_back(two_cores):
    process, log = holder(two_cores, want=2, seconds=60)
    wait_for(lambda: any(h == 2 for _, h in lines(log)))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    with cores(2) as held:
        assert held == 2
    assert not (budget().folder / "claims" / str(process.pid)).exists()  # its claim file went with it


def test_jobs_that_share_and_time_in_turn_never_deadlock(two_cores):
    loop = """
from autocompress.cores import budget
shared = budget()
for _ in range(15):
    with shared.share(2):
        shared.rebalance()
        with shared.every_core():
            pass
        shared.rebalance()
"""
    jobs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(3)]
    assert [job.wait(timeout=60) for job in jobs] == [0, 0, 0]


def test_the_budget_is_set_or_turned_off_by_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.delenv("AUTOCOMPRESS_CORES", raising=False)
    assert machine_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("AUTOCOMPRESS_CORES", "off")
    with cores(3) as held:
        assert held == 3 and budget() is None
    assert not (tmp_path / "cores").exists()  # nothing held, nothing written
    monkeypatch.setenv("AUTOCOMPRESS_CORES", "0")
    with pytest.raises(ValueError, match=r"\$AUTOCOMPRESS_CORES='0': allowed values: a whole number of cores \(1 or more\), or off"):
        machine_cores()
