"""The ``autocompress`` command line: ``search`` (foreground or ``--detach``), ``status``, ``logs``, ``stop``,
``resume``, ``jobs``, ``sync``, ``pareto`` and ``config``.

Exit status: 0 success; 2 bad input (one line on stderr naming the file and
field, before any training); 3 the search ran but no trial met the
constraints (nothing chosen, no ``best_policy.json``); 130 interrupted
(Ctrl-C or ``stop --now``: running trials marked, front written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from autocompress.config import ConfigError, SearchConfig, Selection, load_config
from autocompress.deprecation import RenamedWarning

NO_FEASIBLE_TRIAL = 3
"""Exit status of a search in which no trial met the constraints."""
INTERRUPTED = 130
"""Exit status of a search stopped by Ctrl-C or SIGTERM."""
QUIET_LOGGERS = ("optuna", "transformers", "ray", "mlflow", "alembic", "httpx", "urllib3", "root")
"""Libraries whose info and warnings (per-trial parameter dumps, load reports) go to the log file, not the screen."""


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
    from autocompress.exporters import FORMATS

    parser.add_argument("--format", nargs="+", choices=list(FORMATS), required=required, help="one or more formats, each into OUTPUT/FORMAT")
    parser.add_argument("--output", "-o", required=required, help="folder to export into")


def _search_config(args: argparse.Namespace) -> SearchConfig:
    from autocompress.config import parse_config

    config = load_config(args.config)
    overrides = {"timeout": args.timeout, "study_name": args.study_name, "storage": args.storage, "seed": args.seed}
    execution = {"workers": args.workers, "threads_per_worker": args.threads_per_worker, "ray_address": args.ray_address}
    data = config.model_dump(mode="json", exclude={"source"})
    data["search"].update({k: v for k, v in overrides.items() if v is not None})
    data["execution"].update({k: v for k, v in execution.items() if v is not None})
    if args.n_trials is not None:
        data["search"]["n_trials"] = args.n_trials  # validated like the file's; run_search adds it to the trials done
    if args.tracking_uri:
        data["tracking"]["uri"] = args.tracking_uri
    if args.register:
        data["tracking"]["registry"] = args.register
    if args.output:
        data["output"] = args.output
    return parse_config(data, source=args.config)


def _search(args: argparse.Namespace) -> int:
    config = _search_config(args)
    if args.dry_run or args.detach:
        from autocompress.controller.preflight import preflight

        checked = preflight(config)
        if args.dry_run:
            print(checked.describe())
            return 0
        return _detach(args, config)

    from autocompress.controller.run import run_search

    setup_logging(Path(config.output) / "search.log")
    try:
        result = run_search(config, added=args.n_trials if args.total is None else None, total=args.total)
    except KeyboardInterrupt:
        print(f"\ninterrupted: running trials are marked and will be retried; {Path(config.output) / 'pareto.json'} holds the front so far; "
              f"run the same command again (or `autocompress resume JOB`) to complete the budget", file=sys.stderr)
        return INTERRUPTED
    print(f"\nwrote {result.output / 'pareto.json'}" + (f", {result.output / 'best_policy.json'} and best_model/ (trial {result.chosen['trial']})" if result.chosen else ""))
    return 0 if result.feasible else NO_FEASIBLE_TRIAL


def _detach(args: argparse.Namespace, config: SearchConfig) -> int:
    from autocompress.controller.jobs import RAY_JOB_PREFIX, Job, launch, new_id, search_argv
    from autocompress.controller.study import absolute_storage

    options = list(args.argv[1:])
    options.remove(args.config)
    options = [a for a in options if a != "--detach"]
    dashboard = config.execution.ray_address if (config.execution.ray_address or "").startswith(RAY_JOB_PREFIX) else None
    if dashboard:
        options = _replace_option(options, "--ray-address", "auto")  # the job runs on the cluster and joins it there
    job = Job(
        id=new_id(config.search.study_name), kind="ray" if dashboard else "local", argv=search_argv(args.config, options),
        cwd=os.getcwd(), storage=absolute_storage(config.search.storage), study_name=config.search.study_name,
        output=str(Path(config.output).resolve()), workers=config.execution.workers, started=0, dashboard=dashboard,
    )
    launch(job)
    where = f"Ray job on {dashboard}" if dashboard else f"pid {job.pid}, log {job.log}"
    print(f"{job.id}\nstarted job {job.id} ({where}); follow it with:\n"
          f"  autocompress status {job.id}\n  autocompress logs {job.id} --follow\n  autocompress stop {job.id}")
    return 0


def _replace_option(options: list[str], name: str, value: str) -> list[str]:
    out, skip = [], False
    for part in options:
        if skip:
            skip = False
            continue
        if part == name:
            skip = True
            continue
        if not part.startswith(name + "="):
            out.append(part)
    return [*out, name, value]


def _study_of(job):
    import optuna

    try:
        return optuna.load_study(study_name=job.study_name, storage=job.storage)
    except KeyError:
        return None


def _status(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import load
    from autocompress.controller.progress import summarize

    job = load(args.job)
    study = _study_of(job)
    summary = summarize(study, workers=job.workers) if study is not None else None
    state = job.state()
    if args.json:
        print(json.dumps({"job": job.id, "job_state": state, "kind": job.kind, "study": summary.to_dict() if summary else None}, indent=2))
        return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.started))
    where = f"pid {job.pid}" if job.kind == "local" else f"Ray job on {job.dashboard}"
    print(f"job {job.id}: {state} ({job.kind}, {where}, {job.workers} worker(s), started {started})")
    if summary is None:
        print(f"study {job.study_name!r} in {job.storage}: not created yet")
        return 0
    print(f"study {job.study_name!r} in {job.storage}: {summary.state}")
    print(summary.line())
    return 0


def _logs(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import load

    job = load(args.job)
    for line in job.follow() if args.follow else job.log_lines():
        sys.stdout.write(line)
        sys.stdout.flush()
    return 0


def _stop(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import load
    from autocompress.controller.study import STOP_ATTR

    job = load(args.job)
    study = _study_of(job)
    if study is not None:
        study.set_user_attr(STOP_ATTR, True)
    if args.now:
        job.signal_now()
        print(f"stopping {job.id} now: running trials are marked interrupted (retried on resume), the front is written")
    else:
        print(f"stopping {job.id}: no new trials; running ones finish, then the front is written (`--now` to stop them too)")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import launch, load
    from autocompress.controller.study import BUDGET_ATTR

    job = load(args.job)
    if job.alive():
        raise ConfigError(f"{job.path}: job {job.id} is still running; `autocompress stop {job.id}` first")
    study = _study_of(job)
    options = [a for a in job.argv]
    total = study.user_attrs.get(BUDGET_ATTR) if study is not None else None
    if total is not None:
        options = _replace_option(options, "--total", str(total))
    job.argv = options
    launch(job)
    print(f"{job.id}\nresumed job {job.id}" + (f" until its study holds {total} finished trials" if total else ""))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import list_jobs
    from autocompress.controller.progress import summarize

    jobs = list_jobs()
    if not jobs:
        print("no jobs yet; start one with `autocompress search CONFIG --detach`")
    for job in jobs:
        study = _study_of(job)
        progress = summarize(study, workers=job.workers).line().split(" | ")[0] if study is not None else "no study yet"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.started))
        print(f"{job.id:<28} {job.kind:<5} {job.state():<10} {started}  {job.study_name}  {progress}")
    return 0


def _load_study(storage: str, name: str):
    """The study ``name`` in ``storage``, or a one-line error naming both."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from autocompress.controller.study import redacted

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"{redacted(storage)}: no study named {name!r}") from None
    except (SQLAlchemyError, RuntimeError, ValueError, ImportError, OSError) as error:  # not an Optuna database, a bad URL, a missing driver
        raise ConfigError(f"{redacted(storage)}: cannot open as an Optuna storage ({str(error).strip().splitlines()[0]})") from None


