"""Distillation and recovery training on the real all-MiniLM-L6-v2 and real SST-2 sentences.

The teacher is the packaged model fine-tuned for 24 small steps on a random
sample of the training split (0.7-0.8 accuracy on a balanced validation slice):
enough for its logits to carry signal and for a collapsed student to score
visibly worse.
"""

from __future__ import annotations

import copy
import math
import random

import optuna
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.config import RecoveryConfig
from autocompress.distill import (
    attention_loss,
    cached_teacher_logits,
    hidden_state_loss,
    kd_loss,
    kept_layer_map,
    logits_cache_path,
    recover,
    uniform_layer_map,
)
from autocompress.measurement import accuracy
from autocompress.models.loading import load_classifier
from autocompress.tasks.data import Examples, batches, read_file
from autocompress.techniques import shrink_
from autocompress.techniques._magnitude import prune_smallest_
from autocompress.techniques.quantizer import quantize_linear_

MAX_LENGTH = 32


def train_sample(data_root, count: int) -> Examples:
    """A seeded random sample: the file's head is mostly positive, which would bias every batch."""
    data = read_file(data_root / "sst2" / "train.tsv", "sentence", "label")
    picked = random.Random(0).sample(range(len(data)), count)
    return Examples(tuple(data.texts[i] for i in picked), tuple(data.labels[i] for i in picked))


@pytest.fixture(scope="module")
def train_batches(data_root, tokenizer):
    return batches(train_sample(data_root, 384).head(128), tokenizer, batch_size=16, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def eval_batches(data_root, tokenizer):
    """32 positive and 32 negative validation sentences: a constant predictor scores exactly 0.5."""
    data = read_file(data_root / "sst2" / "validation.tsv", "sentence", "label")
    picked = sorted([i for i, y in enumerate(data.labels) if y == 1][:32] + [i for i, y in enumerate(data.labels) if y == 0][:32])
    balanced = Examples(tuple(data.texts[i] for i in picked), tuple(data.labels[i] for i in picked))
    return batches(balanced, tokenizer, batch_size=64, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def teacher(data_root, tokenizer):
    torch.manual_seed(0)
    model = load_classifier("default")
    train = train_sample(data_root, 384)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for batch in batches(train, tokenizer, batch_size=16, max_length=MAX_LENGTH):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def student_of(teacher, **shrink):
    return shrink_(copy.deepcopy(teacher), **shrink)


def kd_on(student, teacher, data) -> float:
    """Pure KD loss (alpha=1) in eval mode over ``data``: what recovery minimises, without dropout noise."""
    with torch.no_grad():
        losses = []
        for batch in data:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            losses.append(kd_loss(student(**inputs).logits, teacher(**inputs).logits, batch["labels"], alpha=1.0).item())
    return sum(losses) / len(losses)


# -- losses ---------------------------------------------------------------------


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, -2.0]])
    labels = torch.tensor([0, 2])
    T, alpha = 2.0, 0.3

    def softmax(row):
        exps = [math.exp(v / T) for v in row]
        return [e / sum(exps) for e in exps]

    kl = sum(
        sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(t), softmax(s)))
        for s, t in zip(student.tolist(), teacher.tolist())
    ) / 2
    ce = -sum(math.log(math.exp(s[y]) / sum(math.exp(v) for v in s)) for s, y in zip(student.tolist(), labels.tolist())) / 2
    expected = alpha * T**2 * kl + (1 - alpha) * ce
    assert kd_loss(student, teacher, labels, temperature=T, alpha=alpha).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_scales_with_t_squared():
    logits = torch.tensor([[3.0, -1.0], [0.2, 0.1]])
    labels = torch.tensor([1, 0])
    assert kd_loss(logits, logits.clone(), labels, alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(logits, logits.clone(), labels, alpha=0.5).item() > 0  # the hard-label term remains

    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    for T in (1.0, 4.0):  # two classes with logit gaps of -1/T and +1/T
        p_t, p_s = 1 / (1 + math.exp(-1 / T)), 1 / (1 + math.exp(1 / T))
        kl = p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s))
        assert kd_loss(student, teacher, labels[:1], temperature=T, alpha=1.0).item() == pytest.approx(T**2 * kl, rel=1e-5)


@pytest.mark.parametrize("option, value", [("temperature", 0.0), ("alpha", 1.5)])
def test_kd_loss_rejects_bad_options(option, value):
    with pytest.raises(ValueError, match=option):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), **{option: value})


