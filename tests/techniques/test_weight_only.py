"""Weight-only quantization: the asymmetric grid and its range search, GPTQ against round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from autocompress.techniques import weight_only
from autocompress.techniques.quantizer import quantize_weight
from autocompress.techniques.weight_only import gptq, rtn


def correlated_inputs(rows: int, seed: int) -> torch.Tensor:
    """Activations as a layer sees them: a few shared directions plus noise, and four outlier channels 10x larger."""
    mixing = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, 16, generator=generator) @ mixing + 0.1 * torch.randn(rows, 128, generator=generator)
    inputs[:, :4] *= 10
    return inputs


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_codes_and_zero_points_stay_on_the_grid_and_the_range_search_only_lowers_the_error(bits, monkeypatch):
    weight = torch.randn(32, 128) + 0.5  # skewed groups: an asymmetric grid spends no code on the empty side
    quantized = rtn(weight, bits, 32)
    assert quantized.codes.dtype == torch.uint8 and int(quantized.codes.max()) <= 2**bits - 1
    assert torch.equal(quantized.zeros, quantized.zeros.round()) and 0 <= quantized.zeros.min() and quantized.zeros.max() <= 2**bits - 1
    lowest = (quantized.zeros - 0) * -quantized.scales  # the grid's ends: values inside round to the nearest step
    highest = (2**bits - 1 - quantized.zeros) * quantized.scales
    blocks, error = weight.view(32, 4, 32), (quantized.dequantize() - weight).abs().view(32, 4, 32)
    inside = (blocks >= lowest.unsqueeze(-1)) & (blocks <= highest.unsqueeze(-1))
    assert (error[inside] <= (quantized.scales.unsqueeze(-1) / 2 + 1e-6).expand_as(error)[inside]).all()

    monkeypatch.setattr(weight_only, "SHRINKS", torch.tensor([1.0]))  # the plain min-max grid
    min_max = (rtn(weight, bits, 32).dequantize() - weight).abs().view(32, 4, 32)
    assert (error.pow(2.4).sum(-1) <= min_max.pow(2.4).sum(-1) + 1e-6).all()
    assert bits == 8 or error.pow(2).sum() < min_max.pow(2).sum()  # at 8 bits the step is already fine enough
    symmetric = quantize_weight(weight, bits, 32).dequantize()
    assert min_max.pow(2).mean() < (symmetric - weight).pow(2).mean()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_cuts_the_layers_output_error_on_held_out_inputs_to_a_fifth_of_rtns(bits):
    """Measured here: GPTQ's error is 0.023-0.031 of RTN's on such inputs; the bar is 0.2."""
    weight = torch.randn(96, 128, generator=torch.Generator().manual_seed(2))
    calibration, held_out = correlated_inputs(2048, 0), correlated_inputs(1024, 5)
    rounded, compensated = rtn(weight, bits, 32), gptq(weight, calibration.T @ calibration, bits, 32)

    def output_error(quantized):
        return (held_out @ (quantized.dequantize() - weight).T).pow(2).mean()

    assert output_error(compensated) < 0.2 * output_error(rounded)


def test_gptq_with_uncorrelated_inputs_has_nothing_to_compensate_and_equals_rtn():
    weight, hessian = torch.randn(16, 64), torch.diag(torch.rand(64) + 0.5)
    assert torch.equal(gptq(weight, hessian, 4, 32).codes, rtn(weight, 4, 32).codes)


def test_bad_settings_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"bits in \(2, 3, 4, 8\), got 5"):
        rtn(torch.randn(4, 64), 5, 32)
    with pytest.raises(ValueError, match="group_size=48 does not divide in_features=64"):
        rtn(torch.randn(4, 64), 4, 48)
