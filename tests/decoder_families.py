"""Tiny random decoders of every family with an adapter, built from configs (no downloads).

2 blocks, hidden 64, 4 query heads sharing 2 key/value heads (grouped-query
attention), MLP 128, a 512-token vocabulary tied to ``lm_head``. The token ids
are random: the architecture, not a tokenizer, is under test.
"""

from __future__ import annotations

import torch
import transformers

SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True,
         "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
DECODERS: dict[str, type[transformers.PretrainedConfig]] = {
    "llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config, "phi3": transformers.Phi3Config,
}


EXTRA = {"phi3": {"max_position_embeddings": 4096, "original_max_position_embeddings": 4096}, "qwen3": {"head_dim": 16}}
"""Phi-3 with fewer positions than it was trained on is the long-RoPE variant, which needs rope scaling factors; Qwen3's
default head size (128) on this hidden size gives a graph the builder gets wrong (tests/decoders/test_genai.py)."""


def tiny_decoder(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(DECODERS[family](**SHAPE | EXTRA.get(family, {}))).eval()


def token_ids(length: int, seed: int = 0) -> torch.Tensor:
    """Random ids [1, length] of the tiny vocabulary."""
    return torch.randint(3, SHAPE["vocab_size"], (1, length), generator=torch.Generator().manual_seed(seed))


def save_tokenizer(folder) -> str:
    """A word-level tokenizer of the tiny vocabulary (``<unk>``, ``<s>``, ``</s>``, ``t3`` ... ``t511``) saved in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, SHAPE["vocab_size"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_tiny_gguf(path, seed: int = 0):
    """A GGUF file of a tiny Llama (64-token byte-level BPE vocabulary, 2 blocks), its matrices in Q4_1 as SmolLM2's are."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab, hidden, ffn, blocks, heads, kv = 64, 64, 128, 2, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((writer.add_context_length, 128), (writer.add_embedding_length, hidden), (writer.add_block_count, blocks),
                       (writer.add_feed_forward_length, ffn), (writer.add_head_count, heads), (writer.add_head_count_kv, kv),
                       (writer.add_rope_dimension_count, hidden // heads), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_rope_freq_base, 10000.0), (writer.add_vocab_size, vocab), (writer.add_tokenizer_model, "gpt2"),
                       (writer.add_bos_token_id, 1), (writer.add_eos_token_id, 2), (writer.add_pad_token_id, 2)):
        add(value)
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(vocab - 3)])
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges(["a a", "b b"])

    def tensor(name, shape):
        data = rng.standard_normal(shape).astype(np.float32) * 0.1
        if len(shape) == 1:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q4_1), raw_dtype=gguf.GGMLQuantizationType.Q4_1)

    tensor("token_embd.weight", (vocab, hidden))
    tensor("output_norm.weight", (hidden,))
    for i in range(blocks):
        for name, shape in (("attn_norm", (hidden,)), ("ffn_norm", (hidden,)), ("attn_q", (hidden, hidden)), ("attn_k", (hidden * kv // heads, hidden)),
                            ("attn_v", (hidden * kv // heads, hidden)), ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)),
                            ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            tensor(f"blk.{i}.{name}.weight", shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