def test_hidden_state_loss_is_masked_mse_over_mapped_blocks():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 3, 4) for _ in range(4)]
    student = [teacher[1] + 1.0, teacher[3].clone()]
    assert hidden_state_loss(student, teacher, {0: 1, 1: 3}).item() == pytest.approx(0.5)  # (1 + 0) / 2
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    padded = [s.clone() for s in student]
    padded[1][0, 2] += 100.0  # a padded position: ignored under the mask
    assert hidden_state_loss(padded, teacher, {0: 1, 1: 3}, attention_mask=mask).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="layer_map"):
        hidden_state_loss(student, teacher, {2: 0})


def test_attention_loss_compares_head_averaged_distributions():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(2, 12, 5, 5), -1)
    assert attention_loss([teacher.flip(1)], [teacher], {0: 0}).item() == pytest.approx(0.0, abs=1e-6)  # head order is irrelevant
    four_heads = teacher.mean(1, keepdim=True).expand(2, 4, 5, 5)  # fewer heads, same average
    assert attention_loss([four_heads], [teacher], {0: 0}).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((2, 4, 5, 5), 0.2)
    p = teacher.mean(1)
    expected = (p * (p / 0.2).log()).sum(-1).mean().item()
    assert attention_loss([uniform], [teacher], {0: 0}).item() == pytest.approx(expected, rel=1e-5)
    assert attention_loss([None, uniform], [teacher, teacher], {0: 0, 1: 1}).item() == pytest.approx(expected, rel=1e-5)


def test_layer_maps():
    assert uniform_layer_map(3, 6) == {0: 1, 1: 3, 2: 5}
    assert uniform_layer_map(6, 6) == {i: i for i in range(6)}
    assert uniform_layer_map(1, 6) == {0: 5}
    assert kept_layer_map([0, 2, 5]) == {0: 0, 1: 2, 2: 5}
    with pytest.raises(ValueError, match="student_layers"):
        uniform_layer_map(7, 6)
    with pytest.raises(ValueError, match="kept"):
        kept_layer_map([3, 1])


# -- students -------------------------------------------------------------------


def test_three_layer_student_starts_from_teacher_weights(teacher):
    student = student_of(teacher, layers=[1, 3, 5], heads={1: 6}, ffn={3: 768})
    blocks, source = student.bert.encoder.layer, teacher.bert.encoder.layer
    assert student.config.num_hidden_layers == len(blocks) == 3
    assert blocks[0].attention.self.query.weight.shape == (6 * 32, 384)
    assert blocks[1].intermediate.dense.weight.shape == (768, 384)
    for name, value in blocks[2].state_dict().items():  # untouched block 5
        assert torch.equal(value, source[5].state_dict()[name]), name
    teacher_rows = {tuple(row.tolist()) for row in source[1].attention.self.value.weight}
    assert all(tuple(row.tolist()) in teacher_rows for row in blocks[0].attention.self.value.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)


# -- recovery -------------------------------------------------------------------


def test_kd_loss_decreases(teacher, train_batches):
    torch.manual_seed(0)
    student = student_of(teacher, layers=[1, 3, 5])
    before = kd_on(student, teacher, train_batches[:4])
    result = recover(student, teacher, train_batches, steps=16, settings=RecoveryConfig(learning_rate=1e-4, alpha=1.0))
    after = kd_on(student, teacher, train_batches[:4])
    assert result.steps == len(result.losses) == 16 and not result.stopped_early
    assert after < 0.7 * before
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    assert not student.training


def test_pruned_zeros_stay_zero_with_every_loss_on(teacher, train_batches):
    torch.manual_seed(0)
    student = student_of(teacher, layers=[1, 3, 5], heads={1: 6})
    linears = {name: m for name, m in student.named_modules() if isinstance(m, nn.Linear) and ".encoder." in name}
    for linear in linears.values():
        prune_smallest_([linear.weight], 0.5)
    zeros = {name: linear.weight == 0 for name, linear in linears.items()}
    before = {name: linear.weight.detach().clone() for name, linear in linears.items()}
    query = "bert.encoder.layer.0.attention.self.query"
    result = recover(
        student, teacher, train_batches, steps=4, settings=RecoveryConfig(learning_rate=1e-3, hidden_weight=1.0, attention_weight=1.0),
        fake_quant={query: (4, 32)},
    )
    assert result.steps == 4 and all(math.isfinite(x) for x in result.losses)
    for name, linear in linears.items():
        assert torch.count_nonzero(linear.weight[zeros[name]]) == 0, name
        assert not torch.equal(linear.weight, before[name]), f"{name} did not train"
    assert student.config._attn_implementation == teacher.config._attn_implementation == "sdpa"


