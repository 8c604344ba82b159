"""The torchao format: float model + FqnToConfig, applied with torchao.quantize_ on CPU and checked against the source."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("torchao")

from torchao.core.config import config_from_dict  # noqa: E402
from torchao.quantization import Int8Tensor, IntxUnpackedToInt8Tensor, quantize_  # noqa: E402

from autocompress.exporters import ExportMismatch, NotExpressible, Source, exporter  # noqa: E402
from autocompress.exporters._base import compare, quantized_layers  # noqa: E402
from autocompress.exporters._torchao import CONFIG_FILE, MODEL_DIR, TorchaoExporter, load_model  # noqa: E402
from autocompress.policy import Policy  # noqa: E402


def blocks(ids: str, bits: int) -> dict:
    """Every Linear of the (original) blocks ``ids``, e.g. "01", at ``bits``."""
    return {f"re:bert\\.encoder\\.layer\\.[{ids}]\\..*": {"bits": bits}}


def linears(model, *block_ids: int) -> set[str]:
    prefixes = tuple(f"bert.encoder.layer.{i}." for i in block_ids)
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefixes)}


def entries(folder) -> dict:
    data = json.loads((folder / CONFIG_FILE).read_text())
    assert data["_type"] == "FqnToConfig"
    return data["_data"]["fqn_to_config"]


def rewrite(folder, edit) -> None:
    """Edit the JSON's mapping the way a user would (both of FqnToConfig's fields hold it)."""
    data = json.loads((folder / CONFIG_FILE).read_text())
    for field in ("fqn_to_config", "module_fqn_to_config"):
        data["_data"][field] = edit(data["_data"][field])
    (folder / CONFIG_FILE).write_text(json.dumps(data))


def reloaded(folder):
    model = load_model(folder / MODEL_DIR)
    quantize_(model, config_from_dict(json.loads((folder / CONFIG_FILE).read_text())), filter_fn=None)
    return model


def test_grouped_mixed_policy_exports_verifies_and_a_corrupted_config_fails(export_source, tmp_path):
    source = export_source({"layers": {**blocks("01", 8), **blocks("23", 4)}, "group_size": 32})
    report = exporter("torchao").export(source, tmp_path)
    print(report.line())

    assert {CONFIG_FILE, f"{MODEL_DIR}/config.json", f"{MODEL_DIR}/model.safetensors", "policy.json"} <= set(report.files)
    assert (tmp_path / "export_report.json").is_file()
    assert report.max_abs_diff <= TorchaoExporter.tolerance
    assert report.score >= report.source_score - 0.005
    assert report.rows == 128

    mapping = entries(tmp_path)
    assert set(mapping) == set(quantized_layers(source)) == linears(source.model, 0, 1, 2, 3)
    for fqn, config in mapping.items():
        assert config["_type"] == "IntxWeightOnlyConfig"
        data = config["_data"]
        assert data["weight_dtype"]["_data"] == ("int8" if fqn.split(".")[3] in "01" else "int4")
        assert data["granularity"] == {"_type": "PerGroup", "_version": 1, "_data": {"group_size": 32}}
        assert data["mapping_type"]["_data"] == "SYMMETRIC_NO_CLIPPING_ERR"

    model = reloaded(tmp_path)
    float_weights = dict(source.float_model.named_parameters())
    four = "bert.encoder.layer.2.intermediate.dense"
    weight = model.get_submodule(four).weight
    assert isinstance(weight, IntxUnpackedToInt8Tensor) and weight.target_dtype == torch.int4
    assert int(weight.qdata.min()) >= -8 and int(weight.qdata.max()) <= 7
    groups = weight.dequantize().reshape(-1, 32)
    assert max(len(g.unique()) for g in groups) <= 16
    assert not torch.allclose(weight.dequantize(), float_weights[f"{four}.weight"])
    untouched = "bert.encoder.layer.4.intermediate.dense"
    assert type(model.get_submodule(untouched).weight.data) is torch.Tensor
    assert torch.equal(model.get_submodule(untouched).weight, float_weights[f"{untouched}.weight"])

    # the check can fail: the 4-bit layers edited to 2 bits no longer match the source
    rewrite(
        tmp_path,
        lambda m: {k: _with_dtype(v, "int2") if v["_data"]["weight_dtype"]["_data"] == "int4" else v for k, v in m.items()},
    )
    first = dataclasses.replace(source, dev=source.dev[:1])  # one batch of 32 rows is enough to see it
    logits, _ = TorchaoExporter().verify(first, tmp_path)
    with pytest.raises(ExportMismatch):
        compare("torchao", tmp_path, first, logits, tolerance=TorchaoExporter.tolerance, files=[], notes=[])

    # a name that matches no module is caught (torchao itself would skip it silently)
    rewrite(tmp_path, lambda m: {k.replace("layer.3.", "layer.9."): v for k, v in m.items()})
    with pytest.raises(ExportMismatch, match="layer.9"):
        TorchaoExporter().verify(source, tmp_path)


def _with_dtype(config: dict, dtype: str) -> dict:
    config = json.loads(json.dumps(config))
    config["_data"]["weight_dtype"]["_data"] = dtype
    return config


def test_per_channel_policy_with_removed_blocks_and_embedding(export_source, tmp_path):
    source = export_source({"layers": {**blocks("0", 8), **blocks("3", 4)}, "kept_blocks": [0, 3], "embedding_bits": 8})
    source = dataclasses.replace(source, dev=source.dev[:2])  # 64 rows: eager int8 x int8 runs as a slow int32 matmul on CPU
    report = exporter("torchao").export(source, tmp_path)
    print(report.line())
    assert report.max_abs_diff <= TorchaoExporter.tolerance
    assert report.score >= report.source_score - 0.005
    assert "autocompress_blocks" in json.loads((tmp_path / MODEL_DIR / "config.json").read_text())

    mapping = entries(tmp_path)
    embedding = "bert.embeddings.word_embeddings"
    assert set(mapping) == linears(source.model, 0, 1) | {embedding}
    for fqn in linears(source.model, 0):  # original block 0: 8-bit per channel, dynamic int8 activations
        data = mapping[fqn]["_data"]
        assert mapping[fqn]["_type"] == "Int8DynamicActivationInt8WeightConfig"
        assert data["act_mapping_type"]["_data"] == "ASYMMETRIC"
        assert [g["_type"] for g in data["granularity"]] == ["PerTensor", "PerRow"]
    for fqn in linears(source.model, 1):  # original block 3: 4-bit per channel
        assert mapping[fqn]["_type"] == "IntxWeightOnlyConfig"
        assert mapping[fqn]["_data"]["weight_dtype"]["_data"] == "int4"
        assert mapping[fqn]["_data"]["granularity"]["_type"] == "PerAxis"
    assert mapping[embedding]["_data"]["weight_dtype"]["_data"] == "int8"
    assert mapping[embedding]["_data"]["granularity"] == {"_type": "PerAxis", "_version": 1, "_data": {"axis": 0}}

    model = reloaded(tmp_path)
    assert isinstance(model.get_submodule("bert.encoder.layer.0.attention.self.query").weight, Int8Tensor)
    assert isinstance(model.get_submodule(embedding).weight, IntxUnpackedToInt8Tensor)
    assert isinstance(model.get_submodule("bert.encoder.layer.1.output.dense").weight, IntxUnpackedToInt8Tensor)


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"layers": blocks("0", 4), "scheme": "kmeans"}, "scheme='kmeans'"),
        ({"layers": blocks("01", 16)}, "bits=16"),
        ({"layers": {**blocks("0", 8), "bert.encoder.layer.1.output.dense": {"bits": 2}}}, "bits=2"),
    ],
)
def test_inexpressible_policies_are_refused_before_anything_is_written(policy, named, tmp_path):
    policy = Policy.from_dict(policy)
    with pytest.raises(NotExpressible, match=named):
        TorchaoExporter().check(policy)
    source = Source(policy, float_model=None, model=None, tokenizer_dir=tmp_path, dev=[])
    with pytest.raises(NotExpressible, match=named):
        exporter("torchao").export(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
