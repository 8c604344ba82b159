"""Weight-only quantization as LLM quantizers do it: asymmetric, in groups of input columns, round-to-nearest or GPTQ.

A group of ``group_size`` consecutive input columns of one output row shares a
scale and an integer zero point: ``w = (code - zero) * scale`` with codes and
zero in ``0 .. 2**bits - 1``, the grid GPTQ, AWQ and ONNX Runtime's
``MatMulNBits`` use. GGUF's Q4_1 (``w = d * q + m``) would need a float zero
point, which ``MatMulNBits`` accepts at 2 and 4 bits but runs 25-35 times
slower on CPU (a 576 x 1536 layer at batch 1 on 2 cores: 4.2 ms against
0.12 ms with uint8 zero points), so a Q4_1 model is not reproduced exactly at
4 bits: each group's offset moves by up to half a step.

GPTQ (Frantar et al., 2022) quantizes one column at a time and spreads each
column's rounding error over the columns not yet quantized, weighted by the
inverse Hessian ``2 X^T X`` of the layer's inputs on calibration text
(``decoder_bits`` collects them block by block): the layer's output error,
not its weight error, is what it keeps small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHT_ONLY_BITS = (2, 3, 4, 8)
"""Widths the simulation rounds to; ``runtime.genai`` says which of them a CPU kernel runs."""
GROUP_SIZES = (32, 64, 128)
METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class AffineWeight:
    """Codes, scales and zero points of one weight quantized asymmetrically in groups of input columns."""

    codes: torch.Tensor  # uint8 [out_features, in_features], 0 .. 2**bits - 1
    scales: torch.Tensor  # float32 [out_features, in_features // group_size]
    zeros: torch.Tensor  # float32 holding integers 0 .. 2**bits - 1, same shape as scales
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        out_features, in_features = self.codes.shape
        blocks = self.codes.float().view(out_features, -1, self.group_size)
        return ((blocks - self.zeros.unsqueeze(-1)) * self.scales.unsqueeze(-1)).view(out_features, in_features)


def check_settings(bits: int, group_size: int, in_features: int) -> None:
    if bits not in WEIGHT_ONLY_BITS:
        raise ValueError(f"weight-only quantization takes bits in {WEIGHT_ONLY_BITS}, got {bits}")
    if in_features % group_size:
        raise ValueError(f"group_size={group_size} does not divide in_features={in_features}")


SHRINKS = torch.linspace(1.0, 0.7, 16)
"""Fractions of a group's range tried by ``_grid``: the reference GPTQ's ``mse`` search (its default grid, 0.7-1.0)."""


def _grid(blocks: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point of each group (last axis): its range, widened to hold 0 so the zero is a code,
    then shrunk by the fraction in ``SHRINKS`` whose grid rounds the group with the least error (|error|^2.4, as GPTQ's
    reference does): clipping a few large weights buys a finer step for all the others."""
    low, high = blocks.amin(dim=-1).clamp(max=0), blocks.amax(dim=-1).clamp(min=0)
    best_error = torch.full(low.shape, float("inf"))
    best_scales, best_zeros = torch.ones_like(low), torch.zeros_like(low)
    for shrink in SHRINKS:
        scales = (high - low) * shrink / (2**bits - 1)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        zeros = torch.round(-low * shrink / scales)
        rounded = (_codes(blocks, scales.unsqueeze(-1), zeros.unsqueeze(-1), bits) - zeros.unsqueeze(-1)) * scales.unsqueeze(-1)
        error = (rounded - blocks).abs().pow(2.4).sum(dim=-1)
        better = error < best_error
        best_error, best_scales, best_zeros = torch.where(better, error, best_error), torch.where(better, scales, best_scales), torch.where(better, zeros, best_zeros)
    return best_scales, best_zeros


def _codes(values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(values / scales + zeros), 0, 2**bits - 1)


def rtn(weight: torch.Tensor, bits: int, group_size: int) -> AffineWeight:
    """Round to nearest on each group's grid (``_grid``)."""
    out_features, in_features = weight.shape
    check_settings(bits, group_size, in_features)
    blocks = weight.detach().float().view(out_features, -1, group_size)
    scales, zeros = _grid(blocks, bits)
    codes = _codes(blocks, scales.unsqueeze(-1), zeros.unsqueeze(-1), bits)
    return AffineWeight(codes.view(out_features, in_features).to(torch.uint8), scales, zeros, bits, group_size)


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, *, damp: float = 0.01, block: int = 32) -> AffineWeight:
    """GPTQ with static groups: each group's grid is fixed from the (error-updated) weights when its first column is reached.

    ``hessian`` is ``X^T X`` of the layer's inputs (``[in_features, in_features]``);
    ``damp`` adds that fraction of its mean diagonal, the paper's default. Columns
    go in blocks of ``block`` (a multiple of ``group_size``, so a group never
    straddles two): inside a block the error is spread column by column, onto
    the columns after it in one matrix product (the paper's lazy batch update).
    Blocks of 32 ran fastest here: a 49152 x 576 ``lm_head`` in 3.6 s (6.5 s at 128).
    """
    out_features, in_features = weight.shape
    check_settings(bits, group_size, in_features)
    block = max(group_size, block // group_size * group_size)
    work = weight.detach().float().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0  # inputs that never fire: their columns cannot matter, quantize them as they are
    h[dead, dead] = 1
    h += torch.eye(in_features, dtype=h.dtype) * damp * torch.diag(h).mean()
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    codes = torch.zeros_like(work, dtype=torch.uint8)
    scales, zeros = torch.zeros(out_features, in_features // group_size), torch.zeros(out_features, in_features // group_size)
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        part, local, errors = work[:, start:end], inverse[start:end, start:end], torch.zeros(out_features, end - start)
        for offset in range(end - start):
            column = start + offset
            group = column // group_size
            if column % group_size == 0:
                scales[:, group], zeros[:, group] = _grid(part[:, offset:offset + group_size], bits)
            scale, zero = scales[:, group], zeros[:, group]
            code = _codes(part[:, offset], scale, zero, bits)
            codes[:, column] = code.to(torch.uint8)
            errors[:, offset] = (part[:, offset] - (code - zero) * scale) / local[offset, offset]
            part[:, offset + 1:] -= errors[:, offset:offset + 1] * local[offset, offset + 1:].unsqueeze(0)
        work[:, end:] -= errors @ inverse[start:end, end:]
    return AffineWeight(codes, scales, zeros, bits, group_size)
