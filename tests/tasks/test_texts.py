"""Unlabelled texts for the embedding task: plain-text files, columns of labelled files, carved splits and bad input."""

from __future__ import annotations

from collections import Counter

import pytest

from autocompress.config import ConfigError, parse_config
from autocompress.tasks import load_texts, read_raw


def embedding_config(data_root, **task):
    return parse_config({"task": {"type": "embedding", "data_root": str(data_root), **task}}, source="emb.yaml")


def test_a_txt_file_is_one_text_per_non_blank_line(data_root):
    raw = read_raw(data_root / "wikitext-2" / "valid.txt", "text", None)
    lines = [line.strip() for line in (data_root / "wikitext-2" / "valid.txt").read_text().splitlines()]
    assert raw.texts == tuple(line for line in lines if line) and raw.values == () and len(raw.texts) > 2000
    assert raw.texts[0] == "= Homarus gammarus ="


def test_test_is_carved_first_then_dev_and_neither_is_trained_on(data_root):
    config = embedding_config(data_root, train="wikitext-2/valid.txt", test=None, test_size=2000, dev_size=300)
    train, dev, test = (load_texts(config, split) for split in ("train", "dev", "test"))
    everything = read_raw(data_root / "wikitext-2" / "valid.txt", "text", None).texts
    assert (len(test), len(dev), len(train)) == (2000, 300, len(everything) - 2300)
    assert train.labels is None and dev.labels is None
    once = {text for text, count in Counter(everything).items() if count == 1}  # headings such as "= = History = =" repeat
    assert not set(test.texts) & set(train.texts) & once and not set(dev.texts) & set(train.texts) & once
    assert Counter(train.texts) + Counter(dev.texts) + Counter(test.texts) == Counter(everything)  # a partition of the file
    again = embedding_config(data_root, train="wikitext-2/valid.txt", test=None, test_size=2000, dev_size=500)
    assert load_texts(again, "test").texts == test.texts  # a larger dev leaves the untouched split as it was


def test_a_test_file_of_its_own_and_a_column_of_a_labelled_file(data_root):
    config = embedding_config(data_root, train="sst2/train.tsv", test="wikitext-2/test.txt", dev_size=100, train_subset=500)
    assert len(load_texts(config, "train")) == 500 and load_texts(config, "test").texts[1].startswith("Robert <unk>")
    assert len(load_texts(config, "dev")) == 100


@pytest.mark.parametrize(("task", "message"), [
    ({"train": "wikitext-2/valid.txt", "test": None, "test_size": 5000}, "field 'task.test_size' (5000) must be below the 2461 training texts"),
    ({"train": "sst2/train.tsv", "text_column": "text"}, "column task.text_column='text' not found"),
])
def test_bad_input_is_one_line_naming_the_field(data_root, task, message):
    with pytest.raises(ConfigError) as error:
        load_texts(embedding_config(data_root, **task), "dev")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_classifier_refuses_a_txt_file_and_an_embedding_task_a_classification_metric(data_root):
    with pytest.raises(ConfigError, match=r"valid\.txt: unsupported data format '\.txt' \(\.txt holds texts without labels\)"):
        read_raw(data_root / "wikitext-2" / "valid.txt", "sentence", "label")
    with pytest.raises(ConfigError, match="task.metric 'accuracy' is not a metric of task.type 'embedding'; allowed: cosine, recall_at_10, spearman"):
        embedding_config(data_root, metric="accuracy")
    defaults = embedding_config(data_root).task
    assert defaults.metric == "cosine" and defaults.test is None  # accuracy has no labels; 872 SST-2 rows are too few a corpus
    with pytest.raises(ConfigError, match=r"space.output_precision \['int8'\] quantizes output embeddings; task.type 'sequence-classification'"):
        parse_config({"space": {"output_precision": ["int8"]}}, source="clf.yaml")
