import json

import pytest

from autocompress.config import ConfigError, parse_config
from autocompress.data import batches, load_split, read_file


def test_reads_the_real_sst2_validation_split_in_place(data_root):
    examples = read_file(data_root / "sst2" / "validation.tsv", "sentence", "label")
    assert len(examples) == 872
    assert sum(examples.labels) == 444  # positives, per the data README


def test_csv_and_jsonl_with_configurable_columns(tmp_path):
    (tmp_path / "d.csv").write_text('text,y\n"good, really",1\nbad,0\n')
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "fine", "y": 1}) + "\n" + json.dumps({"text": "awful", "y": 0}) + "\n")
    csv_examples = read_file(tmp_path / "d.csv", "text", "y")
    assert csv_examples.texts == ("good, really", "bad") and csv_examples.labels == (1, 0)
    assert read_file(tmp_path / "d.jsonl", "text", "y").labels == (1, 0)


def test_wrong_column_names_the_file_and_the_columns(tmp_path):
    (tmp_path / "d.csv").write_text("text,y\nok,1\n")
    with pytest.raises(ConfigError, match=r"d\.csv.*task\.text_column='sentence'.*\['text', 'y'\]"):
        read_file(tmp_path / "d.csv", "sentence", "y")


def test_missing_file_and_bad_labels(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_file(tmp_path / "none.tsv", "sentence", "label")
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nok\t3\n")
    config = parse_config({"task": {"data_root": str(tmp_path), "validation": "d.tsv"}})
    with pytest.raises(ConfigError, match="outside 0..1"):
        load_split(config, "validation")


def test_subsets_and_batches(data_root, tokenizer):
    config = parse_config({"task": {"data_root": str(data_root), "validation_subset": 10, "train_subset": 20}})
    validation = load_split(config, "validation")
    assert len(validation) == 10 and len(load_split(config, "train")) == 20
    out = batches(validation, tokenizer, batch_size=4, max_length=16)
    assert [len(b["labels"]) for b in out] == [4, 4, 2]
    assert all(b["input_ids"].shape[1] <= 16 for b in out)
