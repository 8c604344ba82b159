"""The plug-in interface every compression technique implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from autocompress.policy import LayerSpec, Policy


class Technique(ABC):
    """One compression step, applied in place to a model under a policy.

    ``plan`` maps the model's *current* Linear module names to the spec the
    policy gives them (names can change when whole blocks are removed).
    ``calibration`` is a batch of real training inputs with labels, for
    techniques that score importance from data.
    """

    name: str

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
