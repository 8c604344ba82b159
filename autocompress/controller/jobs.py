"""Launch-and-forget searches: a job is a search running on its own, found again by its id.

On one machine a job is the search command in its own session (it survives
the terminal closing), its output in a log file; on a Ray cluster, given the
dashboard's address (``http://head:8265``), it is a Ray job submitted with
Ray's job submission API. Either way the job record (``$AUTOCOMPRESS_CACHE/jobs``)
says where its study lives, and ``status`` reads the study itself: the
storage, not the job, is the source of truth. ``stop`` asks through the study
(running trials finish); ``stop --now`` signals the search, which marks running
trials interrupted and writes its front.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from autocompress.config import ConfigError
from autocompress.controller.ray_env import FORWARDED_ENV, ray_environment
from autocompress.controller.study import process_is_running
from autocompress.paths import cache_root

RAY_JOB_PREFIX = ("http://", "https://")
"""A ``--ray-address`` naming the dashboard submits the search as a Ray job."""


def jobs_dir() -> Path:
    return cache_root() / "jobs"


@dataclass
class Job:
    """Where a detached search runs, what it ran, and which study it writes."""

    id: str
    kind: str
    """local (a process on this machine) or ray (a Ray job)."""
    argv: list[str]
    cwd: str
    storage: str
    study_name: str
    output: str
    workers: int
    started: float
    log: str = ""
    pid: int | None = None
    pid_started: float | None = None
    dashboard: str | None = None
    exit_code: int | None = None
    history: list[float] = field(default_factory=list)
    """Start times of earlier launches (``resume`` relaunches under the same id)."""

    @property
    def path(self) -> Path:
        return jobs_dir() / f"{self.id}.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    def alive(self) -> bool:
        if self.kind == "ray":
            return self._ray_status() in {"PENDING", "RUNNING"}
        return self.pid is not None and process_is_running(self.pid, self.pid_started)

    def state(self) -> str:
        """running; else how it ended: exited N, or killed (no exit recorded: kill -9, machine lost)."""
        if self.kind == "ray":
            return self._ray_status().lower()
        if self.alive():
            return "running"
        current = load(self.id)
        return f"exited {current.exit_code}" if current.exit_code is not None else "killed"

    def _ray_status(self) -> str:
        address = urlsplit(self.dashboard or "")
        try:
            socket.create_connection((address.hostname, address.port or 8265), timeout=2).close()
            return str(_ray_client(self.dashboard).get_job_status(self.id).value)
        except (OSError, RuntimeError) as error:  # the cluster is gone: its jobs with it
            return f"UNREACHABLE ({type(error).__name__} at {self.dashboard})"

    def log_lines(self) -> Iterator[str]:
        if self.kind == "ray":
            yield from _ray_client(self.dashboard).get_job_logs(self.id).splitlines(keepends=True)
            return
        with open(self.log, errors="replace") as handle:
            yield from handle

    def follow(self, *, poll: float = 0.5) -> Iterator[str]:
        """The log from its start, then new lines as they come, until the job ends."""
        if self.kind == "ray":
            import asyncio

            async def tail() -> list[str]:
                return [chunk async for chunk in _ray_client(self.dashboard).tail_job_logs(self.id)]

            yield from asyncio.run(tail())
            return
        with open(self.log, errors="replace") as handle:
            while True:
                line = handle.readline()
                if line:
                    yield line
                elif self.alive():
                    time.sleep(poll)
                else:
                    yield from handle
                    return

    def signal_now(self) -> None:
        """Stop the search now: it marks its running trials interrupted and writes its front (SIGTERM)."""
        if self.kind == "ray":
            _ray_client(self.dashboard).stop_job(self.id)
        elif self.alive():
            os.kill(self.pid, signal.SIGTERM)


def _ray_client(dashboard: str | None):
    from ray.job_submission import JobSubmissionClient

    ray_environment()
    return JobSubmissionClient(dashboard)


def new_id(study_name: str) -> str:
    return f"{''.join(c if c.isalnum() or c in '-_' else '_' for c in study_name)}-{uuid.uuid4().hex[:6]}"


def load(job_id: str | None) -> Job:
    """The job ``job_id`` (a unique prefix will do), or the most recent one."""
    records = sorted(jobs_dir().glob("*.json"), key=lambda p: p.stat().st_mtime) if jobs_dir().is_dir() else []
    if job_id is None:
        if not records:
            raise ConfigError(f"{jobs_dir()}: no jobs yet; start one with `autocompress search CONFIG --detach`")
        path = records[-1]
    else:
        matches = [p for p in records if p.stem == job_id] or [p for p in records if p.stem.startswith(job_id)]
        if len(matches) != 1:
            known = ", ".join(p.stem for p in records[-5:]) or "none"
            raise ConfigError(f"{jobs_dir()}: {'no' if not matches else 'more than one'} job matches {job_id!r}; recent jobs: {known}")
        path = matches[0]
    return Job(**json.loads(path.read_text()))


def list_jobs() -> list[Job]:
    if not jobs_dir().is_dir():
        return []
    return [Job(**json.loads(p.read_text())) for p in sorted(jobs_dir().glob("*.json"), key=lambda p: p.stat().st_mtime)]


def launch(job: Job, env: dict[str, str] | None = None) -> Job:
    """Start ``job.argv`` (``autocompress`` arguments) detached, here or as a Ray job, and record it."""
    command = [sys.executable, "-m", "autocompress", *job.argv, "--job-id", job.id]
    if job.started:
        job.history.append(job.started)
    job.started = time.time()
    job.exit_code = None
    if job.kind == "ray":
        forwarded = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
        entrypoint = f"cd {_quote(job.cwd)} && " + " ".join(_quote(part) for part in command)
        client = _ray_client(job.dashboard)
        if job.history:
            client.delete_job(job.id)
        client.submit_job(entrypoint=entrypoint, submission_id=job.id, runtime_env={"env_vars": forwarded})
        job.save()
        return job
    log = Path(job.log or jobs_dir() / f"{job.id}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    job.log = str(log)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, cwd=job.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
    job.pid = process.pid
    job.pid_started = psutil.Process(process.pid).create_time()
    job.save()
    return job


def record_exit(job_id: str, code: int) -> None:
    """Called by the job's own process as it ends (a kill -9 leaves no exit code: ``state`` says killed)."""
    try:
        job = load(job_id)
    except ConfigError:
        return
    job.exit_code = code
    job.save()


def _quote(part: str) -> str:
    import shlex

    return shlex.quote(part)


def search_argv(config_path: str, options: Sequence[str]) -> list[str]:
    """The ``autocompress search`` arguments a job runs: the config as an absolute path, then the options."""
    return ["search", str(Path(config_path).resolve()), *options]
