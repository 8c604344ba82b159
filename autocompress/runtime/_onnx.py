"""Export a (compressed) model to a float32 ONNX graph whose one output is its task head's (logits, a sentence embedding).

The TorchScript-based exporter (``dynamo=False``) is used: it takes ~2 s
instead of ~15 s for MiniLM, handles any head/neuron/layer count the model
currently has, and names every node after its module scope. The lowering does
not rely on those names: it finds each Linear's weight by value.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from transformers import PreTrainedModel

from autocompress.models.families import TOKENIZER_INPUTS, model_inputs
from autocompress.models.loading import eager_attention
from autocompress.runtime._lean import constant_reshapes
from autocompress.runtime._verify import LoweringMismatch, ort_feed, ort_session
from autocompress.tasks.heads import Head, Logits
from autocompress.techniques.quantizer import float_activations

EXPORT_ATOL = 1e-4


class _HeadOutput(torch.nn.Module):
    """Positional-argument wrapper returning only the head's output tensor.

    ``additive_mask``: the 2D padding mask is expanded once into the additive
    (batch, 1, 1, sequence) mask the attention adds, which transformers then
    passes through instead of building its own in the graph; the head (pooling)
    still reads the 2D mask.
    """

    def __init__(self, model: PreTrainedModel, names: tuple[str, ...], head: Head) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.head = head
        self.additive_mask = False

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, inputs, strict=True))
        kwargs = dict(given)
        if self.additive_mask:
            mask = kwargs["attention_mask"][:, None, None, :].to(torch.float32)
            kwargs["attention_mask"] = (1.0 - mask) * torch.finfo(torch.float32).min
        return self.head.read(self.model(**kwargs), given)


def _takes_additive_mask(wrapper: _HeadOutput, args: tuple[torch.Tensor, ...]) -> bool:
    """Switch ``wrapper`` to the additive mask if the model gives the same logits with it (families differ); return whether it did.

    Compared on ``args`` with the last row's last token masked, so a family that read the mask otherwise would show it.
    """
    position = wrapper.names.index("attention_mask")
    mask = args[position].clone()
    mask[-1, -1] = 0 if mask.shape[-1] > 1 else mask[-1, -1]
    probe = (*args[:position], mask, *args[position + 1 :])
    wrapper.additive_mask = False
    expected = wrapper(*probe).numpy()
    wrapper.additive_mask = True
    try:
        wrapper.additive_mask = bool(np.abs(wrapper(*probe).numpy() - expected).max() <= EXPORT_ATOL)
    except (ValueError, RuntimeError, TypeError, IndexError):  # a family that insists on a 2D mask
        wrapper.additive_mask = False
    return wrapper.additive_mask


def _input_names(model: PreTrainedModel, example: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """The inputs of ``example`` the model takes, in ``TOKENIZER_INPUTS`` order (``labels`` and other keys are ignored)."""
    missing = [name for name in TOKENIZER_INPUTS[:2] if name not in example]
    if missing:
        raise ValueError(f"example lacks {missing}; it needs 'input_ids' and 'attention_mask' (a tokenizer batch)")
    return tuple(name for name in model_inputs(model) if name in example)


def export_onnx(
    model: PreTrainedModel,
    path: str | Path,
    *,
    example: Mapping[str, torch.Tensor],
    opset: int | None = None,
    lean: bool = False,
    head: Head | None = None,
) -> Path:
    """Write ``model`` as fp32 ONNX (dynamic batch and sequence) and check it against torch on ``example``.

    The graph's one output is ``head``'s (default: a classifier's ``logits``).

    ``example`` is any tokenizer batch (extra keys such as ``labels`` are
    ignored); the graph then serves padded and unpadded batches of any size.
    The model's per-module training flags are restored afterwards.

    ``lean``: the graph to deploy, not the one ``torch.onnx.export`` gives a
    user: eager attention (no SDPA scaling and NaN guards per block), the
    padding mask expanded once where the family accepts an additive mask, and
    constant Reshape targets (``_lean``). Half the nodes after ONNX Runtime's
    own fusions, 6-17 % faster at batch 1 on 3- and 4-block MiniLM students
    (bench/RESULTS.md); checked against the model's own call like any export.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = _input_names(model, example)
    args = tuple(example[name] for name in names)
    head = head or Logits("accuracy")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names} | {head.output_name: {0: "batch"}}
    modes = {module: module.training for module in model.modules()}  # the exporter resets them recursively
    wrapper = _HeadOutput(model, names, head).eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), float_activations(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            torch_logits = wrapper(*args).numpy()
            if lean:
                stack.enter_context(eager_attention(model))
                _takes_additive_mask(wrapper, args)
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=False,
                input_names=list(names),
                output_names=[head.output_name],
                dynamic_axes=dynamic,
                opset_version=opset,
            )
    finally:
        for module, training in modes.items():
            module.training = training
    if lean:
        graph = onnx.load(path)
        _declare_output_shape(graph, torch_logits.shape)
        constant_reshapes(graph)
        onnx.save(graph, path)
    _check_export(path, {name: example[name] for name in names}, torch_logits, head.output_name)
    return path


def _declare_output_shape(graph: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    """Give the output the shape the exporter could not infer (a pooled, normalized embedding): (batch, the rest as torch gave it).

    ONNX Runtime's symbolic shape inference needs every graph output's rank.
    """
    declared = graph.graph.output[0].type.tensor_type
    if declared.HasField("shape"):
        return
    declared.shape.dim.add().dim_param = "batch"
    for size in shape[1:]:
        declared.shape.dim.add().dim_value = size


def _check_export(path: Path, example: Mapping[str, torch.Tensor], torch_logits: np.ndarray, output: str) -> None:
    """Optimum-style check: the exported graph reproduces the torch output on the example."""
    session = ort_session(path, threads=1)
    (onnx_logits,) = session.run([output], ort_feed(session, example))  # an input the graph never reads was dropped
    diff = float(np.abs(onnx_logits - torch_logits).max())
    if diff > EXPORT_ATOL:
        raise LoweringMismatch(f"exported graph {path} differs from torch by {diff:.2e} > {EXPORT_ATOL:.0e} on the example")
