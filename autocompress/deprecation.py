"""Old names that still load: users' config files and policies outlive releases.

A renamed field or key is listed here once, as ``"old.dotted.path": "new
name"``; loading a file that uses the old name moves its value to the new
one and warns in one line naming both. Giving both names is an error, since
which one was meant cannot be known.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any


class RenamedWarning(FutureWarning):
    """A file used a field or key under its old name; it was read under the new one."""


def rename_deprecated(data: Any, renamed: Mapping[str, str], *, source: str) -> Any:
    """A copy of ``data`` with each old dotted path of ``renamed`` moved to its new name in the same section.

    Raises ``ValueError`` (one line, naming ``source``) when a section holds both names.
    """
    if not isinstance(data, Mapping):
        return data
    data = dict(data)
    for old, new in renamed.items():
        *sections, name = old.split(".")
        parent = data
        for section in sections:  # copy the path down, so the caller's mapping is never changed
            child = parent.get(section)
            if not isinstance(child, Mapping):
                break
            parent[section] = parent = dict(child)
        else:
            if name in parent:
                prefix = ".".join(sections) + "." if sections else ""
                if new in parent:
                    raise ValueError(f"{source}: '{old}' is the old name of '{prefix}{new}'; give only '{prefix}{new}'")
                warnings.warn(f"{source}: '{old}' is deprecated, read as '{prefix}{new}'; rename it", RenamedWarning, stacklevel=3)
                parent[new] = parent.pop(name)
    return data
