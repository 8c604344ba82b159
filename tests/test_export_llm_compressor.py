import time
import numpy as np
import pytest

B = "bert.encoder.layer"

@pytest.mark.parametrize("case", ["mixed", "g32", "all4", "all8", "emb4", "two2"])
def test_measure(export_source, tmp_path, case):
    from autocompress.exporters._llm_compressor import LlmCompressorExporter, load_quantized
    from autocompress.exporters._base import torch_logits
    policies = {
        "mixed": {"layers": {f"re:{B}\\.[01]\\..*": {"bits": 8}, f"re:{B}\\.[23]\\..*": {"bits": 4}}},
        "g32": {"group_size": 32, "layers": {f"re:{B}\\.[01]\\..*": {"bits": 8}, f"re:{B}\\.[23]\\..*": {"bits": 4}}},
        "all4": {"group_size": 32, "layers": {f"re:{B}\\..*": {"bits": 4}}},
        "all8": {"layers": {f"re:{B}\\..*": {"bits": 8}}},
        "emb4": {"embedding_bits": 4, "layers": {f"re:{B}\\..*": {"bits": 8}}},
        "two2": {"group_size": 32, "layers": {f"re:{B}\\.[23]\\..*": {"bits": 2}}},
    }
    t = time.time()
    source = export_source(policies[case])
    t1 = time.time()
    ex = LlmCompressorExporter()
    files, logits, notes = ex.write(source, tmp_path)
    t2 = time.time()
    d = np.abs(logits - source.logits).max()
    acc = (logits.argmax(-1) == source.labels).mean()
    agree = (logits.argmax(-1) == source.logits.argmax(-1)).mean()
    fl = torch_logits(source.float_model, source.dev)
    print(f"\n{case}: maxdiff {d:.4f} acc {acc:.4f} src {source.accuracy:.4f} float {(fl.argmax(-1)==source.labels).mean():.4f} agree {agree:.3f} float-vs-src {np.abs(fl-source.logits).max():.3f} times {t1-t:.1f} {t2-t1:.1f}")
    print(notes)
