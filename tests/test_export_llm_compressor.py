import time
import numpy as np
import pytest

B = "bert.encoder.layer"

@pytest.mark.parametrize("case", ["all4pc", "all6g", "all2g", "all3pc"])
def test_measure(export_source, tmp_path, case):
    from autocompress.exporters._llm_compressor import LlmCompressorExporter
    policies = {
        "all4pc": {"layers": {f"re:{B}\\..*": {"bits": 4}}},
        "all6g": {"group_size": 32, "layers": {f"re:{B}\\..*": {"bits": 6}}},
        "all2g": {"group_size": 32, "layers": {f"re:{B}\\..*": {"bits": 2}}},
        "all3pc": {"layers": {f"re:{B}\\..*": {"bits": 3}}},
    }
    t=time.time()
    source = export_source(policies[case])
    files, logits, notes = LlmCompressorExporter().write(source, tmp_path)
    d = np.abs(logits - source.logits).max(-1)
    acc = (logits.argmax(-1) == source.labels).mean()
    agree = (logits.argmax(-1) == source.logits.argmax(-1)).mean()
    print(f"\n{case}: maxdiff {d.max():.4f} p90 {np.quantile(d, .9):.4f} med {np.median(d):.4f} acc {acc:.4f} src {source.accuracy:.4f} agree {agree:.3f} {time.time()-t:.1f}s")
