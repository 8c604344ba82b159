"""The ``autocompress`` command line: ``search``, ``pareto`` and ``config``.

Exit status: 0 success; 2 bad input (one line on stderr naming the file and
field, before any training); 3 the search ran but no trial met the
constraints (nothing chosen, no ``best_policy.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from autocompress.config import ConfigError, load_config

NO_FEASIBLE_TRIAL = 3
"""Exit status of a search in which no trial met the constraints."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocompress", description="Search compression policies for Transformer models.")
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="run or resume a search described by a YAML file")
    search.add_argument("config", help="search-space YAML file (see search_spaces/)")
    search.add_argument("--n-trials", type=int, help="trials to add in this run (overrides search.n_trials)")
    search.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    search.add_argument("--study-name", help="Optuna study name (overrides search.study_name)")
    search.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///autocompress.db")
    search.add_argument("--tracking-uri", help="MLflow tracking URI (default: the local store)")
    search.add_argument("--output", help="folder for pareto.json, models/, best_policy.json, best_model/ and the plot")
    search.add_argument("--seed", type=int, help="sampler seed (each trial seeds itself from it and its number)")
    search.add_argument("--dry-run", action="store_true", help="check everything that needs no training, print the plan, exit")

    pareto = commands.add_parser("pareto", help="print the Pareto front of an existing study")
    pareto.add_argument("--storage", required=True, help="Optuna storage URL of the study")
    pareto.add_argument("--study-name", required=True)
    pareto.add_argument("--json", action="store_true", help="print the front as JSON")

    config = commands.add_parser("config", help="describe the fields of a search-space YAML file")
    config.add_argument("--schema", action="store_true", required=True, help="list every field: type, default, allowed values, meaning")
    config.add_argument("--json", action="store_true", help="print the fields as JSON")
    return parser


def _search(args: argparse.Namespace) -> int:
    from autocompress.config import parse_config

    config = load_config(args.config)
    overrides = {
        "n_trials": args.n_trials,
        "timeout": args.timeout,
        "study_name": args.study_name,
        "storage": args.storage,
        "seed": args.seed,
    }
    data = config.model_dump(mode="json", exclude={"source"})
    data["search"].update({k: v for k, v in overrides.items() if v is not None})
    if args.tracking_uri:
        data["tracking"]["uri"] = args.tracking_uri
    if args.output:
        data["output"] = args.output
    config = parse_config(data, source=args.config)

    if args.dry_run:
        from autocompress.preflight import preflight

        print(preflight(config).describe())
        return 0

    from autocompress.search import run_search

    result = run_search(config)
    print(f"\nwrote {result.output / 'pareto.json'}" + (f", {result.output / 'best_policy.json'} and best_model/ (trial {result.chosen['trial']})" if result.chosen else ""))
    return 0 if result.feasible else NO_FEASIBLE_TRIAL


def _pareto(args: argparse.Namespace) -> int:
    import optuna

    from autocompress.pareto import BASELINE_ATTR, format_table, front_rows

    try:
        study = optuna.load_study(study_name=args.study_name, storage=args.storage)
    except KeyError:
        raise ConfigError(f"{args.storage}: no study named {args.study_name!r}") from None
    rows = front_rows(study)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, study.user_attrs.get(BASELINE_ATTR)))
    return 0


def _config(args: argparse.Namespace) -> int:
    from autocompress.config_schema import describe_fields, format_fields

    docs = describe_fields()
    print(json.dumps([doc.to_dict() for doc in docs], indent=2) if args.json else format_fields(docs))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return {"search": _search, "pareto": _pareto, "config": _config}[args.command](args)
    except ConfigError as exc:
        print(f"autocompress: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
