"""Write a search's results for other tools: the front and the chosen policy as JSON."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from autocompress.policy import Policy


def write_json(path: Path, content: Any) -> Path:
    """Write atomically, so an interrupted search never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
    Path(handle.name).replace(path)
    return path


def write_front(output: Path, rows: list[dict[str, Any]], chosen: dict[str, Any] | None) -> None:
    """``pareto.json`` (every front trial with its policy) and ``best_policy.json`` (the chosen one)."""
    write_json(output / "pareto.json", rows)
    if chosen is not None:
        Policy.from_dict(chosen["policy"]).save(output / "best_policy.json")
