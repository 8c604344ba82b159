"""Write a search's results where the user asked: the front as JSON, its ONNX files, the chosen model.

Trial artifacts live in the study's cache folder; everything a user takes
away is copied into ``--output`` so it survives cache cleaning and other
studies:

- ``pareto.json``: one object per front trial, ``artifact`` relative to the folder;
- ``models/trial-N.onnx``: the verified, timed file of every front trial;
- ``best_policy.json`` and ``best_model/`` (``model.onnx``, tokenizer files,
  ``policy.json``): the chosen trial, only when one met the constraints.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from autocompress.policy import Policy

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def tokenizer_files(folder: str | Path) -> list[Path]:
    """The tokenizer files of a model folder, which every model autocompress writes ships beside it."""
    return [Path(folder) / name for name in TOKENIZER_FILES if (Path(folder) / name).is_file()]


def copy_tokenizer(source: str | Path, target: Path) -> list[str]:
    """Copy ``source``'s tokenizer files into ``target``; their names."""
    target.mkdir(parents=True, exist_ok=True)
    copied = tokenizer_files(source)
    for path in copied:
        shutil.copy2(path, target / path.name)
    return [path.name for path in copied]


def write_json(path: Path, content: Any) -> Path:
    """Write atomically, so an interrupted search never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
    Path(handle.name).replace(path)
    return path


def _copy_models(output: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy each row's artifact to ``output/models`` (dropping stale copies); rows point at the copies."""
    models = output / "models"
    if models.exists():
        shutil.rmtree(models)
    copied = []
    for row in rows:
        source = row.get("artifact")
        if source and Path(source).is_file():
            target = models / f"trial-{row['trial']}.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            row = {**row, "artifact": str(target.relative_to(output))}
        copied.append(row)
    return copied


def write_front(
    output: Path, rows: list[dict[str, Any]], chosen: dict[str, Any] | None, *, tokenizer_dir: Path | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Write the front (the chosen row marked ``chosen``) and, if a trial was chosen, its policy and model; return the rows as written."""
    rows = [{**row, "chosen": chosen is not None and row["trial"] == chosen["trial"]} for row in _copy_models(output, rows)]
    write_json(output / "pareto.json", rows)
    best_policy, best_model = output / "best_policy.json", output / "best_model"
    best_policy.unlink(missing_ok=True)
    if best_model.exists():
        shutil.rmtree(best_model)
    if chosen is None:
        return rows, None
    chosen = next(row for row in rows if row["trial"] == chosen["trial"])
    policy = Policy.from_dict(chosen["policy"])
    policy.save(best_policy)
    best_model.mkdir(parents=True)
    policy.save(best_model / "policy.json")
    if chosen.get("artifact"):
        shutil.copy2(output / chosen["artifact"], best_model / "model.onnx")
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, best_model)
    return rows, chosen


def export_chosen(study: Any, trial: int, formats: list[str], output: Path) -> list[Any]:
    """Export the chosen trial in ``formats`` into ``output/exports``; a format that cannot hold it is skipped with its reason."""
    import logging

    from autocompress.exporters import ExportMismatch, NotExpressible, exporter
    from autocompress.rebuild import from_trial, rebuild

    log = logging.getLogger("autocompress")
    origin = from_trial(study, trial)
    targets = []
    for name in formats:
        try:
            exporter(name).check(origin.policy)
            targets.append(exporter(name))
        except NotExpressible as error:
            log.warning("chosen trial %d not exported as %s: %s", trial, name, error)
    if not targets:
        return []
    source, reports = rebuild(origin), []
    for target in targets:
        try:
            reports.append(target.export(source, output / "exports" / target.name, origin=origin.provenance()))
        except ExportMismatch as error:
            log.warning("chosen trial %d: %s", trial, error)
    return reports