def _sync(args: argparse.Namespace) -> int:
    from autocompress.controller.pareto import front_rows
    from autocompress.tracking.runs import TRACKING_ATTR, Tracker

    study = _load_study(args.storage, args.study_name)
    where = study.user_attrs.get(TRACKING_ATTR, {})
    tracker = Tracker(study=study, experiment=args.experiment or where.get("experiment") or "autocompress",
                      tracking_uri=args.tracking_uri or where.get("uri"))
    written = tracker.sync()
    if written is None:
        print(f"autocompress: error: MLflow at {tracker.uri} is unreachable; nothing synced", file=sys.stderr)
        return 1
    rows = front_rows(study) if any(t.state.name == "COMPLETE" for t in study.trials) else []
    tracker.log_front({r["trial"] for r in rows}, rows, [])
    tracker.finish()
    print(f"synced {written} trial run(s) of study {study.study_name!r} to {tracker.uri} (experiment {tracker.experiment!r})")
    return 0


def _register(args: argparse.Namespace) -> int:
    from autocompress.tracking.registry import register_run

    registered = register_run(args.run_id, name=args.name, alias=args.alias, tracking_uri=args.tracking_uri)
    print(f"registered {registered.name} version {registered.version}: {registered.uri}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from autocompress.config import parse_config
    from autocompress.controller.apply import apply_policy
    from autocompress.policy import Policy

    config = load_config(args.config) if args.config else parse_config({}, source="<defaults>")
    data = config.model_dump(mode="json", exclude={"source"})
    data["model"], data["teacher"]["checkpoint"] = args.model, args.model  # the checkpoint is the teacher: nothing is fine-tuned
    policy = Policy.load(args.policy)
    apply_policy(parse_config(data, source=args.config or "<defaults>"), policy, output=Path(args.output), seed=args.seed)
    print(f"\nwrote {args.output}/model.onnx, policy.json, measurement.json and the tokenizer files")
    return 0


def _export(args: argparse.Namespace) -> int:
    from autocompress.exporters import rebuild

    sources = [bool(args.policy), bool(args.study_name), bool(args.run)]
    if sum(sources) != 1:
        raise ConfigError("export: give exactly one of POLICY (with --config), --storage/--study-name [--trial N], or --run RUN_ID")
    if args.policy:
        if not args.config:
            raise ConfigError(f"export {args.policy}: a policy file needs --config, the search config naming its model and task")
        origin = rebuild.from_policy(args.policy, config=args.config)
    elif args.run:
        origin = rebuild.from_run(args.run, tracking_uri=args.tracking_uri)
    else:
        from autocompress.controller.picking import chosen_trial

        if not args.storage:
            raise ConfigError("export: --study-name needs --storage")
        study = _load_study(args.storage, args.study_name)
        origin = rebuild.from_trial(study, chosen_trial(study) if args.trial is None else args.trial)
    return _write_exports(origin, args.format, Path(args.output))


def _write_exports(origin, formats: list[str], output: Path) -> int:
    from autocompress.exporters.workflow import export

    exported = export(origin, formats, output)
    for report in exported.reports:
        print(report.line())
    for reason in exported.mismatched.values():
        print(f"autocompress: error: {reason}", file=sys.stderr)
    return 1 if exported.mismatched else 0


def _pick(args: argparse.Namespace) -> int:
    from autocompress.controller.pareto import BASELINE_ATTR, format_table
    from autocompress.controller.picking import pick
    from autocompress.controller.study import study_metric

    if bool(args.format) != bool(args.output):
        raise ConfigError("pick: --format and --output go together")
    study = _load_study(args.storage, args.study_name)
    row, within = pick(study, max_accuracy_drop=args.max_accuracy_drop, max_latency_ms=args.max_latency_ms,
                       max_size_mb=args.max_size_mb, rule=Selection(args.rule))
    if row is None:
        print(f"autocompress: no completed trial of study {study.study_name!r} is within those limits", file=sys.stderr)
        return 3
    print(json.dumps(row, indent=2) if args.json else format_table([row], study.user_attrs.get(BASELINE_ATTR), study_metric(study)))
    if not args.json:
        print(f"\npicked trial {row['trial']} ({args.rule}) of {within} within the limits")
    if not args.format:
        return 0
    from autocompress.exporters.rebuild import from_trial

    return _write_exports(from_trial(study, row["trial"]), args.format, Path(args.output))


def _pareto(args: argparse.Namespace) -> int:
    from autocompress.controller.pareto import BASELINE_ATTR, format_table, front_rows
    from autocompress.controller.study import study_metric

    study = _load_study(args.storage, args.study_name)
    rows = front_rows(study)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, study.user_attrs.get(BASELINE_ATTR), study_metric(study)))
    return 0


