"""``search`` (in the foreground or detached) and the commands of detached jobs: ``status``, ``logs``, ``stop``, ``resume``, ``jobs``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from autocompress.cli._common import INTERRUPTED, NO_FEASIBLE_TRIAL, setup_logging
from autocompress.config import STORAGE_ENV, ConfigError, SearchConfig, load_config
from autocompress.credentials import has_password, masked


def search_config(args: argparse.Namespace) -> SearchConfig:
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


def search(args: argparse.Namespace) -> int:
    config = search_config(args)
    if args.dry_run or args.detach:
        from autocompress.controller.preflight import preflight

        checked = preflight(config)
        if args.dry_run:
            print(checked.describe())
            return 0
        return detach(args, config)

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


def detach(args: argparse.Namespace, config: SearchConfig) -> int:
    from autocompress.controller.jobs import RAY_JOB_PREFIX, Job, launch, new_id, search_argv
    from autocompress.controller.study import absolute_storage

    options = list(args.argv[1:])
    options.remove(args.config)
    options = [a for a in options if a != "--detach"]
    dashboard = config.execution.ray_address if (config.execution.ray_address or "").startswith(RAY_JOB_PREFIX) else None
    if dashboard:
        options = replace_option(options, "--ray-address", "auto")  # the job runs on the cluster and joins it there
    storage, secrets = absolute_storage(config.search.storage), {}
    for option, variable, url in (("--storage", STORAGE_ENV, storage), ("--tracking-uri", "MLFLOW_TRACKING_URI", config.tracking.uri)):
        if url and has_password(url):  # the job reads it from its environment: not from its argv (ps) nor its record
            if dashboard:
                raise ConfigError(f"{option} {masked(url)}: a Ray job's environment shows on its dashboard; write it as file:PATH "
                                  f"(readable on the cluster) or set {variable} on the cluster's nodes and pass env:{variable}")
            secrets[variable] = url
            options = replace_option(options, option, f"env:{variable}")
    storage = f"env:{STORAGE_ENV}" if STORAGE_ENV in secrets else storage
    job = Job(
        id=new_id(config.search.study_name), kind="ray" if dashboard else "local", argv=search_argv(args.config, options),
        cwd=os.getcwd(), storage=storage, study_name=config.search.study_name,
        output=str(Path(config.output).resolve()), workers=config.execution.workers, started=0, dashboard=dashboard,
    )
    launch(job, env=secrets)
    if secrets:
        print(f"the job reads its password from ${' and $'.join(secrets)}; set {'them' if len(secrets) > 1 else 'it'} again to "
              "`status` or `resume` it from another shell", file=sys.stderr)
    where = f"Ray job on {dashboard}" if dashboard else f"pid {job.pid}, log {job.log}"
    print(f"{job.id}\nstarted job {job.id} ({where}); follow it with:\n"
          f"  autocompress status {job.id}\n  autocompress logs {job.id} --follow\n  autocompress stop {job.id}")
    return 0


def replace_option(options: list[str], name: str, value: str) -> list[str]:
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


def study_of(job):
    import optuna

    from autocompress.credentials import resolve

    try:
        return optuna.load_study(study_name=job.study_name, storage=resolve(job.storage, f"job {job.id}'s storage"))
    except KeyError:
        return None


def status(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import load
    from autocompress.controller.progress import summarize
    from autocompress.controller.retention import folder_bytes
    from autocompress.controller.study import UID_ATTR, study_uid
    from autocompress.paths import study_work_dir

    job = load(args.job)
    study = study_of(job)
    summary = summarize(study, workers=job.workers) if study is not None else None
    folder = study_work_dir(study_uid(study)) if study is not None and UID_ATTR in study.user_attrs else None
    files = folder_bytes(folder) if folder is not None else 0
    state = job.state()
    if args.json:
        print(json.dumps({"job": job.id, "job_state": state, "kind": job.kind, "study": summary.to_dict() if summary else None,
                          "files_bytes": files}, indent=2))
        return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.started))
    where = f"pid {job.pid}" if job.kind == "local" else f"Ray job on {job.dashboard}"
    print(f"job {job.id}: {state} ({job.kind}, {where}, {job.workers} worker(s), started {started})")
    if summary is None:
        print(f"study {job.study_name!r} in {masked(job.storage)}: not created yet")
        return 0
    print(f"study {job.study_name!r} in {masked(job.storage)}: {summary.state}")
    print(summary.line())
    if folder is not None:
        print(f"files: {files / 1e6:.0f} MB in {folder}")
    return 0


def gc(args: argparse.Namespace) -> int:
    from autocompress.controller.retention import collect

    folders = collect()
    freed = 0
    for folder in folders:
        print(f"{'delete' if folder.remove else 'keep  '} {folder.bytes / 1e6:9.1f} MB  {folder.path.name}: {folder.reason}")
        if folder.remove:
            freed += folder.bytes
            if not args.dry_run:
                shutil.rmtree(folder.path, ignore_errors=True)
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {freed / 1e6:.1f} MB of {sum(f.bytes for f in folders) / 1e6:.1f} MB in {len(folders)} work folder(s)")
    return 0


def logs(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import load

    job = load(args.job)
    for line in job.follow() if args.follow else job.log_lines():
        sys.stdout.write(line)
        sys.stdout.flush()
    return 0


def stop(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import load
    from autocompress.controller.study import STOP_ATTR

    job = load(args.job)
    study = study_of(job)
    if study is not None:
        study.set_user_attr(STOP_ATTR, True)
    if args.now:
        job.signal_now()
        print(f"stopping {job.id} now: running trials are marked interrupted (retried on resume), the front is written")
    else:
        print(f"stopping {job.id}: no new trials; running ones finish, then the front is written (`--now` to stop them too)")
    return 0


def resume(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import launch, load
    from autocompress.controller.study import BUDGET_ATTR

    job = load(args.job)
    if job.alive():
        raise ConfigError(f"{job.path}: job {job.id} is still running; `autocompress stop {job.id}` first")
    study = study_of(job)
    options = [a for a in job.argv]
    total = study.user_attrs.get(BUDGET_ATTR) if study is not None else None
    if total is not None:
        options = replace_option(options, "--total", str(total))
    job.argv = options
    launch(job)
    print(f"{job.id}\nresumed job {job.id}" + (f" until its study holds {total} finished trials" if total else ""))
    return 0


def jobs(args: argparse.Namespace) -> int:
    from autocompress.controller.jobs import list_jobs
    from autocompress.controller.progress import summarize

    jobs = list_jobs()
    if not jobs:
        print("no jobs yet; start one with `autocompress search CONFIG --detach`")
    for job in jobs:
        study = study_of(job)
        progress = summarize(study, workers=job.workers).line().split(" | ")[0] if study is not None else "no study yet"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.started))
        print(f"{job.id:<28} {job.kind:<5} {job.state():<10} {started}  {job.study_name}  {progress}")
    return 0
