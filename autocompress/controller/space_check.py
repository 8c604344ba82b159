"""Check a search space against the model's shape before anything is trained.

A search trains (or loads) the teacher first and only then samples policies,
so a space the model cannot satisfy — 0 heads with quantization, a head count
or FFN width above the model's, more blocks than it has, a group size that
does not divide a pruned width or has no CPU kernel — used to fail minutes to
an hour in, often as a traceback. ``check_space`` needs only the model's
config (``AutoConfig.from_pretrained``, no weights) and raises a one-line
``ConfigError`` naming the file, the field, the bad value and what is allowed;
otherwise it returns a ``SpaceSummary`` for a ``--dry-run`` print.

The widths checked are every ``in_features`` a block's Linear can have under
any reachable choice: q/k/v and the FFN input take ``hidden_size``, the
attention output ``heads * head_dim``, the FFN output the FFN width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PretrainedConfig

from autocompress import techniques
from autocompress.config import ConfigError, SearchConfig
from autocompress.models.families import adapter_for, ffn_width, len_blocks, supported_types
from autocompress.runtime import kernel_refusal, nbits_block
from autocompress.space import sample_policy

_STRUCTURED_FIELDS = ("heads", "ffn_widths", "num_blocks")


@dataclass(frozen=True)
class SpaceSummary:
    """The model's shape and the size of the space, for a ``--dry-run`` print."""

    model_type: str
    num_blocks: int
    num_heads: int
    head_dim: int
    hidden_size: int
    ffn_width: int
    decisions: int
    """Categorical decisions ``sample_policy`` makes per trial."""
    policies: int
    """Distinct points of the space: the product of every decision's choice count."""
    in_features: tuple[int, ...]
    """Every input width a block's Linear can have under some choice."""

    def describe(self) -> str:
        return "\n".join(
            [
                f"model: {self.model_type}, {self.num_blocks} blocks, {self.num_heads} heads x {self.head_dim}, "
                f"hidden {self.hidden_size}, FFN {self.ffn_width}",
                f"space: {self.decisions} decisions per trial, {self.policies:,} distinct policies",
                f"Linear input widths reachable: {', '.join(map(str, self.in_features))}",
            ]
        )


class _Recorder:
    """A stand-in Optuna trial: records each decision's choices and takes the first."""

    def __init__(self) -> None:
        self.choices: dict[str, int] = {}

    def suggest_categorical(self, name: str, choices: list) -> object:
        self.choices[name] = len(set(choices))
        return choices[0]


