"""Vocabulary pruning alone: the teacher's accuracy on the untouched split with fewer word-embedding rows.

For each row count, the dropped token ids read either their nearest kept row
(cosine, what ``vocab_rows`` does) or ``[UNK]``'s row (the usual remapping),
and the word-embedding table is sized as it ships at 4 bits (codes and scales
of GatherBlockQuantized). No other compression, so the differences are the
vocabulary's alone.

    HF_HUB_OFFLINE=1 python bench/vocab_rows.py search_spaces/quickstart.yaml --out bench/results/vocab_rows.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from autocompress.config import load_config
from autocompress.controller.trial import by_length
from autocompress.measurement import accuracy, hardware_fingerprint
from autocompress.models.loading import load_tokenizer
from autocompress.tasks.data import batches, load_split
from autocompress.tasks.teacher import get_teacher
from autocompress.techniques import VocabularyPruning, prune_vocabulary_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--rows", type=int, nargs="*", default=[4000, 6000, 8000, 12000, 16000])
    parser.add_argument("--out", type=Path, default=Path("bench/results/vocab_rows.json"))
    args = parser.parse_args()

    config = load_config(args.config)
    teacher = get_teacher(config)
    model, tokenizer = teacher.load(), load_tokenizer(str(teacher.path))
    vocabulary = VocabularyPruning.for_task(config, tokenizer)
    test = batches(by_length(load_split(config, "test")), tokenizer, batch_size=64, max_length=config.task.max_length)
    test_ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in test])
    vocab, dim = model.get_input_embeddings().weight.shape
    rows_out = [{"rows": vocab, "mapping": "none", "test_accuracy": accuracy(model, test), "table_mb_4bit": table_mb(vocab, dim)}]
    print(f"train tokens: {int(vocabulary.counts.sum())}, distinct ids: {int((vocabulary.counts > 0).sum())} of {vocab}")
    for rows in args.rows:
        smaller = copy.deepcopy(model)
        prune_vocabulary_(smaller, rows, counts=vocabulary.counts, always=vocabulary.always)
        table = smaller.get_input_embeddings()
        kept = (table.weight[table.remap.long()] == model.get_input_embeddings().weight).all(1)  # ids that read their own row
        missing = float((~kept[test_ids]).float().mean())
        nearest = accuracy(smaller, test)
        unk = copy.deepcopy(smaller)
        unk.get_input_embeddings().remap[~kept] = unk.get_input_embeddings().remap[tokenizer.unk_token_id]
        for mapping, score in (("nearest", nearest), ("unk", accuracy(unk, test))):
            rows_out.append({"rows": rows, "mapping": mapping, "test_accuracy": score, "table_mb_4bit": table_mb(rows, dim),
                             "id_table_mb": vocab * 4 / 1e6, "test_tokens_dropped": missing})
        print(f"rows {rows}: test tokens without their own row {missing:.2%}; accuracy nearest {nearest:.4f}, unk {rows_out[-1]['test_accuracy']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                                    "hardware": hardware_fingerprint(threads=torch.get_num_threads()), "teacher": str(teacher.path),
                                    "test_rows": len(load_split(config, "test")), "rows": rows_out}, indent=2))


def table_mb(rows: int, dim: int) -> float:
    """4-bit codes plus one float32 scale per 128-value block of a row, as GatherBlockQuantized stores them."""
    return rows * (dim // 2 + 4 * -(-dim // 128)) / 1e6


if __name__ == "__main__":
    main()
