"""The ``hf`` format: a Hugging Face folder that ``AutoModelForSequenceClassification.from_pretrained`` loads.

For a sentence-embedding model the folder is also a sentence-transformers
folder (``modules.json``, the Pooling config, Normalize): ``AutoModel`` loads
the encoder and ``SentenceTransformer(folder)`` the whole model, and it is
verified by sentence-transformers itself, pooling and normalization included.

The weights are the compressed model's: blocks, heads and FFN neurons
removed, pruned weights zero, recovery training kept, and quantized layers
rounded to the policy's grid (stored as float32, so the folder is not smaller
for its bits: the ``onnx``, ``torchao`` and ``llm-compressor`` formats carry
those). A model whose blocks all keep every head and one FFN width loads in
stock transformers (the layer count and FFN width in its config say it
all); uneven heads or widths need the project's model class, shipped beside
the weights as remote code (``trust_remote_code=True``), since transformers 5
can neither prune heads nor take one FFN width per block.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from autocompress.exporters._base import Exporter, Source, torch_outputs
from autocompress.models.pooling import write_sentence_transformers_files
from autocompress.models.shrunk import BLOCKS_ATTR, LAYOUT_ATTR, MODELING_FILE, VOCAB_ATTR, save_shrunk
from autocompress.tasks.heads import SentenceEmbedding
from autocompress.techniques.quantizer import QUANT_ATTR, runs_as_matmul_integer

EXACT = 1e-4
"""Reloaded weights run the same float math as the source (without run-time activation rounding)."""


class HuggingFaceExporter(Exporter):
    name = "hf"
    tolerance = EXACT
    tasks = ("sequence-classification", "embedding")

    def reference(self, source: Source) -> np.ndarray:
        """The simulation without the 8-bit layers' run-time activation rounding, which a float runtime does not do."""
        return source.float_activation_outputs

    def write(self, source: Source, folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
        save_shrunk(source.model, folder)
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        shapes = config.get(BLOCKS_ATTR, [])
        heads = AutoConfig.from_pretrained(folder).num_attention_heads  # DistilBERT stores it as n_heads
        stock = all(s["heads"] == heads for s in shapes) and len({s["intermediate_size"] for s in shapes}) <= 1 and VOCAB_ATTR not in config
        if stock:  # transformers alone rebuilds it: no remote code to trust
            for key in ("auto_map", BLOCKS_ATTR, LAYOUT_ATTR):
                config.pop(key, None)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (folder / MODELING_FILE).unlink(missing_ok=True)
        if isinstance(source.head, SentenceEmbedding):
            files, outputs = _sentence_transformers(source, folder, trust_remote_code=not stock)
        else:
            loaded = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=not stock, dtype=torch.float32)
            files, outputs = [], torch_outputs(loaded, source)
        files += sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".py") and p.name != "policy.json")
        notes = ["loads in stock transformers" if stock else f"uneven heads or FFN widths, or a pruned vocabulary: loads with trust_remote_code=True ({MODELING_FILE})"]
        rounded = [n for n, m in source.model.named_modules() if isinstance(m, torch.nn.Linear) and _rounds_activations(m)]
        if rounded:
            notes.append(f"{len(rounded)} 8-bit per-channel layers: weights on the int8 grid, but activations stay float here "
                         "(ONNX Runtime's MatMulInteger rounds them; see the onnx format)")
        return files, outputs, notes


def _sentence_transformers(source: Source, folder: Path, *, trust_remote_code: bool) -> tuple[list[str], np.ndarray]:
    """Make ``folder`` a sentence-transformers folder, load it there and embed the dev batches with it."""
    from sentence_transformers import SentenceTransformer

    declared = Path(source.tokenizer_dir) / "sentence_bert_config.json"
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    length = json.loads(declared.read_text()).get("max_seq_length") if declared.is_file() else None
    files = write_sentence_transformers_files(folder, source.head.pooling, hidden_size=config.hidden_size,
                                              max_seq_length=length or config.max_position_embeddings)
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=trust_remote_code).eval()
    with torch.no_grad():
        outputs = [model(dict(source.head.inputs(batch)))["sentence_embedding"].float().numpy() for batch in source.dev]
    return files, np.concatenate(outputs)


def _rounds_activations(linear: torch.nn.Linear) -> bool:
    quantized = getattr(linear, QUANT_ATTR, None)
    return quantized is not None and runs_as_matmul_integer(quantized.bits, quantized.group_size, linear.in_features)
