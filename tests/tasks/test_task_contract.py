"""The Task contract: every task passes the same suite; sequence classification runs it on single texts and on pairs,
sentence embeddings on unlabelled texts.

A subclass gives the ``task`` section of a config on committed data and the
expected shape of its splits. The suite reads the splits through the task,
checks that dev and test never overlap train, that batches carry the model's
inputs and the head's targets, that latency inputs are single unpadded rows,
that a teacher (a tiny random BERT, fine-tuned a few steps where the task
fine-tunes) scores with the task's metrics, the search's among them, that a
perfect output scores 1, and that the head's output survives ONNX export and
verification. A causal-lm task runs it on a tiny random Llama and two text
files, its output deployed the way its searches deploy it (ONNX Runtime GenAI).
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from families import TINY_TEACHER, tiny_model

from autocompress.config import TASK_METRICS, TaskType, parse_config
from autocompress.models.loading import load_tokenizer
from autocompress.runtime import export_onnx, verify
from autocompress.tasks import (
    EMBEDDING_TARGET,
    TASKS,
    CausalLanguageModeling,
    SentenceEmbeddingTask,
    SequenceClassification,
    Task,
    task_for,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def test_the_config_names_exactly_the_registered_tasks():
    assert set(get_args(TaskType)) == set(TASKS)


class TaskContract:
    """Subclasses set ``task_class``, ``task_section`` (a config's ``task:``) and ``sizes`` (train, dev, test rows), and define
    ``perfect_outputs(batches)``, outputs that score 1 on the task's metric."""

    task_class: type[Task]
    task_section: dict
    sizes: tuple[int, int, int]

    @pytest.fixture(scope="class")
    def task(self, tmp_path_factory):
        model = tmp_path_factory.mktemp("model")
        self.write_model(model)
        section = self.write_data(tmp_path_factory)
        config = parse_config({"model": str(model), "task": {"type": self.task_class.name, **section},
                               "teacher": TINY_TEACHER, **self.sections}, source="contract.yaml")
        return task_for(config)

    sections: dict = {}
    """Other config sections the task reads."""

    def write_data(self, tmp_path_factory) -> dict:
        """The ``task`` section, after writing any data it names that is not committed."""
        return self.task_section

    def write_model(self, folder):
        """An encoder without a head, as users start from: the task adds its own."""
        tiny_model("bert").base_model.save_pretrained(folder)
        load_tokenizer("default").save_pretrained(folder)

    @pytest.fixture(scope="class", autouse=True)
    def cache(self, tmp_path_factory):
        """Teachers and cached teacher outputs go to a scratch cache."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path_factory.mktemp("cache")))
            yield

    @pytest.fixture(scope="class")
    def teacher(self, task):
        return task.teacher()

    def test_the_registry_builds_this_task(self, task):
        assert type(task) is self.task_class and TASKS[self.task_class.name] is self.task_class

    def test_splits_have_their_rows_and_dev_and_test_are_held_out_of_train(self, task):
        train, dev, test = (task.load_split(split) for split in ("train", "dev", "test"))
        assert (len(train), len(dev), len(test)) == self.sizes
        assert not set(map(str, dev.inputs())) & set(map(str, train.inputs()))
        assert not set(map(str, test.inputs())) & set(map(str, train.inputs()))

    def test_check_names_the_task_in_one_line(self, task, teacher):
        line = task.check(teacher.load_config())
        assert line.startswith("task: ") and "\n" not in line

    def test_batches_carry_the_model_inputs_and_the_targets(self, task, teacher):
        tokenizer, head = load_tokenizer(str(teacher.path)), task.head()
        batch = task.batches(task.load_split("dev").head(5), tokenizer, batch_size=4)[0]
        assert set(head.target_names) <= set(batch) and "input_ids" in head.inputs(batch)
        assert not set(head.target_names) & set(head.inputs(batch))
        assert len(batch["input_ids"]) == 4 and batch["input_ids"].shape[1] <= task.config.task.max_length

    def test_latency_inputs_are_single_unpadded_rows(self, task, teacher):
        tokenizer = load_tokenizer(str(teacher.path))
        inputs = task.latency_inputs(task.load_split("dev"), tokenizer, count=6)
        assert len(inputs) == 6 and all(x["input_ids"].shape[0] == 1 and bool(x["attention_mask"].all()) for x in inputs)

    def test_the_teacher_scores_with_the_task_metrics_and_a_perfect_output_scores_one(self, task, teacher):
        head, model, tokenizer = task.head(), teacher.load(), load_tokenizer(str(teacher.path))
        batches = task.batches(task.load_split("dev"), tokenizer, batch_size=16)
        scores = head.evaluate(model, batches)
        assert head.metric == task.metric and task.metric in scores
        assert set(scores) <= set(TASK_METRICS[task.name])
        assert all(value >= 1.0 if name == "perplexity" else -1.0 <= value <= 1.0 for name, value in scores.items())
        assert head.scores(self.perfect_outputs(batches), batches)[task.metric] == pytest.approx(1.0)

    def test_the_head_output_is_exported_and_verified(self, task, teacher, tmp_path):
        head, model, tokenizer = task.head(), teacher.load(), load_tokenizer(str(teacher.path))
        batches = task.batches(task.load_split("dev"), tokenizer, batch_size=16)
        path = export_onnx(model, tmp_path / "model.onnx", example=head.inputs(batches[0]), lean=True, head=head)
        report = verify(path, model, batches, head=head)
        assert report.onnx_scores == pytest.approx(report.torch_scores, abs=1e-6) and report.max_abs_diff < 1e-4


class Classification(TaskContract):
    task_class = SequenceClassification

    def perfect_outputs(self, batches):
        """Outputs whose argmax is the label."""
        labels = np.concatenate([b["labels"].numpy() for b in batches])
        return np.eye(int(labels.max()) + 1)[labels]

    def test_exporters_get_the_label_names(self, task, teacher):
        metadata = task.export_metadata(teacher)
        assert sorted(metadata["id2label"]) == list(range(teacher.load_config().num_labels))
        assert {v: k for k, v in metadata["id2label"].items()} == metadata["label2id"]


class TestSingleTexts(Classification):
    task_section = {"data_root": str(DATA), "train": "topics/train.tsv", "test": "topics/test.tsv", "columns": ["label", "text"],
                    "text_column": "text", "dev_size": 64, "metric": "macro_f1", "max_length": 24}
    sizes = (320 - 64, 64, 80)


class TestTextPairs(Classification):
    task_section = {"data_root": str(DATA), "train": "pairs/train.jsonl", "test": "pairs/test.jsonl", "text_column": "premise",
                    "text_pair_column": "hypothesis", "dev_size": 64, "max_length": 24}
    sizes = (320 - 64, 64, 80)


class TestSentenceEmbeddings(TaskContract):
    """Unlabelled texts (the topics file's texts), dev and test carved from train; the tiny encoder is its own teacher."""

    task_class = SentenceEmbeddingTask
    task_section = {"data_root": str(DATA), "train": "topics/train.tsv", "test": None, "test_size": 64, "columns": ["label", "text"],
                    "text_column": "text", "dev_size": 32, "metric": "recall_at_10", "max_length": 24}
    sizes = (320 - 64 - 32, 32, 64)

    def perfect_outputs(self, batches):
        """The teacher's own embeddings."""
        return np.concatenate([b[EMBEDDING_TARGET].numpy() for b in batches])

    def test_the_teacher_is_the_model_as_it_is(self, task, teacher):
        assert teacher.path == Path(task.config.model) and not teacher.trained_now
        assert task.locate_teacher().as_is and task.export_metadata(teacher) == {}
        assert not task.pooling.declared and task.pooling.mode == "mean"  # no sentence-transformers files: mean pooling, said so


class TestSentenceEmbeddingsWithLabelledSets(TestSentenceEmbeddings):
    """The same texts with labelled pairs and retrieval files scored beside them on dev and test."""

    task_section = {**TestSentenceEmbeddings.task_section, "metric": "cosine",
                    "pairs": {"dev": "similarity/dev.jsonl", "test": "similarity/test.jsonl"},
                    "retrieval": {"queries": "retrieval/queries.jsonl", "corpus": "retrieval/corpus.jsonl",
                                  "dev": "retrieval/qrels/dev.tsv", "test": "retrieval/qrels/test.tsv"}}

    def perfect_outputs(self, batches):
        """The teacher's own embeddings, also of the labelled sets' rows (scored on their labels, not on it)."""
        return super().perfect_outputs(batches)

    @pytest.mark.parametrize("split", ["dev", "test"])
    def test_both_splits_score_the_labelled_sets(self, task, teacher, split):
        head, tokenizer = task.head(), load_tokenizer(str(teacher.path))
        scores = head.evaluate(teacher.load(), task.batches(task.load_split(split), tokenizer, batch_size=16))
        assert set(scores) == set(TASK_METRICS["embedding"]) and 0 < scores["recall_at_100"] <= 1
        assert "labelled pairs on dev, test; retrieval on dev, test" in task.check(teacher.load_config())


def _words(path, count, seed):
    rng = np.random.default_rng(seed)
    path.write_text(" ".join(f"t{i}" for i in rng.integers(3, 512, count)))


class TestCausalLanguageModeling(TaskContract):
    """Windows of 16 tokens of two random texts of the tiny decoder's vocabulary; the tiny Llama is its own teacher."""

    task_class = CausalLanguageModeling
    sections = {"decoder": {"calibration_windows": 4}}
    sizes = (4, 8, 10)  # calibration (train), dev, test windows

    def write_data(self, tmp_path_factory) -> dict:
        data = tmp_path_factory.mktemp("texts")
        _words(data / "valid.txt", 400, seed=0)
        _words(data / "test.txt", 160, seed=1)
        return {"data_root": str(data), "dev": "valid.txt", "test": "test.txt", "max_length": 16, "dev_subset": 8, "test_subset": 10}

    def write_model(self, folder):
        from decoder_families import save_tokenizer, tiny_decoder

        tiny_decoder("llama").save_pretrained(folder)
        save_tokenizer(folder)

    def perfect_outputs(self, batches):
        """Every scored token predicted with certainty: log-likelihood 0."""
        return np.zeros(sum(int(b["scored"].sum()) for b in batches))

    def test_the_head_output_is_exported_and_verified(self, task, teacher, tmp_path):
        """Deployed as its searches deploy it: an ONNX Runtime GenAI folder, whose perplexity is the torch model's."""
        from autocompress.runtime.genai import build_genai, genai_logits
        from autocompress.tasks.language_modeling import perplexity

        model, dev = teacher.load(), task.load_split("dev")
        build = build_genai(model, teacher.path, {}, tmp_path / "genai")
        head_scores = task.head().evaluate(model, task.batches(dev, None, batch_size=4))
        assert perplexity(genai_logits(build.folder), list(dev)) == pytest.approx(head_scores["perplexity"], rel=1e-4)

    def test_the_teacher_is_the_model_as_it_is(self, task, teacher):
        assert teacher.path == Path(task.config.model) and not teacher.trained_now and task.locate_teacher().as_is
