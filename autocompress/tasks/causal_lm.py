"""Causal language modeling: compress a decoder (Llama, Qwen2/3, Mistral, Phi-3) and keep its perplexity.

The teacher is the model as it is (a GGUF file is converted once, ``models.gguf``);
nothing is fine-tuned. Data is plain text: ``task.dev`` and ``task.test`` files
cut into windows of ``task.max_length`` tokens with stride ``max_length``
(``tasks.language_modeling``; each window's first token has no context and is
not scored). ``dev_subset``/``test_subset`` count windows. The ``train`` split
is GPTQ's calibration: ``decoder.calibration_windows`` windows of the dev file
after the dev windows, so the search never scores what it calibrated on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from autocompress.config import ConfigError
from autocompress.models.decoders import decoder_family
from autocompress.models.loading import resolve_model_path
from autocompress.tasks.base import Task
from autocompress.tasks.heads import Head
from autocompress.tasks.language_modeling import Window, read_text, text_windows
from autocompress.tasks.teacher import Teacher, TeacherLocation, model_digest

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from autocompress.config import RecoveryConfig

SCORED = "scored"
"""Batch key: how many of each window's last tokens are scored."""


@dataclass(frozen=True)
class Windows:
    """A split of a causal-lm task: token windows of one text file."""

    windows: tuple[Window, ...]

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self) -> Iterator[Window]:
        return iter(self.windows)

    def head(self, n: int) -> Windows:
        return Windows(self.windows[:n])

    def inputs(self) -> list[tuple[int, ...]]:
        """Each window's token ids (what the splits' overlap checks compare)."""
        return [tuple(window.input_ids[0].tolist()) for window in self.windows]

    @property
    def tokens_scored(self) -> int:
        return sum(window.scored for window in self.windows)


