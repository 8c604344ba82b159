import json

import pytest

from autocompress.config import ConfigError, parse_config
from autocompress.tasks.data import batches, load_split, read_file


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
    (tmp_path / "t.tsv").write_text("sentence\tlabel\na\t0\nb\t1\nc\t0\n")  # the labels come from the train split
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nok\t3\n")
    config = parse_config({"task": {"data_root": str(tmp_path), "train": "t.tsv", "dev": "t.tsv", "test": "d.tsv"}})
    with pytest.raises(ConfigError, match=r"d\.tsv: label 3 in column 'label' is not one of the task's labels; allowed: integers 0\.\.1"):
        load_split(config, "test")


def test_subsets_and_batches(data_root, tokenizer):
    config = parse_config({"task": {"data_root": str(data_root), "test_subset": 10, "train_subset": 20}})
    validation = load_split(config, "test")
    assert len(validation) == 10 and len(load_split(config, "train")) == 20
    out = batches(validation, tokenizer, batch_size=4, max_length=16)
    assert [len(b["labels"]) for b in out] == [4, 4, 2]
    assert all(b["input_ids"].shape[1] <= 16 for b in out)


def test_dev_is_carved_from_train_stratified_seeded_and_held_out(data_root):
    config = parse_config({"task": {"data_root": str(data_root), "dev_size": 1000}})
    full = read_file(data_root / "sst2" / "train.tsv", "sentence", "label")
    train, dev, test = (load_split(config, split) for split in ("train", "dev", "test"))
    assert len(dev) == 1000 and len(train) == len(full) - 1000 and len(test) == 872
    # held out: no training row is a dev row (by position: the file has duplicate sentences)
    assert set(zip(train.texts, train.labels)) | set(zip(dev.texts, dev.labels)) <= set(zip(full.texts, full.labels))
    assert sorted(train.texts + dev.texts) == sorted(full.texts)
    # stratified: the dev split keeps the file's label share (the file is sorted by label)
    assert abs(sum(dev.labels) / 1000 - sum(full.labels) / len(full)) < 0.001
    assert len(set(dev.labels[:100])) == 2  # shuffled, so any head of it is a sample too
    # seeded: the same seed gives the same split, another seed another
    assert load_split(config, "dev") == dev
    other = parse_config({"task": {"data_root": str(data_root), "dev_size": 1000, "split_seed": 1}})
    assert load_split(other, "dev").texts != dev.texts


def test_a_config_can_name_its_own_dev_and_test_files(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"t{i}\t{i % 2}\n" for i in range(20)))
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nd0\t0\nd1\t1\n")
    (tmp_path / "test.tsv").write_text("sentence\tlabel\ne0\t1\n")
    config = parse_config({"task": {"data_root": str(tmp_path), "train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}})
    assert len(load_split(config, "train")) == 20  # nothing carved when dev has its own file
    assert load_split(config, "dev").texts == ("d0", "d1") and load_split(config, "test").texts == ("e0",)
    small = parse_config({"task": {"data_root": str(tmp_path), "train": "train.tsv", "test": "test.tsv", "dev_size": 20}})
    with pytest.raises(ConfigError, match="task.dev_size"):
        load_split(small, "dev")


def test_unreadable_empty_and_one_class_files_are_one_line_errors(tmp_path):
    (tmp_path / "latin1.tsv").write_bytes("sentence\tlabel\nok\t1\ncaf\xe9\t0\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.tsv: line 3: bytes that are not UTF-8"):
        read_file(tmp_path / "latin1.tsv", "sentence", "label")
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "y": 1}\n{"text": \n')
    with pytest.raises(ConfigError, match=r"broken\.jsonl: not one JSON object per line"):
        read_file(tmp_path / "broken.jsonl", "text", "y")
    (tmp_path / "empty.tsv").write_text("sentence\tlabel\n")
    (tmp_path / "one.tsv").write_text("sentence\tlabel\n" + "".join(f"t{i}\t1\n" for i in range(10)))
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nd\t0\n")
    task = {"data_root": str(tmp_path), "dev": "dev.tsv", "test": "dev.tsv"}
    with pytest.raises(ConfigError, match="the train split has no rows"):
        load_split(parse_config({"task": {**task, "train": "empty.tsv"}}), "train")
    with pytest.raises(ConfigError, match="holds only label 1; a classifier needs at least 2 classes"):
        load_split(parse_config({"task": {**task, "train": "one.tsv"}}), "train")


def test_too_few_rows_for_one_teacher_batch_fails_before_training(tmp_path):
    from autocompress.controller.preflight import preflight

    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"t{i}\t{i % 2}\n" for i in range(6)))
    task = {"data_root": str(tmp_path), "train": "train.tsv", "dev": "train.tsv", "test": "train.tsv"}
    config = parse_config({"task": task, "teacher": {"batch_size": 8}, "search": {"storage": f"sqlite:///{tmp_path}/s.db"}})
    with pytest.raises(ConfigError, match=r"teacher.batch_size' \(8\) exceeds the 6 training rows"):
        preflight(config)