def test_fake_quant_trains_what_real_quantization_produces(teacher, train_batches, eval_batches):
    torch.manual_seed(0)
    student = student_of(teacher, layers=[1, 3, 5])
    plan = {name: (4, 32) if "attention" in name else (8, None)
            for name, m in student.named_modules() if isinstance(m, nn.Linear) and ".layer.0." in name}
    modules = dict(student.named_modules())
    initial = {name: modules[name].weight.detach().clone() for name in plan}
    seen = {}

    def capture(step, score):  # runs after the last optimizer step, with the fake-quant forward in place
        seen.update({name: modules[name].weight.detach().clone() for name in plan})
        return False

    result = recover(student, teacher, train_batches, steps=4, settings=RecoveryConfig(learning_rate=1e-3, eval_every=4),
                     fake_quant=plan, eval_batches=eval_batches, report=capture)
    for name, (bits, group_size) in plan.items():
        linear = modules[name]
        assert type(linear) is nn.Linear and not parametrize.is_parametrized(linear)
        assert not torch.equal(linear.weight, seen[name]), "float weights should stay off the grid (STE)"
        assert not torch.equal(linear.weight, initial[name]), "no gradient reached the float weights"
        quantize_linear_(linear, bits, group_size=group_size)
        assert torch.equal(linear.weight, seen[name]), name
    assert not any("parametrizations" in key for key in student.state_dict())
    assert result.evaluations[-1] == (4, accuracy(student, eval_batches))


def test_fake_quant_rejects_unknown_modules_and_bits(teacher, train_batches):
    student = student_of(teacher, layers=[5])
    with pytest.raises(ValueError, match="bert.encoder.layer.9.output.dense"):
        recover(student, teacher, train_batches, steps=1, fake_quant={"bert.encoder.layer.9.output.dense": (4, None)})
    with pytest.raises(ValueError, match="bits=16"):
        recover(student, teacher, train_batches, steps=1, fake_quant={"classifier": (16, None)})
    assert not any(parametrize.is_parametrized(m) for m in student.modules())


def test_teacher_logits_are_cached_and_spare_the_teacher(teacher, train_batches, tokenizer, data_root, tmp_path):
    student = student_of(teacher, layers=[1, 3, 5])  # before the hook: a deep copy would copy it
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = cached_teacher_logits(teacher, train_batches, teacher_key="t1", cache_dir=tmp_path)
        assert len(calls) == len(train_batches)
        assert logits_cache_path("t1", cache_dir=tmp_path).is_file()
        second = cached_teacher_logits(teacher, train_batches, teacher_key="t1", cache_dir=tmp_path)
        assert len(calls) == len(train_batches), "the second call ran the teacher"
        assert all(torch.equal(a, b) for a, b in zip(first, second))
        with torch.no_grad():
            assert torch.allclose(first[0], teacher(**{k: v for k, v in train_batches[0].items() if k != "labels"}).logits, atol=1e-5)
        calls.clear()

        rows = train_sample(data_root, 384).head(128)  # the rows of train_batches (see the fixture)
        reordered = batches(rows.subset(list(range(127, -1, -1))), tokenizer, batch_size=8, max_length=MAX_LENGTH)
        again = cached_teacher_logits(teacher, reordered, teacher_key="t1", cache_dir=tmp_path)
        assert not calls, "the same rows in another order and batching ran the teacher"
        assert torch.allclose(again[-1][-1], first[0][0], atol=1e-5)  # row 0, now last, read back by its tokens
        with torch.no_grad():  # padded to another length, the logits of a row are the same to float noise
            assert torch.allclose(again[0], teacher(**{k: v for k, v in reordered[0].items() if k != "labels"}).logits, atol=1e-4)
        calls.clear()

        shorter = batches(rows, tokenizer, batch_size=16, max_length=8)  # other tokens: a miss, not stale logits
        cached_teacher_logits(teacher, shorter, teacher_key="t1", cache_dir=tmp_path)
        assert len(calls) == len(shorter)
        cached_teacher_logits(teacher, train_batches[:1], teacher_key="t2", cache_dir=tmp_path)  # another teacher: its own file
        assert len(calls) == len(shorter) + 1 and logits_cache_path("t2", cache_dir=tmp_path) != logits_cache_path("t1", cache_dir=tmp_path)
        calls.clear()

        recover(student, teacher, train_batches, steps=3, teacher_logits=second)
        assert not calls, "recovery ran the teacher although its logits were given"
        recover(student, teacher, train_batches, steps=2, teacher_logits=second, settings=RecoveryConfig(hidden_weight=1.0))
        assert len(calls) == 2  # hidden states are computed on the fly
    finally:
        handle.remove()


