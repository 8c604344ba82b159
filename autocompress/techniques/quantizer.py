"""Weight quantization, simulated in torch.

Linear (uniform) quantization is symmetric with a restricted range: ``bits``
give integer codes in ``[-qmax, qmax]`` with ``qmax = 2**(bits-1) - 1`` and one
float scale per output channel (``group_size=None``) or per block of
``group_size`` input columns. The codes and scales are kept on the module
(``QuantizedWeight``) so a runtime lowering can pack exactly the values the
simulation used; the module's float weight is replaced by their product.

8-bit per-channel layers also round their input activations per tensor to
uint8, as ONNX Runtime's MatMulInteger path does at run time.

Non-linear quantization fits a per-layer k-means codebook of ``2**bits`` values
(the seed's "non-linear quantization"); no CPU runtime executes it, so it is
simulation-only. 16 bits round to IEEE half precision.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

QUANT_ATTR = "autocompress_quant"
"""Attribute under which a quantized ``nn.Linear`` keeps its ``QuantizedWeight``."""

_float_activations = threading.local()


@contextmanager
def float_activations() -> Iterator[None]:
    """Run without the activation rounding of 8-bit layers: the plain graph that export traces."""
    previous = getattr(_float_activations, "on", False)
    _float_activations.on = True
    try:
        yield
    finally:
        _float_activations.on = previous


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes and scales of one symmetric, linearly quantized weight."""

    codes: torch.Tensor  # int8, [out_features, in_features]
    scales: torch.Tensor  # float32, [out_features, in_features // group_size]
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        out_features, in_features = self.codes.shape
        blocks = self.codes.float().view(out_features, -1, self.group_size)
        return (blocks * self.scales.unsqueeze(-1)).view(out_features, in_features)


def qmax(bits: int) -> int:
    """Largest code of the symmetric restricted grid for ``bits``."""
    return 2 ** (bits - 1) - 1


def quantize_weight(weight: torch.Tensor, bits: int, group_size: int | None = None) -> QuantizedWeight:
    """Quantize a 2-D weight symmetrically, per output channel or per block of columns."""
    if not 2 <= bits <= 8:
        raise ValueError(f"linear quantization supports 2..8 bits, got bits={bits}")
    out_features, in_features = weight.shape
    group = in_features if group_size is None else group_size
    if in_features % group:
        raise ValueError(f"group_size={group} does not divide in_features={in_features}")
    limit = qmax(bits)
    blocks = weight.detach().float().view(out_features, -1, group)
    scales = blocks.abs().amax(dim=-1) / limit
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.clamp(torch.round(blocks / scales.unsqueeze(-1)), -limit, limit)
    return QuantizedWeight(codes.view(out_features, in_features).to(torch.int8), scales, bits, group)


def kmeans_codebook(weight: torch.Tensor, bits: int, iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a 1-D k-means codebook of ``2**bits`` values; return (codebook, indices).

    Centroids start on the weights' quantiles, which converges in a few Lloyd
    steps for bell-shaped weight distributions.
    """
    values = weight.detach().float().flatten()
    k = 2**bits
    codebook = torch.quantile(values[:: max(1, values.numel() // 100_000)], torch.linspace(0, 1, k))
    for _ in range(iterations):
        indices = torch.bucketize(values, (codebook[1:] + codebook[:-1]) / 2)
        sums = torch.zeros(k).index_add_(0, indices, values)
        counts = torch.zeros(k).index_add_(0, indices, torch.ones_like(values))
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook).sort().values
    indices = torch.bucketize(values, (codebook[1:] + codebook[:-1]) / 2)
    return codebook, indices.view(weight.shape)


@torch.no_grad()
def quantize_linear_(
    linear: torch.nn.Linear, bits: int, *, scheme: str = "linear", group_size: int | None = None
) -> None:
    """Replace ``linear.weight`` in place by its quantized value; keep any zero pattern."""
    if bits >= 32:
        return
    weight = linear.weight
    mask = weight != 0
    if bits == 16:
        new = weight.half().float()
    elif scheme == "kmeans":
        codebook, indices = kmeans_codebook(weight, bits)
        new = codebook[indices]
    elif scheme == "linear":
        quantized = quantize_weight(weight, bits, group_size)
        setattr(linear, QUANT_ATTR, quantized)
        new = quantized.dequantize()
        if runs_as_matmul_integer(bits, group_size, linear.in_features):
            linear.register_forward_pre_hook(simulate_dynamic_uint8)
    else:
        raise ValueError(f"unknown quantization scheme {scheme!r}; allowed: 'linear', 'kmeans'")
    weight.copy_(new * mask)


def runs_as_matmul_integer(bits: int, group_size: int | None, in_features: int) -> bool:
    """8-bit per-channel weights lower to MatMulInteger, which also quantizes the activations."""
    return bits == 8 and (group_size is None or group_size == in_features)


def simulate_dynamic_uint8(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
    """Forward pre-hook: round the input as ONNX Runtime's DynamicQuantizeLinear does (per tensor, uint8).

    8-bit per-channel layers run as MatMulInteger, which quantizes activations
    too; simulating that keeps the torch accuracy honest. Skipped while
    exporting, so the exported graph stays the plain float one that lowering rewrites.
    """
    if torch.onnx.is_in_onnx_export() or getattr(_float_activations, "on", False):
        return None
    (x, *rest) = args
    low, high = torch.clamp(x.min(), max=0), torch.clamp(x.max(), min=0)
    scale = (high - low) / 255
    if scale == 0:
        return None
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    codes = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    rounded = (codes - zero_point) * scale
    return (x + (rounded - x).detach(), *rest)  # straight-through gradient when training


@torch.no_grad()
def quantize_embedding_(embedding: torch.nn.Embedding, bits: int = 8, group_size: int | None = None) -> QuantizedWeight:
    """Quantize an embedding table per row (one scale per token) or per block of a row, as runtimes gather it."""
    quantized = quantize_weight(embedding.weight, bits, group_size)
    setattr(embedding, QUANT_ATTR, quantized)
    embedding.weight.copy_(quantized.dequantize())
    return quantized
