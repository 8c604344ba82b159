"""A quantized decoder as a GGUF file (llama.cpp, Ollama, LM Studio), written with the ``gguf`` package.

The model must come from a GGUF (``models.gguf``): its metadata, tokenizer and
tensor names are copied from that file, and each tensor is written from the
policy. The ``gguf`` package quantizes only to the legacy block types, and
what it writes must be what the policy's simulation computed, so:

- 4-bit groups of 32 become ``Q4_1`` (``w = d * q + m`` per block of 32, with
  ``d = scale`` and ``m = -zero * scale`` stored as float16: exact up to that
  rounding);
- a weight the policy leaves in float is written ``F32``;
- anything else is refused by name: 2 bits (only K-quants hold them), 8-bit
  asymmetric groups (``Q8_0`` is symmetric), groups of 64 or 128 (the legacy
  types have blocks of 32).

llama.cpp stores the query and key rows of each head interleaved (its
converter's ``permute``; transformers undoes it on load); rows are permuted
the same way here, which moves whole rows and so keeps each row's groups.
``verify_gguf`` reloads the file with transformers and compares its logits
with the simulated model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from autocompress.models.decoders import tied_embedding
from autocompress.techniques.weight_only import AffineWeight

_BLOCK_TENSORS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                  "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
                  "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_SKIPPED_FIELDS = ("GGUF.", "general.file_type")
"""Header fields the writer sets itself, and the file type, which no longer describes the tensors."""


class GgufRefusal(ValueError):
    """A layer's quantization has no GGUF type the ``gguf`` package writes exactly."""


def _module(tensor: str) -> str:
    """The Hugging Face parameter a llama.cpp tensor name holds (``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj``)."""
    if tensor.startswith("blk."):
        _, index, kind, _ = tensor.split(".")
        return f"model.layers.{index}.{_BLOCK_TENSORS[kind]}"
    return {"token_embd.weight": "model.embed_tokens", "output_norm.weight": "model.norm", "output.weight": "lm_head"}[tensor]


def _llama_rows(rows: int, heads: int) -> np.ndarray:
    """llama.cpp's order of a query or key projection's rows (its converter's ``permute``), as indices into the Hugging Face rows."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)


def refuse_unwritable(codes: Mapping[str, AffineWeight]) -> None:
    """A one-line ``GgufRefusal`` naming the first layer no GGUF type holds exactly, before anything is written."""
    for name, weight in codes.items():
        if (weight.bits, weight.group_size) != (4, 32):
            raise GgufRefusal(f"{name}: {weight.bits}-bit groups of {weight.group_size} have no GGUF type the gguf package writes exactly; "
                              "allowed: 4-bit groups of 32 (Q4_1) or float (F32)")


def q4_1_blocks(weight: AffineWeight) -> np.ndarray:
    """``weight`` (4-bit groups of 32) as GGUF ``Q4_1`` blocks: [rows, blocks * 20] bytes of float16 d, float16 m, 16 bytes of nibbles."""
    rows, columns = weight.codes.shape
    codes = weight.codes.numpy().reshape(rows, columns // 32, 2, 16)
    nibbles = codes[..., 0, :] | (codes[..., 1, :] << np.uint8(4))
    d = weight.scales.numpy().astype(np.float16)[..., None].view(np.uint8)
    m = (-weight.zeros * weight.scales).numpy().astype(np.float16)[..., None].view(np.uint8)
    return np.concatenate([d, m, nibbles], axis=-1).reshape(rows, -1)


def write_gguf(model: PreTrainedModel, codes: Mapping[str, AffineWeight], source: Path, out: Path) -> Path:
    """Write ``model`` (the simulated weights) with ``codes`` for its quantized Linears, in ``source``'s layout, to ``out``."""
    import gguf

    refuse_unwritable(codes)
    reader = gguf.GGUFReader(source)
    architecture = reader.fields["general.architecture"].contents()
    if architecture != "llama":
        raise GgufRefusal(f"{source}: GGUF architecture {architecture!r}; this writer maps llama only")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), architecture)
    for field in reader.fields.values():
        if not field.name.startswith(_SKIPPED_FIELDS) and field.name != "general.architecture":
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None)
    config, parameters = model.config, dict(model.named_parameters())
    for tensor in reader.tensors:
        module = _module(tensor.name)
        if module == "model.embed_tokens" and tied_embedding(model) and "lm_head" in codes:
            module = "lm_head"  # the table is lm_head's matrix: its codes, written once
        order = None
        if module.endswith(("q_proj", "k_proj")):
            heads = config.num_attention_heads if module.endswith("q_proj") else config.num_key_value_heads
            order = _llama_rows(parameters[f"{module}.weight"].shape[0], heads)
        if module in codes:
            weight = codes[module]
            if order is not None:
                weight = AffineWeight(weight.codes[order], weight.scales[order], weight.zeros[order], weight.bits, weight.group_size)
            writer.add_tensor(tensor.name, q4_1_blocks(weight), raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            values = parameters[f"{module}.weight"].detach().float().numpy()
            writer.add_tensor(tensor.name, np.ascontiguousarray(values[order] if order is not None else values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@torch.no_grad()
def verify_gguf(path: Path, model: PreTrainedModel, input_ids: torch.Tensor) -> float:
    """Reload ``path`` with transformers and return the largest difference of its logits from ``model``'s on ``input_ids``."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return float((reloaded(input_ids=input_ids).logits - model.eval()(input_ids=input_ids).logits).abs().max())
