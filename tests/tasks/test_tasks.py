"""Any text-classification task: sentence pairs, word labels, any number of classes, headerless TSV, JSON, Parquet, HF datasets.

The committed task files under tests/data/ (see its README) are read as a
search reads them; the end-to-end searches on them are at the bottom (slow).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest
import yaml
from transformers import AutoModelForSequenceClassification

from autocompress.config import ConfigError, parse_config
from autocompress.tasks.data import batches, load_split, read_file, task_labels

DATA = Path(__file__).resolve().parents[1] / "data"
TOPICS = ("Business", "Sci/Tech", "Sports", "World")  # sorted by name: the class ids without task.labels
TOPIC_TASK = {"data_root": str(DATA), "train": "topics/train.tsv", "test": "topics/test.tsv", "columns": ["label", "text"],
              "text_column": "text", "dev_size": 64}
PAIR_TASK = {"data_root": str(DATA), "train": "pairs/train.jsonl", "test": "pairs/test.jsonl", "text_column": "premise",
             "text_pair_column": "hypothesis", "dev_size": 64}


def config_of(task: dict, **rest) -> object:
    return parse_config({"task": task, **rest}, source="task.yaml")


def test_headerless_tsv_with_word_labels_maps_them_in_sorted_order():
    config = config_of(TOPIC_TASK)
    labels = task_labels(config)
    assert labels.names == TOPICS and labels.num_labels == 4 and labels.words and labels.by_name
    train, dev, test = (load_split(config, split) for split in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (320 - 64, 64, 80)
    first = (DATA / "topics" / "train.tsv").read_text().splitlines()[0].split("\t")  # no header: line 1 is a row
    assert first[1] in train.texts + dev.texts and train.pairs is None
    rows = dict(line.split("\t")[::-1] for line in (DATA / "topics" / "test.tsv").read_text().splitlines())
    assert all(TOPICS[label] == rows[text] for text, label in zip(test.texts, test.labels))
    assert set(Counter(train.labels)) == {0, 1, 2, 3}


def test_parquet_holds_the_same_rows_as_the_headerless_tsv():
    tsv = read_file(DATA / "topics" / "train.tsv", "text", "label", columns=["label", "text"])
    parquet = read_file(DATA / "topics" / "train.parquet", "text", "label")
    assert parquet == tsv and len(parquet) == 320
    config = config_of({**TOPIC_TASK, "train": "topics/train.parquet", "test": "topics/test.parquet", "columns": None})
    assert task_labels(config).names == TOPICS
    assert load_split(config, "test") == load_split(config_of(TOPIC_TASK), "test")


def test_task_labels_fix_the_id_order_and_num_labels_must_agree():
    order = ["World", "Sports", "Business", "Sci/Tech"]
    config = config_of({**TOPIC_TASK, "labels": order})
    test = load_split(config, "test")
    rows = dict(line.split("\t")[::-1] for line in (DATA / "topics" / "test.tsv").read_text().splitlines())
    assert all(order[label] == rows[text] for text, label in zip(test.texts, test.labels))
    assert task_labels(config).id2label == dict(enumerate(order)) and task_labels(config).label2id["Sci/Tech"] == 3
    assert task_labels(config_of({**TOPIC_TASK, "num_labels": 4})).num_labels == 4
    with pytest.raises(ConfigError, match=r"^task\.yaml: field 'task\.num_labels' is 3, but the train split's labels give 4 labels: Business"):
        task_labels(config_of({**TOPIC_TASK, "num_labels": 3}))
    with pytest.raises(ConfigError, match=r"train\.tsv: label 'Sci/Tech' in column 'label' is not in task\.labels; allowed: World, Sports, Business$"):
        task_labels(config_of({**TOPIC_TASK, "labels": ["World", "Sports", "Business"]}))
    for bad, message in ((["World", "World"], "repeated: \\['World'\\]"), (order, "disagrees with the 4 names")):
        task = {**TOPIC_TASK, "labels": bad, **({"num_labels": 5} if bad == order else {})}
        with pytest.raises(ConfigError, match=message):
            config_of(task)


def test_a_test_label_outside_the_train_labels_is_one_line_naming_file_value_and_allowed(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nfine,positive\nawful,negative\nok,positive\n")
    (tmp_path / "test.csv").write_text("text,label\nmeh,neutral\n")
    config = config_of({"data_root": str(tmp_path), "train": "train.csv", "dev": "train.csv", "test": "test.csv", "text_column": "text"})
    with pytest.raises(ConfigError) as error:
        load_split(config, "test")
    message = str(error.value)
    assert message == (f"{tmp_path / 'test.csv'}: label 'neutral' in column 'label' is not one of the task's labels; "
                       "allowed: negative, positive (the train split's labels)")
    assert load_split(config, "dev").labels == (1, 0, 1)


def test_integer_labels_keep_their_ids_and_infer_num_labels(tmp_path):
    (tmp_path / "three.tsv").write_text("sentence\tlabel\n" + "".join(f"s{i}\t{i % 3}\n" for i in range(9)))
    config = config_of({"data_root": str(tmp_path), "train": "three.tsv", "dev": "three.tsv", "test": "three.tsv"})
    labels = task_labels(config)
    assert labels.names == ("0", "1", "2") and not labels.words and not labels.by_name
    assert load_split(config, "test").labels == (0, 1, 2) * 3
    (tmp_path / "stars.tsv").write_text("sentence\tlabel\n" + "".join(f"s{i}\t{i % 5 + 1}\n" for i in range(10)))
    stars = {"data_root": str(tmp_path), "train": "stars.tsv", "dev": "stars.tsv", "test": "stars.tsv"}
    with pytest.raises(ConfigError, match=r"stars\.tsv: integer labels in column 'label' must run 0\.\.N-1 without gaps, the train split has 1, 2, 3, 4, 5"):
        task_labels(config_of(stars))
    # named as words, the same integers map by name; with num_labels a head of 6 keeps the ints
    assert load_split(config_of({**stars, "labels": ["1", "2", "3", "4", "5"]}), "test").labels[:5] == (0, 1, 2, 3, 4)
    assert task_labels(config_of({**stars, "num_labels": 6})).names == tuple("012345")


def test_sentence_pairs_are_tokenized_together_everywhere(tokenizer):
    from autocompress.controller.trial import task_batches
    from autocompress.measurement import latency_inputs, pick_sentences

    config = config_of(PAIR_TASK, search={"seed": 3})
    assert task_labels(config).names == ("entailment", "not_entailment")
    test = load_split(config, "test")
    first = json.loads((DATA / "pairs" / "test.jsonl").read_text().splitlines()[0])
    assert (test.texts[0], test.pairs[0], test.labels[0]) == (first["premise"], first["hypothesis"], ["entailment", "not_entailment"].index(first["label"]))
    (batch, *_) = batches(test.head(4), tokenizer, batch_size=4, max_length=48)
    expected = tokenizer(list(test.texts[:4]), list(test.pairs[:4]), truncation=True, padding=True, max_length=48, return_tensors="pt")
    assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    assert (batch["token_type_ids"] == 1).any(dim=1).all()  # every row carries its second text as segment B
    # dev, test and calibration batches of a trial, and the timed latency inputs, all carry both texts
    dev, scored, calibration = task_batches(config, tokenizer)
    for tensors in (*dev, *scored, calibration):
        assert ((tensors["input_ids"] == tokenizer.sep_token_id).sum(dim=1) == 2).all()
    picked = pick_sentences(test.inputs(), n=4)
    assert all(isinstance(item, tuple) and len(item) == 2 for item in picked)
    for encoded, (text, pair) in zip(latency_inputs(tokenizer, picked, max_length=48), picked):
        assert encoded["input_ids"].tolist() == tokenizer([text], [pair], truncation=True, max_length=48, return_tensors="pt")["input_ids"].tolist()


def test_file_errors_are_one_line_with_file_field_and_allowed(tmp_path):
    (tmp_path / "short.tsv").write_text("World\tfirst row\nSports\n")
    with pytest.raises(ConfigError, match=r"short\.tsv: line 2: 1 fields, task\.columns names 2 \(label, text\)$"):
        read_file(tmp_path / "short.tsv", "text", "label", columns=["label", "text"])
    (tmp_path / "headerless.tsv").write_text("World\tfirst row\nSports\tsecond row\n")
    with pytest.raises(ConfigError, match=r"headerless\.tsv: columns task\.text_column='text' / task\.label_column='label' not found; "
                                          r"the file has \['World', 'first row'\]; a file without a header row needs task\.columns$"):
        read_file(tmp_path / "headerless.tsv", "text", "label")
    (tmp_path / "d.jsonl").write_text('{"premise": "a", "label": "x"}\n')
    with pytest.raises(ConfigError, match=r"d\.jsonl: column task\.text_pair_column='hypothesis' not found; the file has \['premise', 'label'\]$"):
        read_file(tmp_path / "d.jsonl", "premise", "label", text_pair_column="hypothesis")
    with pytest.raises(ConfigError, match=r"d\.jsonl: task\.columns names the columns of headerless \.tsv/\.csv files"):
        read_file(tmp_path / "d.jsonl", "premise", "label", columns=["premise", "label"])
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"d\.txt: unsupported data format '\.txt' \(\.txt holds texts without labels\); allowed: \.tsv, \.csv, \.jsonl, \.json, \.parquet$"):
        read_file(tmp_path / "d.txt", "text", "label")
    (tmp_path / "nolabel.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    with pytest.raises(ConfigError, match=r"nolabel\.jsonl: line 2: no label in column 'label' \(task\.label_column\)$"):
        read_file(tmp_path / "nolabel.jsonl", "text", "label")
    with pytest.raises(ConfigError, match=r"task\.columns \['label', 'txt'\] lacks \['text'\]"):
        config_of({**TOPIC_TASK, "columns": ["label", "txt"]})


def test_json_array_and_json_lines_files(tmp_path):
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "array.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "lines.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name in ("array.json", "lines.json"):
        examples = read_file(tmp_path / name, "text", "label")
        assert examples.texts == ("good", "bad") and examples.labels == (1, 0)  # neg < pos
    (tmp_path / "scalars.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"scalars\.json: row 1: expected a JSON object of columns, got int"):
        read_file(tmp_path / "scalars.json", "text", "label")


def test_hugging_face_datasets_give_class_label_names_and_pairs(tmp_path):
    import datasets

    features = datasets.Features({"question": datasets.Value("string"), "sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    rows = {"question": [f"q{i}" for i in range(8)], "sentence": [f"s{i}" for i in range(8)], "label": [i % 2 for i in range(8)]}
    folder = tmp_path / "qnli"
    folder.mkdir()
    for split in ("train", "validation"):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}.parquet")
    config = config_of({"hf_dataset": str(folder), "text_column": "question", "text_pair_column": "sentence", "dev_size": 2})
    labels = task_labels(config)
    assert labels.names == ("entailment", "not_entailment") and labels.words and not labels.by_name
    test = load_split(config, "test")
    assert test.texts[:2] == ("q0", "q1") and test.pairs[:2] == ("s0", "s1") and test.labels[:2] == (0, 1)
    # the same Parquet file read as a local file keeps the ClassLabel names datasets wrote into it
    local = config_of({"data_root": str(folder), "train": "train.parquet", "test": "validation.parquet", "text_column": "question",
                       "text_pair_column": "sentence", "dev_size": 2})
    assert task_labels(local).names == ("entailment", "not_entailment")
    missing = config_of({"hf_dataset": str(folder), "text_column": "premise", "dev_size": 2})
    with pytest.raises(ConfigError, match=r"column task\.text_column='premise' not found; the dataset has \['question', 'sentence', 'label'\]"):
        load_split(missing, "train")


def test_the_teacher_key_follows_the_label_names_and_the_pairs():
    from autocompress.tasks.teacher import teacher_key

    config = config_of(TOPIC_TASK)
    train = load_split(config, "train")
    key = teacher_key(config, train)
    assert key == teacher_key(config, train)
    reordered = config_of({**TOPIC_TASK, "labels": ["World", "Sports", "Business", "Sci/Tech"]})
    assert teacher_key(reordered, load_split(reordered, "train")) != key
    pairs = config_of(PAIR_TASK)
    train = load_split(pairs, "train")
    assert teacher_key(pairs, train) != teacher_key(pairs, type(train)(train.texts, train.labels))  # same premises, no hypotheses


def test_a_new_teacher_names_its_classes(tmp_path, monkeypatch):
    from autocompress.tasks.teacher import get_teacher

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    config = config_of({**TOPIC_TASK, "train_subset": 8, "max_length": 16}, teacher={"steps": 1, "batch_size": 4})
    saved = json.loads((get_teacher(config).path / "config.json").read_text())
    assert saved["id2label"] == {"0": "Business", "1": "Sci/Tech", "2": "Sports", "3": "World"}
    assert saved["label2id"]["World"] == 3 and get_teacher(config).load().classifier.out_features == 4


def test_searches_starting_together_train_the_teacher_once_and_all_load_it(tmp_path, monkeypatch):
    """Without the lock, three searches on one cache each trained it into one staging folder and replaced the folder the
    others were loading (``no file named model.safetensors``)."""
    import threading

    from autocompress.tasks.teacher import get_teacher

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    config = config_of({**TOPIC_TASK, "train_subset": 8, "max_length": 16}, teacher={"steps": 1, "batch_size": 4})
    barrier, got, failed = threading.Barrier(3), [], []

    def search():
        barrier.wait()
        try:
            teacher = get_teacher(config)
            got.append((teacher.path, teacher.trained_now, teacher.load().classifier.out_features))
        except Exception as error:  # noqa: BLE001 - reported below
            failed.append(repr(error))

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed
    assert len({path for path, _, _ in got}) == 1 and sorted(trained for _, trained, _ in got) == [False, False, True]
    assert {width for _, _, width in got} == {4}


def test_preflight_refuses_a_checkpoint_with_other_label_names_or_head_size(tmp_path):
    from autocompress.controller.preflight import preflight
    from autocompress.models.loading import load_classifier

    def checkpoint(name: str, **labels) -> str:
        model = load_classifier("default", num_labels=len(labels.get("id2label", {0: 0, 1: 1})))
        for key, value in labels.items():
            setattr(model.config, key, value)
        model.save_pretrained(tmp_path / name)
        return str(tmp_path / name)

    storage = {"storage": f"sqlite:///{tmp_path}/s.db"}
    swapped = checkpoint("swapped", id2label={0: "not_entailment", 1: "entailment"}, label2id={"not_entailment": 0, "entailment": 1})
    with pytest.raises(ConfigError) as error:
        preflight(config_of(PAIR_TASK, teacher={"checkpoint": swapped}, search=storage))
    assert str(error.value) == (f"task.yaml: field 'teacher.checkpoint': {swapped!r} has id2label [not_entailment, entailment], the task has "
                                "[entailment, not_entailment] (the train split's labels); set task.labels to the checkpoint's names in its order")
    fixed = config_of({**PAIR_TASK, "labels": ["not_entailment", "entailment"]}, teacher={"checkpoint": swapped}, search=storage)
    checked = preflight(fixed)
    assert checked.teacher.ready  # the --dry-run report names the task's shape and classes
    assert "task: sentence pairs (premise + hypothesis), 2 labels in id order: not_entailment, entailment (task.labels)" in checked.describe()
    unnamed = checkpoint("unnamed")  # LABEL_0, LABEL_1: nothing to compare but the size
    assert preflight(config_of(PAIR_TASK, teacher={"checkpoint": unnamed}, search=storage)).teacher.ready
    with pytest.raises(ConfigError, match=r"has a 2-label head, the task has task\.num_labels=4 \(Business, Sci/Tech, Sports, World\)$"):
        preflight(config_of(TOPIC_TASK, teacher={"checkpoint": unnamed}, search=storage))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "names", "floor", "vocab_rows"),
    [({**TOPIC_TASK, "metric": "macro_f1"}, list(TOPICS), 0.4, None), (PAIR_TASK, ["entailment", "not_entailment"], 0.65, 600)],
    ids=["topics-headerless-tsv", "pairs-jsonl-600-token-rows"],
)
def test_a_short_search_on_a_users_task_exports_named_labels(task, names, floor, vocab_rows, tmp_path, monkeypatch, mlflow_store):
    """The whole CLI search on a task of the user's own (4 word classes; sentence pairs): its exports say what each class is.

    The pair search keeps 600 word-embedding rows: its files carry the id table and rebuild from the policy.
    """
    import mlflow
    import optuna

    from autocompress.cli import main

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    config = {
        "task": {**task, "max_length": 32},
        "teacher": {"steps": 40, "batch_size": 16, "learning_rate": 2e-4},
        "space": {"weight_bits": [8, 32], "prune_ratios": [0.0, 0.5], "embedding_bits": [8, 32], "vocab_rows": [vocab_rows]},
        "search": {"n_trials": 2, "study_name": "task", "storage": "sqlite:///study.db", "population_size": 2,
                   "constraints": {"max_accuracy_drop": None}},
        "latency": {"sentences": 4, "warmup": 2, "repeats": 8, "rounds": 4},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "task"},
        "output": str(tmp_path / "out"),
    }
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(mlflow_store, tmp_path / "mlflow.db")  # an empty store, as MLflow would create it
    assert main(["search", str(tmp_path / "task.yaml")]) == 0

    id2label = {str(i): name for i, name in enumerate(names)}
    exports = tmp_path / "out" / "exports"
    assert json.loads((exports / "hf" / "config.json").read_text())["id2label"] == id2label
    onnx_config = json.loads((exports / "onnx" / "config.json").read_text())
    assert onnx_config["id2label"] == id2label and onnx_config["label2id"] == {name: i for i, name in enumerate(names)}
    for name in ("onnx", "hf"):  # reloaded in its runtime, the export gave the source's logits on the dev rows
        report = json.loads((exports / name / "export_report.json").read_text())
        assert report["rows"] == 64 and report["max_abs_diff"] <= report["tolerance"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # the registered champion's MLmodel names the classes too
    assert mlflow.models.get_model_info("models:/autocompress-task@champion").metadata["id2label"] == id2label
    shipped = onnx.load(tmp_path / "out" / "best_model" / "model.onnx")  # the chosen ONNX file names its classes itself
    assert json.loads({p.key: p.value for p in shipped.metadata_props}["id2label"]) == id2label
    hf = AutoModelForSequenceClassification.from_pretrained(exports / "hf", trust_remote_code=vocab_rows is not None)
    assert hf.get_input_embeddings().weight.shape[0] == (vocab_rows or 30522)
    study = optuna.load_study(study_name="task", storage="sqlite:///study.db")
    baseline = study.user_attrs["baseline"]
    assert baseline["test_accuracy"] > floor, baseline  # the teacher learned the task (chance: 1 / classes)
    metric = task.get("metric", "accuracy")  # the multi-class search optimizes macro-F1
    assert study.metric_names[0] == f"dev_{metric}" and 0 < baseline[f"test_{metric}"] <= 1