@dataclass(frozen=True)
class CausalLMTeacher(Teacher):
    """The decoder as it is, in float32."""

    def load(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()


class NextToken(Head):
    """Next-token prediction: the logits; an output row is one scored token's log-likelihood, so perplexity is
    ``exp(-mean(outputs))`` and a perfect model (every log-likelihood 0) scores 1."""

    output_name = "logits"
    target_names = (SCORED,)
    dropout = False

    def read(self, output: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return output.logits

    @torch.no_grad()
    def outputs(self, model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> np.ndarray:
        """The log-likelihood of every scored token (the full logits of a 49k vocabulary would not fit in memory)."""
        model.eval()
        rows = []
        for batch in batches:
            logits, ids = self(model, batch).float(), batch["input_ids"]
            for row, scored in enumerate(batch[SCORED].tolist()):
                log_probs = torch.log_softmax(logits[row, -scored - 1 : -1], dim=-1)
                rows.append(log_probs.gather(1, ids[row, -scored:, None])[:, 0].double().numpy())
        return np.concatenate(rows)

    def scores(self, outputs: np.ndarray, batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """Perplexity; ``kl_to_teacher`` needs the teacher's whole distributions (``language_modeling.language_scores``)."""
        return {"perplexity": math.exp(-float(np.mean(outputs)))}

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, torch.Tensor], settings: RecoveryConfig) -> torch.Tensor:
        """Token-level KD: ``T^2 * KL(teacher^T || student^T)`` averaged over every position."""
        t = settings.temperature
        student, teacher = student.flatten(0, -2) / t, teacher.flatten(0, -2) / t
        return F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean") * t * t

    def calibration_loss(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model's own next-token cross-entropy."""
        inputs = self.inputs(batch)
        return model(**inputs, labels=inputs["input_ids"]).loss

    def agreement(self, reference: np.ndarray, lowered: np.ndarray) -> float:
        """The smaller of the two perplexities over the larger (1: the same)."""
        a, b = (math.exp(-float(np.mean(x))) for x in (reference, lowered))
        return min(a, b) / max(a, b)

    def mismatch(self, reference: Mapping[str, float], lowered: Mapping[str, float], agreement: float, *, rounds_activations: bool,
                 max_drop: float, drop_only: bool = False) -> str | None:
        """``max_drop``: the largest relative rise (or, unless ``drop_only``, fall) of perplexity."""
        change = lowered["perplexity"] / reference["perplexity"] - 1
        if (change if drop_only else abs(change)) > max_drop:
            return f"perplexity {lowered['perplexity']:.4f} vs the reference's {reference['perplexity']:.4f} differs by more than {max_drop:.0%}"
        return None


class CausalLanguageModeling(Task):
    """Plain text, scored by the decoder's perplexity; every candidate is compared with the decoder as it is."""

    name = "causal-lm"
    layer_policy = False

    def load_split(self, split: str) -> Windows:
        task = self.config.task
        if split == "test":
            return Windows(tuple(self._windows(task.test, task.test_subset)))
        dev_count = task.dev_subset
        calibration = self.config.decoder.calibration_windows
        windows = self._windows(task.dev, None if dev_count is None else dev_count + calibration)
        if split == "dev":
            return Windows(tuple(windows[:dev_count]))
        if split == "train":
            return Windows(tuple(windows[dev_count:]) if dev_count is not None else ())
        raise ValueError(f"split must be train, dev or test, got {split!r}")

    def calibration_ids(self) -> list[torch.Tensor]:
        """GPTQ's calibration windows (the ``train`` split) when the search may use GPTQ, else none."""
        return [w.input_ids for w in self.load_split("train")] if "gptq" in self.config.decoder.methods else []

    def _windows(self, file: str, count: int | None) -> list[Window]:
        path = self.config.data_path(file)
        if not path.is_file():
            field = "task.test" if file == self.config.task.test else "task.dev"
            raise ConfigError(f"{self.config.source}: field '{field}': text file {path} does not exist")
        length = self.config.task.max_length
        return _cached_windows(str(path), str(self.locate_teacher().path), length, count)

    def batches(self, examples: Windows, tokenizer: Any, *, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Up to ``batch_size`` consecutive windows of one length per batch (a file's last window is shorter: no padding),
        with how many of each window's tokens are scored."""
        groups: list[list[Window]] = []
        for window in examples:
            if groups and len(groups[-1]) < batch_size and groups[-1][0].input_ids.shape[1] == window.input_ids.shape[1]:
                groups[-1].append(window)
            else:
                groups.append([window])
        batches = []
        for group in groups:
            ids = torch.cat([w.input_ids for w in group])
            batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), SCORED: torch.tensor([w.scored for w in group])})
        return batches

    def latency_inputs(self, examples: Windows, tokenizer: Any, *, count: int) -> list[dict[str, torch.Tensor]]:
        """The first ``decoder.prompt_tokens`` tokens of ``count`` windows: the prompts of the generation probe."""
        length = self.config.decoder.prompt_tokens
        return [{"input_ids": w.input_ids[:, :length], "attention_mask": torch.ones_like(w.input_ids[:, :length])}
                for w in list(examples)[:count]]

    def teacher(self) -> CausalLMTeacher:
        where = self.locate_teacher()
        return CausalLMTeacher(path=where.path, key=where.key, trained_now=False)

    def locate_teacher(self) -> TeacherLocation:
        return TeacherLocation(teacher_key(self.config.model), Path(resolve_model_path(self.config.model)), ready=True, as_is=True)

    def head(self) -> NextToken:
        return NextToken(self.metric)

    def check(self, model: PretrainedConfig) -> str:
        if self.config.teacher.checkpoint:
            raise ConfigError(f"{self.config.source}: field 'teacher.checkpoint': a causal-lm task's teacher is the model as it is; "
                              "leave teacher.checkpoint null and name the model in 'model'")
        try:
            decoder_family(model)
        except ValueError as error:
            raise ConfigError(f"{self.config.source}: field 'model': {error}") from None
        task = self.config.task
        return (f"task: causal language modeling of {model.model_type} on {task.dev} (dev, GPTQ calibration after it) and {task.test} "
                f"(test), windows of {task.max_length} tokens with stride {task.max_length}, minimizing dev {task.metric}")

    def export_metadata(self, teacher: Teacher) -> dict[str, Any]:
        return {}

    @property
    def tokenizer(self) -> Any:
        return _tokenizer(str(self.locate_teacher().path))


@functools.lru_cache(maxsize=4)
def teacher_key(model: str) -> str:
    """The teacher's identity: its files (or hub id), hashed once per process."""
    return f"causal-lm-{model_digest(model, 'causal-lm').hexdigest()[:16]}"


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    return AutoTokenizer.from_pretrained(path)


@functools.lru_cache(maxsize=8)
def _cached_windows(path: str, tokenizer_path: str, length: int, count: int | None) -> list[Window]:
    """A text file's windows, tokenized once per process (the dev file is read for dev and for calibration)."""
    return text_windows(_tokenizer(tokenizer_path), read_text(path), context=length, stride=length, max_windows=count)
