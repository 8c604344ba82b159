"""Recovery training: a short knowledge-distillation fine-tune of a compressed student.

The student (the teacher shrunk, pruned and/or about to be quantized) learns
from the teacher's outputs through the task's head (softened logits, sentence
embeddings), optionally from its block outputs and attention maps too. Two invariants of the compression survive training:
weights that unstructured pruning set to zero stay zero, and layers that will be
quantized train through their quantized value (fake quantization with a
straight-through estimator), so the real quantization afterwards lands on the
weights the training saw.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from autocompress.config import RecoveryConfig
from autocompress.cores import cores, rebalance
from autocompress.distill._losses import attention_loss, hidden_state_loss, uniform_layer_map
from autocompress.models.families import layout_for
from autocompress.models.loading import eager_attention, encoder_blocks
from autocompress.tasks.heads import Head, Logits
from autocompress.techniques.quantizer import quantize_weight, runs_as_matmul_integer, simulate_dynamic_uint8

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class RecoveryResult:
    """What one recovery run did: training loss per step, ``(step, score)`` evaluations on the selected metric, early stop."""

    losses: tuple[float, ...]
    evaluations: tuple[tuple[int, float], ...]
    stopped_early: bool
    steps: int
    seconds: float


class FakeQuantize(nn.Module):
    """Weight parametrization: forward on the symmetric grid, gradient straight through to the float weight."""

    def __init__(self, bits: int, group_size: int | None) -> None:
        super().__init__()
        self.bits, self.group_size = bits, group_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        quantized = quantize_weight(weight, self.bits, self.group_size).dequantize().to(weight.dtype)
        return weight + (quantized - weight).detach()


DEFAULT_SETTINGS = RecoveryConfig()
"""The ``recovery`` section's defaults: learning rate 5e-5, temperature 2, alpha 0.5, logits only, a check every 50 steps."""


