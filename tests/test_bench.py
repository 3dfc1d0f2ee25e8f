"""`make bench` harness: a quick subset runs and writes sane JSON (speed goals live in the JSON, not here)."""

import json
import math

from experiments.speed import main


def test_quick_bench_writes_sane_json(tmp_path):
    out = tmp_path / "bench.json"
    doc = main(["--quick", "--only", "matmul,push,store", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert doc["machine"]["cpus"] >= 1
    for v in doc["matmul"].values():
        assert math.isfinite(v) and v > 0
    assert doc["push"]["robots"] == 4 and doc["push"]["blob_bytes"] > 0
    assert 0 < doc["push"]["latency_s_median"] <= doc["push"]["latency_s_max"]
    store = doc["store"]
    assert store["reread_episodes"] == store["appends"] == 200 and len(store["ms_per_append_by_window"]) == 4
