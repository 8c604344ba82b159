"""A decoder quantized under a per-block, per-projection-family bits plan, by round-to-nearest or GPTQ.

``plan(block, family)`` gives ``(bits, group_size)`` or ``None`` (kept float)
for each block index and projection family (``attn``, ``mlp``), and for
``(None, "lm_head")``. GPTQ goes block by block as its paper does: a block's
Hessians come from the inputs the blocks before it, already quantized, hand
it, so each block corrects what the earlier ones changed. ``lm_head`` comes
last, from the final norm's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from autocompress.models.decoders import decoder_blocks, decoder_family
from autocompress.techniques.weight_only import AffineWeight, gptq, rtn

Plan = Callable[[int | None, str], tuple[int, int] | None]


class _Captured(Exception):
    """Stops a forward pass once the first block's inputs are recorded."""


def _set(linear: torch.nn.Linear, weight: AffineWeight) -> AffineWeight:
    linear.weight.data.copy_(weight.dequantize().to(linear.weight.dtype))
    return weight


def _first_block_inputs(model: PreTrainedModel, calibration: Sequence[torch.Tensor]) -> list[tuple[tuple, dict]]:
    """The positional and keyword arguments the first block receives for each calibration window."""
    recorded: list[tuple[tuple, dict]] = []

    def record(module, args, kwargs):
        recorded.append((args, kwargs))
        raise _Captured

    handle = decoder_blocks(model)[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        for input_ids in calibration:
            try:
                model(input_ids=input_ids, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return recorded


def _hessians(module: torch.nn.Module, linears: dict[str, torch.nn.Linear], run: Callable[[], None]) -> dict[str, torch.Tensor]:
    sums = {name: torch.zeros(linear.in_features, linear.in_features) for name, linear in linears.items()}

    def hook(name):
        def accumulate(_, args):
            rows = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name].addmm_(rows.T, rows)
        return accumulate

    handles = [linear.register_forward_pre_hook(hook(name)) for name, linear in linears.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return sums


@torch.no_grad()
def quantize_decoder(model: PreTrainedModel, plan: Plan, *, method: str = "rtn", calibration: Sequence[torch.Tensor] = ()) -> dict[str, AffineWeight]:
    """Quantize ``model`` in place under ``plan``; the codes of every quantized Linear by full module name.

    ``calibration``: ``input_ids`` windows ([1, n] each) whose activations GPTQ reads; unused by ``rtn``.
    """
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    if method == "gptq" and not calibration:
        raise ValueError("GPTQ needs calibration windows")
    model.eval()
    family, codes = decoder_family(model.config), {}
    inputs = _first_block_inputs(model, calibration) if method == "gptq" else []
    for index, block in enumerate(decoder_blocks(model)):
        chosen = {}
        for kind in ("attn", "mlp"):
            settings = plan(index, kind)
            chosen |= {name: (linear, settings) for name, linear in family.projections(block, kind).items() if settings}
        if method == "rtn":
            codes |= {f"model.layers.{index}.{name}": _set(linear, rtn(linear.weight, *settings)) for name, (linear, settings) in chosen.items()}
            continue
        hessians = _hessians(block, {name: linear for name, (linear, _) in chosen.items()}, lambda: [block(*a, **k) for a, k in inputs])
        for name, (linear, settings) in chosen.items():
            codes[f"model.layers.{index}.{name}"] = _set(linear, gptq(linear.weight, hessians[name], *settings))
        outputs = [block(*args, **kwargs) for args, kwargs in inputs]  # the next block's inputs, through this one quantized
        inputs = [((out[0] if isinstance(out, tuple) else out, *args[1:]), kwargs) for out, (args, kwargs) in zip(outputs, inputs)]
    settings = plan(None, "lm_head")
    if settings:
        head = model.lm_head
        if method == "rtn":
            codes["lm_head"] = _set(head, rtn(head.weight, *settings))
        else:
            final = [model.model.norm(args[0]) for args, _ in inputs]
            hessian = _hessians(head, {"lm_head": head}, lambda: [head(x) for x in final])["lm_head"]
            codes["lm_head"] = _set(head, gptq(head.weight, hessian, *settings))
    return codes
