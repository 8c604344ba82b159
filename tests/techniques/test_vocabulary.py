"""Vocabulary pruning on the real MiniLM: kept rows unchanged, dropped ids read their nearest row, smaller shipped files."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from autocompress.exporters import exporter
from autocompress.exporters._base import torch_outputs
from autocompress.models.shrunk import VOCAB_ATTR, RemappedEmbedding, load_shrunk, save_shrunk
from autocompress.techniques import prune_vocabulary_

ROWS = 3000
BLOCKS = "re:bert\\.encoder\\.layer\\.[0-5]\\..*"
INT4 = {"layers": {BLOCKS: {"bits": 4}}, "group_size": 32, "embedding_bits": 4}  # MatMulNBits: no run-time rounding


def logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def table_bytes(graph) -> int:
    """Bytes of the initializers the word embedding's GatherBlockQuantized reads."""
    node = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    return sum(len(i.raw_data) for i in graph.initializer if i.name in node.input)


@pytest.fixture
def pruned(model, train_vocabulary):
    original = model.get_input_embeddings().weight.detach().clone()
    smaller = copy.deepcopy(model)
    prune_vocabulary_(smaller, ROWS, counts=train_vocabulary.counts, always=train_vocabulary.always)
    return smaller, original


def test_the_most_used_tokens_keep_their_rows_and_the_others_read_their_nearest(pruned, train_vocabulary, tokenizer):
    smaller, original = pruned
    table = smaller.get_input_embeddings()
    assert isinstance(table, RemappedEmbedding) and table.weight.shape == (ROWS, 384) and getattr(smaller.config, VOCAB_ATTR) == ROWS
    counts, remap = train_vocabulary.counts, table.remap.long()
    kept_ids = [i for i in range(len(remap)) if torch.equal(table.weight[remap[i]], original[i])]
    assert set(tokenizer.all_special_ids) <= set(kept_ids) and len(kept_ids) == ROWS
    ranked = [i for i in torch.argsort(-counts, stable=True).tolist() if i not in tokenizer.all_special_ids]
    assert set(ranked[: ROWS - len(tokenizer.all_special_ids)]) <= set(kept_ids)  # the most used
    assert counts[kept_ids].sum() / counts.sum() > 0.9  # 3,000 of 30,522 rows carry over 90 % of the training text's tokens
    dropped = [i for i in ranked[ROWS:] if counts[i] == 0][:50]
    cosine = torch.nn.functional.normalize(original[dropped], dim=1) @ torch.nn.functional.normalize(original[kept_ids], dim=1).T
    expected = torch.tensor(kept_ids)[cosine.argmax(1)]
    assert torch.equal(table.weight[remap[dropped]], original[expected])


def test_a_sentence_of_kept_tokens_gives_the_same_logits(model, pruned, train_vocabulary, tokenizer):
    smaller, _ = pruned
    frequent = [i for i in torch.argsort(-train_vocabulary.counts, stable=True).tolist() if i not in tokenizer.all_special_ids][:200]
    ids = torch.tensor([[tokenizer.cls_token_id, *frequent[:30], tokenizer.sep_token_id], [tokenizer.cls_token_id, *frequent[100:130], tokenizer.sep_token_id]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    assert torch.equal(logits(smaller, batch), logits(model, batch))


@pytest.mark.parametrize("rows, message", [(3, "keep more than the 5 special tokens"), (30522, "fewer than the 30522 rows")])
def test_impossible_row_counts_are_refused(model, train_vocabulary, rows, message):
    with pytest.raises(ValueError, match=message):
        prune_vocabulary_(model, rows, counts=train_vocabulary.counts, always=train_vocabulary.always)
    assert not isinstance(model.get_input_embeddings(), RemappedEmbedding)


def test_saved_and_reloaded_with_or_without_autocompress(pruned, sentence_batches, tmp_path):
    smaller, _ = pruned
    save_shrunk(smaller, tmp_path)
    expected = logits(smaller, sentence_batches[0])
    assert torch.equal(logits(load_shrunk(tmp_path), sentence_batches[0]), expected)
    remote = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)
    assert torch.equal(logits(remote, sentence_batches[0]), expected)


def test_the_onnx_file_shrinks_by_the_dropped_rows_and_verifies(export_source, tmp_path):
    full = exporter("onnx").export(export_source(INT4), tmp_path / "full")
    source = export_source({**INT4, "vocab_rows": ROWS})
    report = exporter("onnx").export(source, tmp_path / "pruned")
    assert report.agreement == 1.0 and report.max_abs_diff <= report.tolerance
    graph = onnx.load(str(tmp_path / "pruned" / "model.onnx")).graph
    tables = {i.name: tuple(i.dims) for i in graph.initializer}
    assert (30522,) in tables.values()  # the id table, int32
    saved = (tmp_path / "full" / "model.onnx").stat().st_size - (tmp_path / "pruned" / "model.onnx").stat().st_size
    table = table_bytes(onnx.load(str(tmp_path / "full" / "model.onnx")).graph)  # 4-bit codes and their scales
    assert table > 5e6 and saved == pytest.approx(table * (30522 - ROWS) / 30522 - 30522 * 4, rel=0.01)  # less the int32 id table
    assert full.files == report.files


def test_hf_export_ships_the_remap_and_loads_with_remote_code(export_source, tmp_path):
    source = export_source({**INT4, "vocab_rows": ROWS})
    report = exporter("hf").export(source, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config[VOCAB_ATTR] == ROWS and "auto_map" in config and "pruned vocabulary" in report.notes[0]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert loaded.get_input_embeddings().weight.shape == (ROWS, 384)
    np.testing.assert_allclose(torch_outputs(loaded, source), source.float_activation_outputs, atol=1e-4)
