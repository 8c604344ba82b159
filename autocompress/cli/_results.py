"""The commands that read a finished (or running) study: ``pareto``, ``pick``, ``export``, ``register``, ``sync``, ``apply``, ``config``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autocompress.cli._common import load_study
from autocompress.config import ConfigError, Selection, load_config


def table_of(study):
    """The function that prints rows of an encoder or a decoder study as a table, beside its teacher."""
    from autocompress.controller.pareto import BASELINE_ATTR
    from autocompress.controller.study import study_metric, study_task

    baseline = study.user_attrs.get(BASELINE_ATTR)
    if study_task(study) == "causal-lm":
        from autocompress.controller.decoder_search import format_table

        return lambda rows: format_table(rows, baseline)
    from autocompress.controller.pareto import format_table

    return lambda rows: format_table(rows, baseline, study_metric(study))


def front_of(study):
    """The front's rows of an encoder or a decoder study, and the function that prints them as a table."""
    from autocompress.controller.study import study_task

    if study_task(study) == "causal-lm":
        from autocompress.controller.decoder_search import front_rows
    else:
        from autocompress.controller.pareto import front_rows
    return front_rows(study), table_of(study)


def sync(args: argparse.Namespace) -> int:
    from autocompress.tracking.runs import TRACKING_ATTR, Tracker

    study = load_study(args.storage, args.study_name)
    where = study.user_attrs.get(TRACKING_ATTR, {})
    tracker = Tracker(study=study, experiment=args.experiment or where.get("experiment") or "autocompress",
                      tracking_uri=args.tracking_uri or where.get("uri"))
    written = tracker.sync()
    if written is None:
        print(f"autocompress: error: MLflow at {tracker.uri} is unreachable; nothing synced", file=sys.stderr)
        return 1
    rows = front_of(study)[0] if any(t.state.name == "COMPLETE" for t in study.trials) else []
    tracker.log_front({r["trial"] for r in rows}, rows, [])
    tracker.finish()
    print(f"synced {written} trial run(s) of study {study.study_name!r} to {tracker.uri} (experiment {tracker.experiment!r})")
    return 0


def register(args: argparse.Namespace) -> int:
    from autocompress.tracking.registry import register_run

    registered = register_run(args.run_id, name=args.name, alias=args.alias, tracking_uri=args.tracking_uri)
    print(f"registered {registered.name} version {registered.version}: {registered.uri}")
    return 0


def apply(args: argparse.Namespace) -> int:
    from autocompress.config import parse_config
    from autocompress.controller.apply import apply_policy
    from autocompress.policy import Policy

    config = load_config(args.config) if args.config else parse_config({}, source="<defaults>")
    data = config.model_dump(mode="json", exclude={"source"})
    data["model"] = args.model
    if config.task.type != "embedding":  # an embedding model is its own teacher already
        data["teacher"]["checkpoint"] = args.model  # the checkpoint is the teacher: nothing is fine-tuned
    policy = Policy.load(args.policy)
    apply_policy(parse_config(data, source=args.config or "<defaults>"), policy, output=Path(args.output), seed=args.seed)
    print(f"\nwrote {args.output}/model.onnx, policy.json, measurement.json and the tokenizer files")
    return 0


def export(args: argparse.Namespace) -> int:
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
        from autocompress.controller.decoder_picking import chosen_decoder_trial
        from autocompress.controller.picking import chosen_trial
        from autocompress.controller.study import study_task

        if not args.storage:
            raise ConfigError("export: --study-name needs --storage")
        study = load_study(args.storage, args.study_name)
        number = args.trial
        if number is None:
            number = chosen_decoder_trial(study) if study_task(study) == "causal-lm" else chosen_trial(study)
        origin = rebuild.from_trial(study, number)
    return write_exports(origin, args.format, Path(args.output))


def write_exports(origin, formats: list[str], output: Path) -> int:
    from autocompress.exporters import FORMATS
    from autocompress.exporters.decoder_exports import DecoderOrigin, export_origin
    from autocompress.exporters.workflow import export

    if isinstance(origin, DecoderOrigin):
        reports = export_origin(origin, formats, output)
        for report in reports:
            print(report.line())
        wrong = [report for report in reports if not report.ok]
        for report in wrong:
            print(f"autocompress: error: {origin.label}: {report.line()}", file=sys.stderr)
        return 1 if wrong else 0
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise ConfigError(f"{origin.label}: --format {' '.join(unknown)}: a {origin.config.task.type} model exports as {', '.join(FORMATS)}")
    exported = export(origin, formats, output)
    for report in exported.reports:
        print(report.line())
    for reason in exported.mismatched.values():
        print(f"autocompress: error: {reason}", file=sys.stderr)
    return 1 if exported.mismatched else 0


ENCODER_LIMITS = ("max_accuracy_drop", "max_latency_ms")
DECODER_LIMITS = ("max_perplexity_increase", "min_tokens_per_s")


def pick(args: argparse.Namespace) -> int:
    from autocompress.controller.study import study_task

    if bool(args.format) != bool(args.output):
        raise ConfigError("pick: --format and --output go together")
    study = load_study(args.storage, args.study_name)
    decoder = study_task(study) == "causal-lm"
    wrong, right = (ENCODER_LIMITS, DECODER_LIMITS) if decoder else (DECODER_LIMITS, ENCODER_LIMITS)
    given = [name for name in wrong if getattr(args, name) is not None]
    if given:
        flags = lambda names: ", ".join("--" + name.replace("_", "-") for name in names)  # noqa: E731
        raise ConfigError(f"pick: study {study.study_name!r} is a {study_task(study)} study: {flags(given)} do not apply; "
                          f"limit it with {flags(right)} and --max-size-mb")
    if decoder:
        from autocompress.controller.decoder_picking import pick_decoder

        row, within = pick_decoder(study, max_perplexity_increase=args.max_perplexity_increase, min_tokens_per_s=args.min_tokens_per_s,
                                   max_size_mb=args.max_size_mb, rule=Selection(args.rule))
    else:
        from autocompress.controller.picking import pick

        row, within = pick(study, max_accuracy_drop=args.max_accuracy_drop, max_latency_ms=args.max_latency_ms,
                           max_size_mb=args.max_size_mb, rule=Selection(args.rule))
    if row is None:
        print(f"autocompress: no completed trial of study {study.study_name!r} is within those limits", file=sys.stderr)
        return 3
    print(json.dumps(row, indent=2) if args.json else table_of(study)([row]))
    if not args.json:
        print(f"\npicked trial {row['trial']} ({args.rule}) of {within} within the limits")
    if not args.format:
        return 0
    from autocompress.exporters.rebuild import from_trial

    return write_exports(from_trial(study, row["trial"]), args.format, Path(args.output))


def pareto(args: argparse.Namespace) -> int:
    study = load_study(args.storage, args.study_name)
    rows, table = front_of(study)
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


def config(args: argparse.Namespace) -> int:
    from autocompress.config_schema import describe_fields, format_fields

    docs = describe_fields()
    print(json.dumps([doc.to_dict() for doc in docs], indent=2) if args.json else format_fields(docs))
    return 0