def _config(args: argparse.Namespace) -> int:
    from autocompress.config_schema import describe_fields, format_fields

    docs = describe_fields()
    print(json.dumps([doc.to_dict() for doc in docs], indent=2) if args.json else format_fields(docs))
    return 0


def setup_logging(log_file: Path | None = None) -> None:
    """Everything at INFO into ``log_file``; on screen, our own lines (only warnings under the live line of a terminal)."""
    import optuna
    import transformers

    for name in ("mlflow", "ray"):  # libraries that attach their own screen handler: route them through ours
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.disable_progress_bar()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, "autocompress", False)]:
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if sys.stderr.isatty() else logging.INFO)
    console.addFilter(lambda record: not record.name.startswith(QUIET_LOGGERS) or record.levelno >= logging.ERROR)
    console.setFormatter(fmt)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file)
        file.setFormatter(fmt)
        handlers.append(file)
    for handler in handlers:
        handler.autocompress = True
        root.addHandler(handler)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A renamed field is the user's file's business, not our source line's: one line naming both names."""
    if issubclass(category, RenamedWarning):
        return f"autocompress: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
    warnings.filterwarnings("default", category=RenamedWarning)  # an old name in a user's file is always said, once
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands = {"search": _search, "pareto": _pareto, "config": _config, "status": _status, "logs": _logs, "stop": _stop,
                "resume": _resume, "jobs": _jobs, "sync": _sync,
                "register": _register, "export": _export, "pick": _pick, "apply": _apply}
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


if __name__ == "__main__":
    sys.exit(main())
