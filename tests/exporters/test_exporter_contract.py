"""The exporter contract: every registered format exports one policy all of them can hold, and verifies it in its own tool.

Each format's own file tests what only it does (its refusals, its graph, its
corrupted-output check); this suite holds every format to the same promise:
the registered name builds it, ``check`` accepts what it can express, the
folder holds the files the report lists, the policy beside the model reloads
as the one exported, and the reloaded model predicts as the source does.
"""

from __future__ import annotations

import json

import pytest

from autocompress.exporters import FORMATS, Exporter, exporter
from autocompress.policy import LayerSpec, Policy

COMMON = Policy(layers={"re:bert\\.encoder\\.layer\\.[0-1]\\..*": LayerSpec(bits=8), "re:bert\\.encoder\\.layer\\.[2-3]\\..*": LayerSpec(bits=4)},
                group_size=32)
"""8 and 4 bits in groups of 32 (weight-only kernels: no run-time rounding of activations), two blocks left float."""


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_exports_a_common_policy_and_verifies_it_in_its_tool(name, export_source, tmp_path):
    target = exporter(name)
    assert isinstance(target, Exporter) and target.name == name
    target.check(COMMON)
    report = target.export(export_source(COMMON), tmp_path / name)
    assert report.format == name and report.rows > 0
    assert report.agreement >= 0.95 and report.max_abs_diff <= report.tolerance
    assert "policy.json" in report.files and all((tmp_path / name / file).exists() for file in report.files)
    assert Policy.load(tmp_path / name / "policy.json") == COMMON
    assert json.loads((tmp_path / name / "export_report.json").read_text())["format"] == name


def test_an_unknown_format_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown export format 'tflite'; allowed: onnx, hf, ort-recipe, torchao, llm-compressor"):
        exporter("tflite")
