"""Unlabelled texts in three splits, for a task that needs no labels (sentence embeddings).

Any file ``tasks.files`` reads (a text column) or a ``.txt`` file (one text per
non-blank line), or a column of a Hugging Face dataset. A split without its
own file is carved from train, seeded: test first (``task.test_size`` rows,
at least the corpus a neighbour-recall metric needs), then dev
(``task.dev_size``), and neither is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from autocompress.config import ConfigError, SearchConfig
from autocompress.tasks.data import SPLITS, Examples, split_file, stratified_holdout
from autocompress.tasks.evaluation_sets import EvaluationSets, load_evaluation_sets
from autocompress.tasks.files import read_raw


@dataclass(frozen=True)
class Texts(Examples):
    """A split's unlabelled texts and the labelled sets (``task.pairs``, ``task.retrieval``) scored beside them."""

    evaluation: EvaluationSets = EvaluationSets()


def load_split_texts(config: SearchConfig, split: str) -> Texts:
    """``load_texts`` of ``split`` with that split's evaluation sets."""
    texts = load_texts(config, split)
    return Texts(texts.texts, None, evaluation=load_evaluation_sets(config, split))


def load_texts(config: SearchConfig, split: str) -> Examples:
    """``"train"``, ``"dev"`` or ``"test"`` texts as the config's task describes, without labels."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    task = config.task
    rest = _read(config, "train")
    own_test = task.hf_dataset is not None or task.test is not None
    own_dev = (task.hf_dev_split is not None) if task.hf_dataset else (task.dev is not None)
    if split == "test" and own_test:
        return _nonempty(config, _read(config, "test"), "test").head(task.test_subset)
    if not own_test:
        rest, test = _carve(config, rest, task.test_size, "test_size")
        if split == "test":
            return test.head(task.test_subset)
    if split == "dev" and own_dev:
        return _nonempty(config, _read(config, "dev"), "dev").head(task.dev_subset)
    if not own_dev:
        rest, dev = _carve(config, rest, task.dev_size, "dev_size")
        if split == "dev":
            return dev.head(task.dev_subset)
    return rest if task.train_subset is None else rest.sample(task.train_subset)


def _carve(config: SearchConfig, examples: Examples, size: int, field: str) -> tuple[Examples, Examples]:
    if len(examples) <= size:
        raise ConfigError(f"{config.source}: field 'task.{field}' ({size}) must be below the {len(examples)} training texts left to carve it from")
    return stratified_holdout(examples, size, seed=config.task.split_seed)


def _nonempty(config: SearchConfig, examples: Examples, split: str) -> Examples:
    if not len(examples):
        raise ConfigError(f"{config.source}: the {split} split has no texts (task.{split})")
    return examples


def _read(config: SearchConfig, split: str) -> Examples:
    task = config.task
    if task.hf_dataset:
        return _read_hf(config, {"train": task.hf_train_split, "dev": task.hf_dev_split, "test": task.hf_test_split}[split])
    raw = read_raw(split_file(config, split), task.text_column, None, columns=task.columns)
    return _nonempty(config, Examples(raw.texts, None), split)


def _read_hf(config: SearchConfig, split: str) -> Examples:
    import datasets

    task = config.task
    data = datasets.load_dataset(task.hf_dataset, task.hf_config, split=split)
    if task.text_column not in data.column_names:
        raise ConfigError(f"{config.source}: {task.hf_dataset} split {split!r}: column task.text_column={task.text_column!r} not found; "
                          f"the dataset has {data.column_names}")
    return Examples(tuple(str(text) for text in data[task.text_column] if str(text).strip()), None)
