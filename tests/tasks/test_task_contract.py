"""The Task contract: every task passes the same suite; sequence classification runs it on single texts and on pairs.

A subclass gives the ``task`` section of a config on committed data and the
expected shape of its splits. The suite reads the splits through the task,
checks that dev never overlaps train, that batches carry the model's inputs
and the targets, that latency inputs are single unpadded rows, and that a
teacher (a tiny random BERT fine-tuned a few steps) scores with every metric
the task names, the search's among them.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from families import TINY_TEACHER, tiny_model

from autocompress.config import TaskType, parse_config
from autocompress.models.loading import load_tokenizer
from autocompress.tasks import TASKS, SequenceClassification, Task, task_for

DATA = Path(__file__).resolve().parents[1] / "data"


def test_the_config_names_exactly_the_registered_tasks():
    assert set(get_args(TaskType)) == set(TASKS)


class TaskContract:
    """Subclasses set ``task_class``, ``task_section`` (a config's ``task:``) and ``sizes`` (train, dev, test rows)."""

    task_class: type[Task]
    task_section: dict
    sizes: tuple[int, int, int]

    @pytest.fixture(scope="class")
    def task(self, tmp_path_factory):
        model = tmp_path_factory.mktemp("model")  # an encoder without a head, as users start from: the task adds its own
        tiny_model("bert").base_model.save_pretrained(model)
        load_tokenizer("default").save_pretrained(model)
        config = parse_config({"model": str(model), "task": {"type": self.task_class.name, **self.task_section},
                               "teacher": TINY_TEACHER}, source="contract.yaml")
        return task_for(config)

    @pytest.fixture(scope="class")
    def teacher(self, task, tmp_path_factory):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path_factory.mktemp("cache")))
            return task.teacher()

    def test_the_registry_builds_this_task(self, task):
        assert type(task) is self.task_class and TASKS[self.task_class.name] is self.task_class

    def test_splits_have_their_rows_and_dev_is_held_out_of_train(self, task):
        train, dev, test = (task.load_split(split) for split in ("train", "dev", "test"))
        assert (len(train), len(dev), len(test)) == self.sizes
        assert not set(map(str, dev.inputs())) & set(map(str, train.inputs()))

    def test_batches_carry_the_model_inputs_and_the_targets(self, task, teacher):
        tokenizer = load_tokenizer(str(teacher.path))
        batch = task.batches(task.load_split("dev").head(5), tokenizer, batch_size=4)[0]
        assert set(task.target_names) <= set(batch) and "input_ids" in task.input_names(batch)
        assert not set(task.target_names) & set(task.input_names(batch))
        assert len(batch["input_ids"]) == 4 and batch["input_ids"].shape[1] <= task.config.task.max_length

    def test_latency_inputs_are_single_unpadded_rows(self, task, teacher):
        tokenizer = load_tokenizer(str(teacher.path))
        inputs = task.latency_inputs(task.load_split("dev"), tokenizer, count=6)
        assert len(inputs) == 6 and all(x["input_ids"].shape[0] == 1 and bool(x["attention_mask"].all()) for x in inputs)

    def test_the_teacher_scores_with_every_metric_the_task_names(self, task, teacher):
        names = task.metric_names(teacher)
        assert task.metric in names
        model, tokenizer = teacher.load(), load_tokenizer(str(teacher.path))
        batches = task.batches(task.load_split("dev"), tokenizer, batch_size=16)
        with torch.no_grad():
            outputs = np.concatenate([model(**{k: v for k, v in b.items() if k in task.input_names(b)}).logits.numpy() for b in batches])
        targets = np.concatenate([b[task.target_names[0]].numpy() for b in batches])
        scores = task.scores(outputs, targets, teacher=teacher)
        assert set(scores) == set(names) and all(0.0 <= value <= 1.0 for value in scores.values())
        assert task.scores(_one_hot(targets, outputs.shape[1]), targets, teacher=teacher)[task.metric] == 1.0

    def test_exporters_get_the_label_names(self, task, teacher):
        metadata = task.export_metadata(teacher)
        assert sorted(metadata["id2label"]) == list(range(teacher.load_config().num_labels))
        assert {v: k for k, v in metadata["id2label"].items()} == metadata["label2id"]


def _one_hot(targets: np.ndarray, classes: int) -> np.ndarray:
    """Outputs whose argmax is the target: a perfect model scores 1 on every metric."""
    return np.eye(classes)[targets]


class TestSingleTexts(TaskContract):
    task_class = SequenceClassification
    task_section = {"data_root": str(DATA), "train": "topics/train.tsv", "test": "topics/test.tsv", "columns": ["label", "text"],
                    "text_column": "text", "dev_size": 64, "metric": "macro_f1", "max_length": 24}
    sizes = (320 - 64, 64, 80)


class TestTextPairs(TaskContract):
    task_class = SequenceClassification
    task_section = {"data_root": str(DATA), "train": "pairs/train.jsonl", "test": "pairs/test.jsonl", "text_column": "premise",
                    "text_pair_column": "hypothesis", "dev_size": 64, "max_length": 24}
    sizes = (320 - 64, 64, 80)
