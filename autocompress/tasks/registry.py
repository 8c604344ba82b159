"""The tasks a config's ``task.type`` and a policy's ``task`` may name; a new task is one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autocompress.tasks.base import Task
from autocompress.tasks.causal_lm import CausalLanguageModeling
from autocompress.tasks.classification import SequenceClassification
from autocompress.tasks.embedding import SentenceEmbeddingTask

if TYPE_CHECKING:
    from autocompress.config import SearchConfig

TASKS: dict[str, type[Task]] = {task.name: task for task in (SequenceClassification, SentenceEmbeddingTask, CausalLanguageModeling)}


def task_for(config: SearchConfig) -> Task:
    """The task ``config.task.type`` names, for ``config``."""
    return TASKS[config.task.type](config)
