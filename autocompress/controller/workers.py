"""Where trials run: in the search's own process, or each on a Ray actor (a local Ray, or a cluster by address).

Optuna stays the sampler: ``study.optimize(n_jobs=workers)`` asks for trials in
threads of the search process, and each thread hands its ``TrialRequest`` to
a free worker. A worker builds its ``SearchContext`` once (teacher, splits and
the search's own reference files) and then runs trial after trial. Latency is
timed under each machine's exclusive lock (see ``measure``), so trials running
at once never time at once; on a cluster every machine has its own lock.

A worker that dies fails its trial (Ray restarts it); Ctrl-C or ``stop --now``
kills the busy workers and their trials are failed as interrupted, to be
retried on resume. On a cluster, ``$AUTOCOMPRESS_CACHE`` must be a folder every
node sees (teacher, references and trial files live there), and the storage a
database every node reaches.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from autocompress.config import SearchConfig, parse_config
from autocompress.controller.ray_env import FORWARDED_ENV, ray_environment
from autocompress.controller.trial import SearchContext, TrialOutcome, TrialRequest, run_trial

log = logging.getLogger("autocompress")
RESTART_WAIT_SECONDS = 600
"""How long a trial waits for a restarted worker to rebuild its context before failing."""


class Interrupted(RuntimeError):
    """A running trial stopped by Ctrl-C, ``kill`` or ``autocompress stop --now``: failed as interrupted, retried on resume."""


class WorkerDied(RuntimeError):
    """The worker running a trial died (killed, out of memory): the trial fails, Ray restarts the worker."""


class Workers(Protocol):
    """Runs trials; ``size`` of them at once."""

    size: int
    cancelled: threading.Event
    """Set by ``cancel``: no trial starts any more."""

    def run(self, request: TrialRequest) -> TrialOutcome: ...

    def cancel(self) -> None:
        """Stop the running trials now (they raise ``Interrupted``); later ``run`` calls raise it at once."""

    def interrupts_now(self) -> bool:
        """Whether a signal may raise KeyboardInterrupt in the main thread now, without cutting Optuna's bookkeeping."""

    def close(self) -> None: ...


class InProcess:
    """One trial at a time in this process, on the search's own context (no Ray).

    Ctrl-C during a trial's work interrupts it (KeyboardInterrupt); between
    trials it only cancels, so the trial being recorded is recorded whole.
    """

    size = 1

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self.cancelled = threading.Event()
        self.working = False

    def run(self, request: TrialRequest) -> TrialOutcome:
        if self.cancelled.is_set():
            raise Interrupted("the search is stopping")
        self.working = True
        try:
            return run_trial(self.context, request)
        finally:
            self.working = False

    def cancel(self) -> None:
        self.cancelled.set()

    def interrupts_now(self) -> bool:
        return self.working

    def close(self) -> None:
        pass


class TrialWorker:
    """A Ray actor: one ``SearchContext`` built at start, then one trial per ``run`` call."""

    def __init__(self, config: dict[str, Any], source: str, workdir: str, references: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.context = SearchContext.build(parse_config(config, source=source), Path(workdir), references=references)
        self.context.scoring_threads = threads

    def ready(self) -> str:
        import ray

        return f"{socket.gethostname()}:{os.getpid()} (node {ray.get_runtime_context().get_node_id()[:8]})"

    def run(self, request: TrialRequest) -> TrialOutcome:
        return run_trial(self.context, request)




class RayWorkers:
    """``workers`` actors of ``threads`` CPUs each, on a local Ray (started here) or the cluster at ``address``."""

    def __init__(
        self,
        config: SearchConfig,
        *,
        references: dict[str, Any],
        workdir: Path,
        workers: int,
        threads: int,
        address: str | None,
        worker_class: type = TrialWorker,
    ) -> None:
        import ray

        ray_environment()
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
            local = {} if address else {"num_cpus": max(os.cpu_count() or 1, workers * threads), "object_store_memory": 256 * 2**20}
            ray.init(
                address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env={"env_vars": env}, **local
            )
        self.actor_class = ray.remote(num_cpus=threads, max_restarts=3, max_task_retries=0)(worker_class)
        self.arguments = (config.model_dump(mode="json"), str(Path(config.source).resolve()) if config.source else "<dict>", str(workdir), references, threads)
        self.actors = [self.actor_class.remote(*self.arguments) for _ in range(workers)]
        names = ray.get([a.ready.remote() for a in self.actors])  # a worker that cannot build its context fails here, before any trial
        log.info("%d Ray workers ready: %s", len(names), ", ".join(names))
        self.size = workers
        self.idle: queue.Queue = queue.Queue()
        for a in self.actors:
            self.idle.put((a, False))
        self.busy: dict[int, Any] = {}
        self.cancelled = threading.Event()

    def _alive(self, actor: Any) -> Any:
        """``actor`` once Ray has restarted it (it rebuilds its context), or a fresh one if it is dead for good."""
        import ray

        deadline = time.time() + RESTART_WAIT_SECONDS
        while True:
            try:
                ray.get(actor.ready.remote())
                return actor
            except ray.exceptions.ActorUnavailableError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
            except ray.exceptions.RayActorError:
                fresh = self.actor_class.remote(*self.arguments)
                self.actors.append(fresh)
                return fresh

    def run(self, request: TrialRequest) -> TrialOutcome:
        import ray

        if self.cancelled.is_set():
            raise Interrupted("the search is stopping")
        actor, suspect = self.idle.get()
        died = False
        try:
            if suspect:
                actor = self._alive(actor)
            self.busy[threading.get_ident()] = actor
            return ray.get(actor.run.remote(request))
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if isinstance(error.cause, Exception) else RuntimeError(str(error.cause))
            cause.add_note(str(error))  # the worker's traceback
            raise cause from None
        except ray.exceptions.RayActorError as error:
            died = True
            if self.cancelled.is_set():
                raise Interrupted("stopped while running (Ctrl-C or stop --now)") from None
            first = str(error).strip().splitlines()
            raise WorkerDied(f"the worker running this trial died: {first[0] if first else type(error).__name__}") from None
        finally:
            self.busy.pop(threading.get_ident(), None)
            self.idle.put((actor, died))

    def cancel(self) -> None:
        import ray

        self.cancelled.set()
        for actor in list(self.busy.values()):
            ray.kill(actor, no_restart=True)

    def interrupts_now(self) -> bool:
        """Always: this process's main thread only waits for Optuna's trial threads."""
        return True

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.started_ray:
            ray.shutdown()


def make_workers(config: SearchConfig, context: SearchContext, references: dict[str, Any]) -> Workers:
    """In this process for one local worker; Ray actors for more, or for any worker count on a cluster."""
    settings = config.execution
    if settings.workers == 1 and settings.ray_address is None:
        if settings.threads_per_worker:
            import torch

            torch.set_num_threads(settings.threads_per_worker)
            context.scoring_threads = settings.threads_per_worker
        return InProcess(context)
    threads = settings.threads_per_worker or max(1, (os.cpu_count() or 1) // settings.workers)
    return RayWorkers(config, references=references, workdir=context.workdir, workers=settings.workers, threads=threads, address=settings.ray_address)
