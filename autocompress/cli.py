"""The ``autocompress`` command line: ``search`` and ``pareto``.

Bad input exits with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from autocompress.config import ConfigError, load_config


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
    search.add_argument("--output", help="folder for pareto.json, best_policy.json and the plot")
    search.add_argument("--seed", type=int, help="sampler seed")

    pareto = commands.add_parser("pareto", help="print the Pareto front of an existing study")
    pareto.add_argument("--storage", required=True, help="Optuna storage URL of the study")
    pareto.add_argument("--study-name", required=True)
    pareto.add_argument("--json", action="store_true", help="print the front as JSON")
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

    from autocompress.search import run_search

    result = run_search(config)
    print(f"\nwrote {result.output / 'pareto.json'}" + (f" and {result.output / 'best_policy.json'} (trial {result.chosen['trial']})" if result.chosen else ""))
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _search(args) if args.command == "search" else _pareto(args)
    except ConfigError as exc:
        print(f"autocompress: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