def check_space(config: SearchConfig, model_config: PretrainedConfig) -> SpaceSummary:
    """Raise a one-line ``ConfigError`` if any reachable choice of ``config.space`` cannot run on this model."""
    space, source = config.space, config.source or "<config>"

    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: space.{field}: {message}")

    model_type = getattr(model_config, "model_type", "") or "unknown"
    adapter = adapter_for(model_config)
    structured = [name for name in _STRUCTURED_FIELDS if getattr(space, name)]
    if structured and adapter is None:
        raise fail(
            structured[0],
            f"{getattr(space, structured[0])} needs structured pruning, which supports model types "
            f"{supported_types()}, not {model_type!r}; remove space.{'/'.join(structured)}",
        )
    if space.heads and not adapter.prunes_heads:
        raise fail("heads", f"{space.heads} is not allowed for {adapter.family}: {adapter.layout.fixed_heads}; remove space.heads")
    if space.num_blocks and not adapter.drops_blocks:
        raise fail("num_blocks", f"{space.num_blocks} is not allowed for {adapter.family}: {adapter.notes}; remove space.num_blocks")

    blocks, heads = len_blocks(model_config), model_config.num_attention_heads
    hidden = model_config.hidden_size
    head_dim = getattr(model_config, "attention_head_size", None) or hidden // heads
    ffn = ffn_width(model_config)
    quantized = sorted(b for b in space.weight_bits if b < 16)
    limits = (
        ("heads", heads, f"the model has {heads} heads"),
        ("ffn_widths", ffn, f"the model's FFN width is {ffn}"),
        ("num_blocks", blocks, f"the model has {blocks} blocks"),
    )
    zero_heads = adapter is not None and adapter.zero_heads
    for name, top, has in limits:
        empty = name == "ffn_widths" or (name == "heads" and zero_heads)  # may a block keep none?
        low = 0 if empty and not quantized else 1
        bad = [v for v in getattr(space, name) or [] if not low <= v <= top]
        if bad:
            zero = ""
            if 0 in bad and empty:
                zero = (f" (0 only when every weight_bits >= 16: it leaves a 0-width Linear that quantization cannot handle, "
                        f"and weight_bits has {quantized})")
            elif 0 in bad and name == "heads":
                zero = f" ({adapter.family}: {adapter.notes})"
            raise fail(name, f"{bad[0]} is not allowed; {has}, allowed {low}..{top}{zero}")

    for technique in techniques.TECHNIQUES:  # read when called: the registry is the one list
        refusal = technique.refuse_space(space, model_config)
        if refusal:
            raise fail(*refusal)

    sources = {hidden: "q/k/v and FFN input: hidden_size"}  # in_features -> which Linear takes it
    for h in sorted(set(space.heads or [heads]) - {0}, reverse=True):
        sources.setdefault(h * head_dim, f"attention output: {'space.heads ' if space.heads else ''}{h} x head_dim {head_dim}")
    for w in sorted(set(space.ffn_widths or [ffn]) - {0}, reverse=True):
        sources.setdefault(w, f"FFN output: {'space.ffn_widths ' if space.ffn_widths else 'intermediate_size '}{w}")
    widths = sorted(sources)

    if space.simulation_only:  # runs in torch only; quantize_weight still needs whole groups
        linear_bits = [b for b in quantized if 2 <= b <= 8] if "linear" in space.quant_scheme else []
        _check_groups(space.group_size, linear_bits, sources, fail, _simulation_reason)
    else:
        _check_groups(space.group_size, quantized, sources, fail, lambda b, g, w: kernel_refusal(b, g, w, "linear"))
        embedding = getattr(model_config, "embedding_size", None) or hidden
        if 4 in space.embedding_bits and nbits_block(4, embedding) is None:
            raise fail(
                "embedding_bits",
                f"4 cannot be lowered: the embedding is quantized per row of {embedding} values and "
                f"GatherBlockQuantized needs a power-of-two block >= 16 dividing it; allowed: [8, 32]",
            )

    recorder = _Recorder()
    sample_policy(recorder, space, prefix="encoder.layer", num_blocks=blocks)
    return SpaceSummary(
        model_type=model_type,
        num_blocks=blocks,
        num_heads=heads,
        head_dim=head_dim,
        hidden_size=hidden,
        ffn_width=ffn,
        decisions=len(recorder.choices),
        policies=math.prod(recorder.choices.values()),
        in_features=tuple(widths),
    )


def _simulation_reason(bits: int, group: int | None, width: int) -> str | None:
    if group is not None and width % group:
        return f"group_size={group} does not divide in_features={width}, which simulated quantization needs"
    return None


Reason = Callable[[int, int | None, int], str | None]


def _check_groups(
    groups: list[int | None],
    bits_list: list[int],
    sources: dict[int, str],
    fail: Callable[[str, str], ConfigError],
    reason: Reason,
) -> None:
    """Every (bits, group) of the space must pass ``reason`` at every reachable width; name the allowed groups if not."""
    widths = sorted(sources)
    common = math.gcd(*widths)
    for group in groups:
        for bits in bits_list:
            for width in widths:
                why = reason(bits, group, width)
                if why is None:
                    continue
                divisors = [d for d in range(1, common + 1) if common % d == 0]
                allowed = [g for g in [None, *divisors] if all(reason(b, g, w) is None for b in bits_list for w in widths)]
                shown = f"[{', '.join('null' if g is None else str(g) for g in allowed)}]" if allowed else "none"
                raise fail(
                    "group_size",
                    f"{'null' if group is None else group} with weight_bits {bits} fails for in_features {width} "
                    f"({sources[width]}): {why}; allowed group_size for this space: {shown}",
                )
