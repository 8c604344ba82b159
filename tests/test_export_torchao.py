import numpy as np, time, pytest
from autocompress.exporters import exporter
from autocompress.exporters._base import compare

def blocks(ids, bits):
    return {f"re:bert\\.encoder\\.layer\\.[{''.join(map(str, ids))}]\\..*": {"bits": bits}}

POLICIES = {
    "mixed_g32": {"layers": {**blocks([0, 1], 8), **blocks([2, 3], 4)}, "group_size": 32},
    "mixed_pc": {"layers": {**blocks([0, 1], 8), **blocks([2, 3], 4)}, "embedding_bits": 8},
    "all4_g32": {"layers": blocks(range(6), 4), "group_size": 32},
    "all8_pc": {"layers": blocks(range(6), 8)},
    "all3_g32": {"layers": blocks(range(6), 3), "group_size": 32},
    "all2_g32": {"layers": blocks(range(6), 2), "group_size": 32},
    "emb4_shrunk": {"layers": blocks(range(6), 8), "embedding_bits": 4, "kept_blocks": [0, 2, 3, 5], "heads": {1: 8}},
}

@pytest.mark.parametrize("key", list(POLICIES))
def test_measure(key, export_source, tmp_path):
    t = time.time()
    source = export_source(POLICIES[key])
    t1 = time.time()
    ex = exporter("torchao")
    ex.check(source.policy)
    files, logits, notes = ex.write(source, tmp_path)
    d = np.abs(logits - source.logits).max()
    acc = (logits.argmax(-1) == source.labels).mean()
    print(f"\n{key}: build {t1-t:.1f}s write {time.time()-t1:.1f}s maxdiff {d:.3f} absmax {np.abs(source.logits).max():.2f} acc {acc:.4f} src {source.accuracy:.4f} float {(source.float_activation_logits.argmax(-1)==source.labels).mean():.4f}")
    print(notes)
