"""Every config field as documentation: ``autocompress config --schema`` prints it.

Walks the pydantic models of ``autocompress.config`` so the listing can never
drift from what the loader accepts: path, type, default, allowed values and
description of each field.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass
from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from autocompress.config import TOP_LEVEL, SearchConfig


@dataclass(frozen=True)
class FieldDoc:
    """One configuration field, as ``autocompress config --schema`` shows it.

    ``path`` is the dotted YAML path (``search.constraints.max_accuracy_drop``),
    ``section`` the model it belongs to (its path, or ``(top level)``),
    ``default`` the JSON value a file that omits the field gets, ``choices`` the
    enum members or ``Literal`` values (of the items, for a list) and ``bounds``
    the numeric constraints (``ge``/``gt``/``le``/``lt``, ``min_length``).
    """

    path: str
    section: str
    type: str
    default: Any
    choices: list[Any] | None
    bounds: dict[str, float]
    description: str

    @property
    def allowed(self) -> str:
        """Allowed values in words: the choices, else the interval the bounds give (``[0, 1)``, ``>= 1``)."""
        parts = [", ".join(_show(choice) for choice in self.choices)] if self.choices else []
        low = ("[", self.bounds["ge"]) if "ge" in self.bounds else ("(", self.bounds["gt"]) if "gt" in self.bounds else None
        high = ("]", self.bounds["le"]) if "le" in self.bounds else (")", self.bounds["lt"]) if "lt" in self.bounds else None
        if low and high:
            parts.append(f"{low[0]}{_show(low[1])}, {_show(high[1])}{high[0]}")
        elif low:
            parts.append(f"{'>=' if low[0] == '[' else '>'} {_show(low[1])}")
        elif high:
            parts.append(f"{'<=' if high[0] == ']' else '<'} {_show(high[1])}")
        if self.bounds.get("min_length"):
            parts.append("non-empty")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "allowed": self.allowed}


def _show(value: Any) -> str:
    """A value as YAML would spell it: strings bare, ``null``, ``true``, lists in brackets."""
    return value if isinstance(value, str) else json.dumps(value)


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return " | ".join(_type_name(arg) for arg in get_args(annotation))
    if origin is list:
        return f"list[{_type_name(get_args(annotation)[0])}]"
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(value).__name__ for value in get_args(annotation)))
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "str"
    return getattr(annotation, "__name__", str(annotation))


def _choices(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [member.value for member in annotation]
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [choice for arg in get_args(annotation) for choice in _choices(arg)]


def _bounds(field: FieldInfo) -> dict[str, float]:
    """The field's own constraints and those its values carry (``list[Annotated[int, Field(ge=1)] | None]``: >= 1)."""
    return {
        key: getattr(item, key)
        for item in (*field.metadata, *_value_metadata(field.annotation))
        for key in ("ge", "gt", "le", "lt", "min_length")
        if getattr(item, key, None) is not None
    }


def _value_metadata(annotation: Any) -> list[Any]:
    """Constraint objects inside ``annotation``, through lists and unions."""
    if get_origin(annotation) is Annotated:
        _, *metadata = get_args(annotation)
        return [part for item in metadata for part in getattr(item, "metadata", [item])]
    return [item for arg in get_args(annotation) for item in _value_metadata(arg)]


REQUIRED = "(required)"
"""The default shown for a field a section must give (``task.retrieval.queries`` once ``task.retrieval`` is set)."""


def _submodel(field: FieldInfo) -> type[BaseModel] | None:
    """The section model a field holds, also an optional one (``PairsConfig | None``: null leaves the section out)."""
    for annotation in (field.annotation, *get_args(field.annotation)):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
    return None


def describe_sections(model: type[BaseModel] = SearchConfig, prefix: str = "") -> dict[str, str]:
    """``{section path: description}`` for the top level and every nested model, parents first, in file order."""
    sections = {} if prefix else {TOP_LEVEL: (model.__doc__ or "").strip().splitlines()[0]}
    for name, field in model.model_fields.items():
        sub = _submodel(field)
        if sub is not None:
            sections[f"{prefix}{name}"] = field.description or (sub.__doc__ or "").strip().splitlines()[0]
            sections.update(describe_sections(sub, f"{prefix}{name}."))
    return sections


def describe_fields(model: type[BaseModel] = SearchConfig, prefix: str = "") -> list[FieldDoc]:
    """Every leaf field of ``model`` and its nested models (not the internal ``source``), in file order."""
    docs = []
    for name, field in model.model_fields.items():
        if name == "source" and model is SearchConfig:
            continue
        sub = _submodel(field)
        if sub is not None:
            docs += describe_fields(sub, f"{prefix}{name}.")
            continue
        default = REQUIRED if field.is_required() else to_jsonable_python(field.get_default(call_default_factory=True))
        docs.append(
            FieldDoc(
                path=f"{prefix}{name}",
                section=prefix.rstrip(".") or TOP_LEVEL,
                type=_type_name(field.annotation),
                default=default,
                choices=_choices(field.annotation) or None,
                bounds=_bounds(field),
                description=field.description or "",
            )
        )
    return docs


def format_fields(docs: list[FieldDoc] | None = None, *, width: int = 100) -> str:
    """A plain-text table of ``docs`` (default: every field), grouped by section, each description wrapped below its row."""
    docs = describe_fields() if docs is None else docs
    sections = describe_sections()
    headers = ("FIELD", "TYPE", "DEFAULT", "ALLOWED")
    rows = {doc.path: (doc.path, doc.type, _show(doc.default), doc.allowed) for doc in docs}
    widths = [max(len(h), *(len(row[i]) for row in rows.values())) for i, h in enumerate(headers)] if rows else [len(h) for h in headers]

    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()

    out = [
        "Fields of a search-space YAML file (autocompress search FILE), nested keys written as dotted paths;",
        "each description gives the unit and what null means.",
        "",
        line(headers),
    ]
    for section in dict.fromkeys(doc.section for doc in docs):
        out += ["", f"{section}: {sections.get(section, '')}".rstrip(": ")]
        for doc in (d for d in docs if d.section == section):
            out.append(line(rows[doc.path]))
            out += textwrap.wrap(doc.description, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)
