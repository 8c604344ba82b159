"""The ``decoder`` section: a causal-lm search's choices, weight-only quantization of a decoder's Linear layers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autocompress.config._base import Strict

DecoderBits = Literal[2, 4, 8, 32]
"""Weight widths ONNX Runtime's ``MatMulNBits`` runs on CPU (2, 4, 8), and 32: kept float."""


class DecoderConfig(Strict):
    """Per decoder block, one width for the attention projections (q, k, v, o) and one for the MLP (gate, up, down); per
    trial, one for ``lm_head`` (and the tied embedding), one group size and one method. Asymmetric groups with zero points,
    lowered to ONNX Runtime GenAI (``runtime.genai``)."""

    attention_bits: list[DecoderBits] = Field(default_factory=lambda: [4, 8], min_length=1,
                                              description="widths offered per block for q/k/v/o_proj; 32: float")
    mlp_bits: list[DecoderBits] = Field(default_factory=lambda: [4, 8], min_length=1,
                                        description="widths offered per block for gate/up/down_proj; 32: float")
    head_bits: list[DecoderBits] = Field(default_factory=lambda: [4, 8], min_length=1,
                                         description="widths offered, one per trial, for lm_head and the tied input embedding; 32: float")
    group_sizes: list[Literal[32, 64, 128]] = Field(default_factory=lambda: [32, 64], min_length=1,
                                                    description="weights sharing one scale and zero point, one size per trial; "
                                                    "it must divide every quantized layer's input width")
    methods: list[Literal["rtn", "gptq"]] = Field(default_factory=lambda: ["rtn", "gptq"], min_length=1,
                                                  description="rounding, one per trial: rtn (round to nearest) or gptq (reads "
                                                  "calibration windows, block by block)")
    per_block: bool = Field(True, description="a width per block; false: one attention and one MLP width for all blocks")
    average_bits: list[float] | None = Field(None, min_length=1, description="targets, one per trial: the trial's widths per block "
                                             "and for lm_head are allocated from the offered ones by each group's KL to the teacher "
                                             "when it alone is quantized (measured once per study), at most this many code bits per "
                                             "weight on average; null: widths sampled freely")
    sensitivity_windows: int = Field(4, ge=1, description="dev windows the per-group KL is measured on (with average_bits)")
    calibration_windows: int = Field(8, ge=1, description="GPTQ's windows of task.max_length tokens, from the dev file after "
                                     "the dev windows (never scored)")
    prompt_tokens: int = Field(128, ge=1, description="prompt length of the generation-speed probe (prefill ms)")
    new_tokens: int = Field(64, ge=2, description="greedy tokens generated per probe call (decode tokens/s)")
