"""The export workflow the search and ``autocompress export`` / ``pick`` share: rebuild a model once, write each format.

Every format is checked against the policy before anything is built: a
format that cannot hold it (``NotExpressible``) either stops the export with a
one-line error (what a user asked for by name) or is skipped with its reason
(what a search exports by default). A format whose output does not match the
source in its own tool (``ExportMismatch``) is reported without stopping the
others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocompress.config import ConfigError
from autocompress.exporters import exporter
from autocompress.exporters._base import ExportMismatch, ExportReport, NotExpressible
from autocompress.exporters.rebuild import Origin, from_trial, rebuild

log = logging.getLogger("autocompress")


@dataclass
class Exported:
    """What ``export`` wrote (``reports``), skipped because the format cannot hold the policy, or found wrong in its tool."""

    reports: list[ExportReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)


def export(origin: Origin, formats: Sequence[str], output: str | Path, *, skip_inexpressible: bool = False) -> Exported:
    """Rebuild ``origin``'s model once and write it in each of ``formats`` into ``output/<format>``, each verified in its tool.

    ``origin`` comes from ``rebuild.from_trial``, ``from_run`` or
    ``from_policy``. A format that cannot express the policy raises
    ``ConfigError`` before anything is built, unless ``skip_inexpressible``.
    """
    targets, exported = [], Exported()
    for name in formats:
        target = exporter(name)
        try:
            target.check_task(origin.policy)
            target.check(origin.policy)
        except NotExpressible as error:
            if not skip_inexpressible:
                raise ConfigError(f"{origin.label}: --format {name}: {error}") from None
            exported.skipped[name] = str(error)
            continue
        targets.append(target)
    if not targets:
        return exported
    log.info("rebuilding %s", origin.label)
    source = rebuild(origin)
    for target in targets:
        try:
            exported.reports.append(target.export(source, Path(output) / target.name, origin=origin.provenance()))
        except ExportMismatch as error:
            exported.mismatched[target.name] = str(error)
    return exported


def export_chosen(study: Any, trial: int, formats: Sequence[str], output: Path) -> list[ExportReport]:
    """The search's exports of its chosen trial into ``output/exports``; what could not be exported is logged, not raised."""
    exported = export(from_trial(study, trial), formats, output / "exports", skip_inexpressible=True)
    for name, reason in exported.skipped.items():
        log.warning("chosen trial %d not exported as %s: %s", trial, name, reason)
    for reason in exported.mismatched.values():
        log.warning("chosen trial %d: %s", trial, reason)
    return exported.reports
