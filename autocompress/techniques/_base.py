"""The plug-in interface every compression technique implements.

A technique is one module: its ``Technique`` subclass says which policy
fields it owns (its section of a version-2 policy, with each field's JSON
Schema), how the search samples them, why a search space cannot use it on a
model, and how it changes a model. The engine asks every registered technique
(``TECHNIQUES``) the same questions, so nothing else names it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import jsonschema

if TYPE_CHECKING:
    import optuna
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from autocompress.config import SearchConfig, SpaceConfig
    from autocompress.policy import LayerSpec, Policy


class Technique(ABC):
    """One compression step, applied in place to a model under a policy, and what the engine must know about it.

    ``plan`` maps the model's *current* Linear module names to the spec the
    policy gives them (names can change when whole blocks are removed).
    ``calibration`` is a batch of real training inputs with labels, for
    techniques that score importance from data.
    """

    name: ClassVar[str]
    """The technique's section key in a version-2 policy (``"vocabulary_pruning"``)."""
    stage: ClassVar[int]
    """Where it runs in ``compress``, lowest first: shrink matrices, then zero weights, then train, then quantize."""
    needs_data: ClassVar[bool] = False
    """Whether an instance needs the task's data (``for_task``); those without are built with no argument."""
    fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    """The ``Policy`` settings this technique owns -> each one's JSON Schema (with its ``default``); they make its policy section."""

    @classmethod
    def section(cls, policy: Policy) -> dict[str, Any]:
        """This technique's section of ``policy`` as JSON values."""
        return {name: getattr(policy, name) for name in cls.fields}

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> dict[str, Any]:
        """``Policy`` keyword arguments from a (schema-valid) section; a field it omits keeps its default."""
        return dict(section)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """This technique's settings in a policy that asks nothing of it (its schema's defaults, as Python values)."""
        return cls.from_section({name: schema["default"] for name, schema in cls.fields.items()})

    @classmethod
    def check(cls, policy: Policy) -> None:
        """Raise ``ValueError`` naming the setting when ``policy``'s section breaks this technique's schema."""
        error = jsonschema.exceptions.best_match(_validator(cls).iter_errors(cls.section(policy)))
        if error is not None:
            where = ".".join(str(part) for part in error.absolute_path) or cls.name
            raise ValueError(f"{cls.name}: {where}: {error.message}")

    @classmethod
    def params(cls, policy: Policy, *, num_blocks: int, heads: int, ffn: int) -> dict[str, Any]:
        """MLflow params for ``policy``'s settings, one scalar each, the same keys for every policy of a model."""
        return cls.section(policy)

    @classmethod
    def active(cls, policy: Policy) -> bool:
        """Whether ``policy`` asks anything of this technique: one of its fields differs from a default policy's."""
        default = type(policy)()
        return any(getattr(policy, name) != getattr(default, name) for name in cls.fields)

    @classmethod
    def for_task(cls, config: SearchConfig, tokenizer: Any) -> Technique:
        """An instance ready to apply in a search of ``config`` (a technique that learns from the task's data overrides it)."""
        return cls()

    @classmethod
    def sample(cls, trial: optuna.Trial, space: SpaceConfig, *, num_blocks: int) -> dict[str, Any]:
        """``Policy`` keyword arguments for the decisions the space leaves open, asked of ``trial`` (none by default)."""
        return {}

    @classmethod
    def refuse_space(cls, space: SpaceConfig, model_config: PretrainedConfig) -> tuple[str, str] | None:
        """``(space field, why)`` when the space asks this technique for something the model cannot take; else None."""
        return None

    @abstractmethod
    def apply(
        self,
        model: PreTrainedModel,
        policy: Policy,
        plan: Mapping[str, LayerSpec],
        *,
        calibration: Mapping[str, torch.Tensor] | None = None,
    ) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@cache
def _validator(technique: type[Technique]) -> jsonschema.Validator:
    """One compiled validator per technique's section (a policy is checked each time one is built)."""
    schema = {"type": "object", "properties": dict(technique.fields), "additionalProperties": False}
    return jsonschema.Draft202012Validator(schema)