def recover(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    train_batches: Sequence[Batch],
    *,
    steps: int,
    settings: RecoveryConfig = DEFAULT_SETTINGS,
    layer_map: Mapping[int, int] | None = None,
    teacher_logits: Sequence[torch.Tensor] | None = None,
    fake_quant: Mapping[str, tuple[int, int | None]] | None = None,
    eval_batches: Sequence[Batch] | None = None,
    report: Callable[[int, float], bool] | None = None,
    head: Head | None = None,
) -> RecoveryResult:
    """Distil ``teacher`` into ``student`` in place for ``steps`` AdamW steps over cycled ``train_batches``.

    ``settings`` (the config's ``recovery`` section) gives the learning rate,
    the KD temperature and ``alpha``, the loss weights and ``eval_every``.
    Loss: the ``head``'s (default: classification logits, ``kd_loss``) + ``hidden_weight * hidden_state_loss`` + ``attention_weight
    * attention_loss`` (``layer_map`` student block -> teacher block; uniform if
    omitted). ``teacher_logits`` (one tensor per train batch, e.g. from
    ``cached_teacher_logits``) spare the teacher's forward when only the outputs are
    distilled. ``fake_quant`` maps Linear module names to ``(bits, group_size)``.
    Every ``eval_every`` steps and at the last step, ``head.metric`` (``task.metric``,
    what the search optimizes) on ``eval_batches`` goes to ``report(step,
    score)``; training stops there if it returns True (an Optuna pruner's
    ``trial.report`` + ``trial.should_prune``). The student ends in eval mode
    with plain float weights.
    """
    _check_options(train_batches, steps, teacher_logits)
    head = head or Logits("accuracy")
    learning_rate = settings.learning_rate
    hidden_weight, attention_weight, eval_every = settings.hidden_weight, settings.attention_weight, settings.eval_every
    if report is not None and not eval_batches:
        raise ValueError("report is set but eval_batches is empty; report needs validation batches to score")
    internals = hidden_weight > 0 or attention_weight > 0
    if internals and layer_map is None:
        layer_map = uniform_layer_map(len(encoder_blocks(student)), len(encoder_blocks(teacher)))
    start = time.perf_counter()
    losses: list[float] = []
    evaluations: list[tuple[int, float]] = []
    stopped_early = False
    with contextlib.ExitStack() as stack:
        stack.callback(student.eval)
        stack.enter_context(_fake_quantized(student, fake_quant or {}))
        if not head.dropout:
            stack.enter_context(_without_dropout(student))
        if attention_weight > 0:
            stack.enter_context(eager_attention(student))
            stack.enter_context(eager_attention(teacher))
        masks = _zero_masks(student)
        parameters = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
        teacher.eval()
        stack.enter_context(cores(torch.get_num_threads()))
        bar = stack.enter_context(tqdm(total=steps, desc="recovery (KD)", unit="step", leave=False, file=sys.stderr))
        for step, index in enumerate(_cycle(len(train_batches), steps), start=1):
            student.train()
            batch = train_batches[index]
            inputs = head.inputs(batch)
            extra = {"output_attentions": True} if attention_weight > 0 else {}  # MPNet's attention returns its probabilities only when asked
            with torch.no_grad(), _capture(teacher, enabled=internals) as teacher_internals:
                if internals or teacher_logits is None:
                    target = head.read(teacher(**inputs, **extra), inputs)
                else:
                    target = teacher_logits[index]
            with _capture(student, enabled=internals) as student_internals:
                output = head.read(student(**inputs, **extra), inputs)
            loss = head.loss(output, target, batch, settings)
            mask = inputs.get("attention_mask")
            if hidden_weight > 0:
                loss = loss + hidden_weight * hidden_state_loss(
                    student_internals.hidden, teacher_internals.hidden, layer_map, attention_mask=mask
                )
            if attention_weight > 0:
                loss = loss + attention_weight * attention_loss(
                    student_internals.attentions, teacher_internals.attentions, layer_map, attention_mask=mask
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for weight, keep in masks:
                    weight.mul_(keep)
            losses.append(loss.item())
            rebalance()
            bar.update(1)
            if eval_batches and (step % eval_every == 0 or step == steps):
                score = head.evaluate(student, list(eval_batches))[head.metric]
                evaluations.append((step, score))
                bar.set_postfix({head.metric: f"{score:.3f}"})
                if report is not None and report(step, score):
                    stopped_early = True
                    break
    return RecoveryResult(tuple(losses), tuple(evaluations), stopped_early, len(losses), time.perf_counter() - start)


def _check_options(train_batches, steps, teacher_logits) -> None:
    """What ``RecoveryConfig`` cannot check: the batches, the step count, one logits tensor per batch."""
    if not train_batches:
        raise ValueError("train_batches is empty; give at least one tokenized batch with labels")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is not allowed; it must be an integer >= 1")
    if teacher_logits is not None and len(teacher_logits) != len(train_batches):
        raise ValueError(
            f"teacher_logits has {len(teacher_logits)} entries but train_batches has {len(train_batches)}; "
            "give one logits tensor per batch"
        )


@contextlib.contextmanager
def _without_dropout(model: nn.Module) -> Iterator[None]:
    """Every dropout of ``model`` at probability 0 (attention reads its module's ``p`` too), restored afterwards."""
    probabilities = {module: module.p for module in model.modules() if isinstance(module, nn.Dropout)}
    for module in probabilities:
        module.p = 0.0
    try:
        yield
    finally:
        for module, p in probabilities.items():
            module.p = p


def _cycle(count: int, steps: int) -> Iterator[int]:
    return (step % count for step in range(steps))


def _zero_masks(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(trained weight, nonzero mask)`` for every Linear whose weight holds zeros (unstructured pruning)."""
    masks = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            weight = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight
            if (weight == 0).any():
                masks.append((weight, weight != 0))
    return masks


@contextlib.contextmanager
def _fake_quantized(model: nn.Module, plan: Mapping[str, tuple[int, int | None]]) -> Iterator[None]:
    """Fake-quantize the named Linears while the block runs; afterwards they are plain Linears again.

    Removing the parametrization keeps the float weights trained under the STE,
    so quantizing them for real reproduces the values the forward used. 8-bit
    per-channel layers also round their inputs as they will at run time.
    """
    modules = dict(model.named_modules())
    linears = []
    for name, spec in plan.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            found = "no such module" if module is None else type(module).__name__
            raise ValueError(f"fake_quant names {name!r}, which is not an nn.Linear of the student ({found})")
        bits, group_size = spec
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"fake_quant[{name!r}] has bits={bits!r}; allowed: 2..8 (the symmetric integer grid)")
        quantize_weight(module.weight, bits, group_size)  # validates group_size against this layer now
        linears.append((module, FakeQuantize(bits, group_size)))
    hooks = []
    try:
        for module, fake in linears:
            parametrize.register_parametrization(module, "weight", fake)
            if runs_as_matmul_integer(fake.bits, fake.group_size, module.in_features):
                hooks.append(module.register_forward_pre_hook(simulate_dynamic_uint8))
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for module, _ in linears:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


@dataclass
class _Internals:
    hidden: list[torch.Tensor]
    attentions: list[torch.Tensor | None]


@contextlib.contextmanager
def _capture(model: PreTrainedModel, *, enabled: bool) -> Iterator[_Internals]:
    """Record each encoder block's output and self-attention probabilities, indexed by block.

    Hooks rather than ``output_hidden_states``/``output_attentions``: transformers
    drops ``None`` attentions, so a block with no heads left would shift every
    later index.
    """
    internals = _Internals([], [])
    if not enabled:
        yield internals
        return
    blocks, attention = encoder_blocks(model), layout_for(model).attention
    internals.hidden[:] = [None] * len(blocks)
    internals.attentions[:] = [None] * len(blocks)
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(_store(internals.hidden, i)))
        handles.append(block.get_submodule(attention).register_forward_hook(_store(internals.attentions, i, 1)))
    try:
        yield internals
    finally:
        for handle in handles:
            handle.remove()


def _store(into: list, index: int, position: int = 0) -> Callable:
    def hook(module, args, output) -> None:
        into[index] = output[position] if isinstance(output, tuple) else output

    return hook