def test_report_returning_true_stops_training(teacher, train_batches, eval_batches):
    student = student_of(teacher, layers=[1, 3, 5])
    result = recover(student, teacher, train_batches, steps=50, eval_batches=eval_batches, settings=RecoveryConfig(eval_every=2),
                     report=lambda step, score: step >= 4)
    assert result.stopped_early and result.steps == len(result.losses) == 4
    assert [step for step, _ in result.evaluations] == [2, 4]
    with pytest.raises(ValueError, match="eval_batches"):
        recover(student, teacher, train_batches, steps=2, report=lambda step, score: False)


def test_optuna_pruner_stops_a_collapsing_trial(teacher, train_batches, eval_batches, tmp_path):
    logits = cached_teacher_logits(teacher, train_batches, teacher_key="optuna", cache_dir=tmp_path)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for learning_rate in (5e-5, 1e-4, 1.0):  # two sane trials, then one that wrecks the weights
        study.enqueue_trial({"learning_rate": learning_rate})
    steps_run = []

    def objective(trial):
        torch.manual_seed(0)
        student = student_of(teacher, layers=[0, 2, 5])

        def report(step, score):
            trial.report(score, step)
            return trial.should_prune()

        settings = RecoveryConfig(learning_rate=trial.suggest_float("learning_rate", 1e-5, 1.0, log=True), eval_every=2)
        result = recover(student, teacher, train_batches, steps=4, teacher_logits=logits, settings=settings,
                         eval_batches=eval_batches, report=report)
        steps_run.append(result.steps)
        if result.stopped_early:
            raise optuna.TrialPruned()
        return result.evaluations[-1][1]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=3)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    assert steps_run == [4, 4, 2]
    assert min(t.value for t in study.trials[:2]) > study.trials[2].intermediate_values[2]


def test_embedding_distillation_trains_without_dropout_and_restores_it(sentence_batches):
    """A student equal to its teacher starts at zero loss only if dropout is off; the model's dropout is back afterwards."""
    from families import tiny_model

    from autocompress.models.pooling import Pooling
    from autocompress.tasks.heads import EMBEDDING_TARGET, Logits, SentenceEmbedding

    teacher = tiny_model("bert").base_model
    teacher.config.hidden_dropout_prob = 0.1
    head = SentenceEmbedding("cosine", Pooling("mean", normalize=True, declared=False, source="test"))
    batches = [{**b, EMBEDDING_TARGET: head(teacher, b).detach()} for b in sentence_batches[:2]]
    targets = [b[EMBEDDING_TARGET] for b in batches]
    student = copy.deepcopy(teacher)
    before = {name: module.p for name, module in student.named_modules() if isinstance(module, nn.Dropout)}
    assert any(p > 0 for p in before.values())
    result = recover(student, teacher, batches, steps=2, teacher_logits=targets, head=head)
    assert result.losses[0] < 1e-9 and not head.dropout and Logits.dropout  # classifiers keep training with dropout
    assert {name: module.p for name, module in student.named_modules() if isinstance(module, nn.Dropout)} == before


def test_a_distillation_gives_a_core_to_a_job_that_starts_beside_it(teacher, train_batches, eval_batches, tmp_path, monkeypatch):
    """Between two steps the training rebalances (``autocompress.cores``): once another job wants cores, the training
    runs on its share, and that job runs beside it instead of waiting for the whole training."""
    from core_holder import held_lines, holder, wait_for

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTOCOMPRESS_CORES", "2")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    threads, started = [], []

    def report(step: int, score: float) -> bool:
        threads.append(torch.get_num_threads())
        if step == 1:  # another job asks for both cores while this one trains on them
            started.append(holder(tmp_path, want=2, seconds=60))
            wait_for(lambda: (tmp_path / "cache" / "cores").exists() and any(
                p.name == str(started[0][0].pid) for p in (tmp_path / "cache" / "cores").rglob("claims/*")))
        return False

    try:
        recover(student_of(teacher, layers=[1, 3, 5]), teacher, train_batches, steps=8, eval_batches=eval_batches[:1],
                settings=RecoveryConfig(eval_every=1), report=report)
        process, log = started[0]
        assert threads[0] == 2 and threads[-1] == 1  # alone on both cores, then on its share
        assert 1 in [held for _, held in held_lines(log)]  # the other job ran beside the training, on the other core
    finally:
        for process, _ in started:
            process.kill()
            process.wait(timeout=30)
        torch.set_num_threads(before)
