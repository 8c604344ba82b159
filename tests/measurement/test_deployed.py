"""One deployment path for trials and references: a model lowered and verified for ONNX Runtime, or timed as it is in torch."""

from __future__ import annotations

import pytest
import torch
from families import tiny_model

from autocompress.measurement import OrtProbe, TorchProbe, deploy_and_score, model_scores
from autocompress.models.loading import load_tokenizer
from autocompress.tasks import Logits


@pytest.fixture(scope="module")
def batches():
    tokenizer = load_tokenizer("default")
    texts = ["a gripping, funny film", "dull and overlong", "the cast is superb", "nothing works here"] * 4
    encoded = [dict(tokenizer(texts[i : i + 8], padding=True, return_tensors="pt")) for i in (0, 8)]
    return [{**batch, "labels": torch.tensor([1, 0, 1, 0] * 2)} for batch in encoded]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_model_is_scored_as_it_ships_on_either_backend(batches, backend, tmp_path):
    model, head = tiny_model("bert"), Logits("accuracy")
    scored = deploy_and_score(model, backend=backend, dev=batches[:1], test=batches[1:], threads=1, scoring_threads=1,
                              workdir=tmp_path, head=head)
    simulated = model_scores(model, batches[:1], head=head)
    assert scored.simulated_dev_score == simulated["accuracy"] and set(scored.test) == set(simulated)
    if backend == "torch":
        assert isinstance(scored.probe, TorchProbe) and scored.artifact is None and scored.dev == simulated
    else:
        assert isinstance(scored.probe, OrtProbe) and scored.artifact == tmp_path / "model.onnx" and scored.artifact.is_file()
        assert scored.check.onnx_scores == scored.dev and scored.lowering is not None
