"""The ``autocompress`` command line: ``search`` (foreground or ``--detach``), ``status``, ``logs``, ``stop``,
``resume``, ``jobs``, ``sync``, ``pareto`` and ``config``.

Exit status: 0 success; 2 bad input (one line on stderr naming the file and
field, before any training); 3 the search ran but no trial met the
constraints (nothing chosen, no ``best_policy.json``); 130 interrupted
(Ctrl-C or ``stop --now``: running trials marked, front written).

This module parses arguments and dispatches; the commands call the public
API: ``_jobs`` (search and detached jobs), ``_results`` (what reads a study:
pareto, pick, export, register, sync, apply, config), ``_common`` (exit
statuses, logging, opening a study).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from autocompress.cli import _jobs, _results
from autocompress.cli._common import INTERRUPTED, NO_FEASIBLE_TRIAL, format_warning, setup_logging
from autocompress.config import ConfigError, Selection
from autocompress.deprecation import RenamedWarning

__all__ = ["INTERRUPTED", "NO_FEASIBLE_TRIAL", "build_parser", "main", "setup_logging"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocompress", description="Search compression policies for Transformer models.")
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="run or resume a search described by a YAML file")
    search.add_argument("config", help="search-space YAML file (see search_spaces/)")
    search.add_argument("--n-trials", type=int, help="add N trials to those the study has done (search.n_trials is the study total)")
    search.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    search.add_argument("--study-name", help="Optuna study name (overrides search.study_name)")
    search.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///autocompress.db")
    search.add_argument("--tracking-uri", help="MLflow tracking URI (default: the local store)")
    search.add_argument("--register", choices=["chosen", "front", "none"], help="register in MLflow's model registry: the chosen "
                        "trial (alias champion; the default), every front trial, or none (overrides tracking.registry)")
    search.add_argument("--output", help="folder for pareto.json, models/, best_policy.json, best_model/ and the reports")
    search.add_argument("--seed", type=int, help="sampler seed (each trial seeds itself from it and its number)")
    search.add_argument("--workers", type=int, help="trials at once; more than 1 runs them on Ray actors (overrides execution.workers)")
    search.add_argument("--threads-per-worker", type=int, help="torch threads per worker (overrides execution.threads_per_worker)")
    search.add_argument("--ray-address", help="Ray cluster to run workers on (auto, host:6379); with --detach, a dashboard "
                        "address (http://head:8265) submits the search as a Ray job")
    search.add_argument("--dry-run", action="store_true", help="check everything that needs no training, print the plan, exit")
    search.add_argument("--detach", action="store_true", help="check the config, start the search as a job that outlives this "
                        "terminal, print its id and return")
    search.add_argument("--job-id", help=argparse.SUPPRESS)
    search.add_argument("--total", type=int, help=argparse.SUPPRESS)

    status = commands.add_parser("status", help="trials done/running/failed, best so far, front size and ETA of a job")
    status.add_argument("job", nargs="?", help="job id or a unique prefix (default: the latest job)")
    status.add_argument("--json", action="store_true")
    logs = commands.add_parser("logs", help="print a job's log")
    logs.add_argument("job", nargs="?", help="job id or a unique prefix (default: the latest job)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the job ends")
    stop = commands.add_parser("stop", help="stop a job: no new trials, running ones finish (--now: marked interrupted)")
    stop.add_argument("job", nargs="?", help="job id or a unique prefix (default: the latest job)")
    stop.add_argument("--now", action="store_true", help="stop running trials too (they are retried on resume)")
    resume = commands.add_parser("resume", help="restart a stopped or killed job until its study holds its whole budget")
    resume.add_argument("job", nargs="?", help="job id or a unique prefix (default: the latest job)")
    commands.add_parser("jobs", help="list jobs and their state")
    gc = commands.add_parser("gc", help="delete the cache's work folders of studies no longer in their storage, and say what it freed")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    sync = commands.add_parser("sync", help="log every finished trial MLflow lacks (after a tracking server was down)")
    sync.add_argument("--storage", required=True, help="Optuna storage URL of the study")
    sync.add_argument("--study-name", required=True)
    sync.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the search used)")
    sync.add_argument("--experiment", help="MLflow experiment (default: the one the search used)")

    register = commands.add_parser("register", help="register a trial run's model in MLflow's model registry (ONNX flavor)")
    register.add_argument("run_id", help="the MLflow run id of a completed trial (its child run under the search's run)")
    register.add_argument("--name", help="registered model name (default: the search's, autocompress-<study name>)")
    register.add_argument("--alias", help="alias to point at this version, e.g. champion")
    register.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")

    apply = commands.add_parser("apply", help="apply a policy to a model without searching, and measure it like a trial")
    apply.add_argument("policy", help="a policy JSON file (best_policy.json, a trial's policy.json)")
    apply.add_argument("--model", required=True, help="a fine-tuned classifier of the same architecture: local folder or hub id")
    apply.add_argument("--config", help="search config for the task, data and latency settings (default: the built-in defaults)")
    apply.add_argument("--seed", type=int, default=0, help="seed of pruning, recovery and the rest")
    apply.add_argument("--output", "-o", required=True, help="folder for model.onnx, policy.json, tokenizer files and measurement.json")

    export = commands.add_parser("export", help="write a model in other tools' formats, each reloaded in its tool and checked")
    export.add_argument("policy", nargs="?", help="a policy JSON file (applied under --config), instead of a study's trial or a run")
    export.add_argument("--config", help="with POLICY: the search config it applies under (model, task, teacher)")
    export.add_argument("--storage", help="Optuna storage URL of a study")
    export.add_argument("--study-name")
    export.add_argument("--trial", type=int, help="trial number (default: the trial the search chose)")
    export.add_argument("--run", help="an MLflow trial run id (child run of a search)")
    export.add_argument("--tracking-uri", help="MLflow tracking URI for --run (default: $MLFLOW_TRACKING_URI, else the local store)")
    _export_options(export, required=True)

    pick = commands.add_parser("pick", help="choose a trial of an existing study under your own limits, without searching again")
    pick.add_argument("--storage", required=True, help="Optuna storage URL of the study")
    pick.add_argument("--study-name", required=True)
    pick.add_argument("--max-accuracy-drop", type=float,
                      help="at most this drop from the teacher in the study's dev metric (task.metric, accuracy by default; 0.01 = 1 point)")
    pick.add_argument("--max-latency-ms", type=float, help="at most this latency (the trial's median, batch 1)")
    pick.add_argument("--max-size-mb", type=float, help="at most this file size (MB)")
    pick.add_argument("--max-perplexity-increase", type=float,
                      help="causal-lm studies: at most this dev perplexity increase over the teacher's (0.05 = +5%%)")
    pick.add_argument("--min-tokens-per-s", type=float, help="causal-lm studies: at least this many decoded tokens per second")
    pick.add_argument("--rule", choices=[s.value for s in Selection], default=Selection.FASTEST.value, help="which one of those within")
    pick.add_argument("--json", action="store_true", help="print the pick as JSON")
    _export_options(pick, required=False)

    pareto = commands.add_parser("pareto", help="print the Pareto front of an existing study")
    pareto.add_argument("--storage", required=True, help="Optuna storage URL of the study")
    pareto.add_argument("--study-name", required=True)
    pareto.add_argument("--json", action="store_true", help="print the front as JSON")

    config = commands.add_parser("config", help="describe the fields of a search-space YAML file")
    config.add_argument("--schema", action="store_true", required=True, help="list every field: type, default, allowed values, meaning")
    config.add_argument("--json", action="store_true", help="print the fields as JSON")
    return parser


def _export_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    from autocompress.config import DECODER_EXPORTS
    from autocompress.exporters import FORMATS

    choices = list(dict.fromkeys([*FORMATS, *DECODER_EXPORTS]))
    parser.add_argument("--format", nargs="+", choices=choices, required=required,
                        help=f"one or more formats, each into OUTPUT/FORMAT (causal-lm models: {', '.join(DECODER_EXPORTS)})")
    parser.add_argument("--output", "-o", required=required, help="folder to export into")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = format_warning
    warnings.filterwarnings("default", category=RenamedWarning)  # an old name in a user's file is always said, once
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands = {"search": _jobs.search, "status": _jobs.status, "logs": _jobs.logs, "stop": _jobs.stop, "resume": _jobs.resume,
                "jobs": _jobs.jobs, "gc": _jobs.gc, "pareto": _results.pareto, "pick": _results.pick, "export": _results.export,
                "register": _results.register, "sync": _results.sync, "apply": _results.apply, "config": _results.config}
    code = 1
    try:
        code = commands[args.command](args)
    except ConfigError as exc:
        print(f"autocompress: error: {exc}", file=sys.stderr)
        code = 2
    finally:
        if getattr(args, "job_id", None):
            from autocompress.controller.jobs import record_exit

            record_exit(args.job_id, code)
    return code
