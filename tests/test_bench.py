"""`make bench` harness: a quick subset runs and writes sane JSON (speed goals live in the JSON, not here)."""

import json
import math

import numpy as np

from experiments.soak import per_minute, soak_episode, trends
from experiments.speed import main
from fleet_api.schema import validate_episode
from lwd_jax.sim.tasks import get_task


def test_quick_bench_writes_sane_json(tmp_path):
    out = tmp_path / "bench.json"
    doc = main(["--quick", "--only", "matmul,push,store,qam_ref", "--qam-ref", str(tmp_path / "no-qam"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    # Without a checkout of the reference the part says so (never a number), in the JSON and the table.
    assert "git clone" in doc["qam_ref"]["skipped"]
    table = (tmp_path / "bench.md").read_text()
    assert "| push a 5.2 MB policy to 4 robots |" in table and "skipped: QAM_REF_DIR=" in table
    assert doc["machine"]["cpus"] >= 1
    for v in doc["matmul"].values():
        assert math.isfinite(v) and v > 0
    assert doc["push"]["robots"] == 4 and doc["push"]["blob_bytes"] > 0
    assert 0 < doc["push"]["latency_s_median"] <= doc["push"]["latency_s_max"]
    store = doc["store"]
    assert store["reread_episodes"] == store["appends"] == 200 and len(store["ms_per_append_by_window"]) == 4


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    """A 15-minute `make bench` must not lose every figure to one part's crash (it did, once)."""
    import experiments.speed as speed

    def broken(*_a, **_k):
        raise RuntimeError("no robots today")

    monkeypatch.setattr(speed, "bench_push", broken)
    doc = main(["--quick", "--only", "push,matmul", "--out", str(tmp_path / "bench.json")])
    assert "no robots today" in doc["push"]["error"] and doc["matmul"]["roof_gflops"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["push"] == doc["push"]
    assert "| part `push` | failed: RuntimeError('no robots today') |" in (tmp_path / "bench.md").read_text()


def test_soak_episodes_are_schema_valid_and_minutes_are_binned_by_their_length():
    """The soak's synthetic episodes pass the learner's own validation (else the soak would measure
    refusals), and its per-minute rates divide by each bin's real length (a last partial minute too)."""
    rng = np.random.default_rng(0)
    for task in ("cube_pick_place", "scene_open_drawer", "scene_unlock_and_open"):
        for _ in range(5):
            ep = soak_episode(task, 30, rng, "soak-0")
            validate_episode(ep, known_tasks=[task], max_steps=get_task(task).step_budget)
            assert ep.subgoals[-1] == (ep.num_subgoals if ep.success else ep.subgoals[-1]) and ep.terminal == ep.success
    acks = [{"t": 100.0 + t, "lat": 0.1 * (1 + (t >= 60))} for t in np.arange(0, 90, 0.5)]
    rows = per_minute(acks, [(110.0, 500.0), (170.0, 520.0)], 100.0, 190.0, episodes_to_fill=150)
    assert [r["minute"] for r in rows] == [1, 2]
    assert rows[0]["acks_per_s"] == 2.0 and rows[1]["acks_per_s"] == 2.0  # 120 acks / 60 s, 60 acks / 30 s
    assert abs(rows[1]["ack_p50_s"] - 0.2) < 1e-9 and rows[0]["rss_mb"] == 500.0 and rows[1]["rss_mb"] == 520.0
    assert not rows[0]["buffer_full"] and rows[1]["buffer_full"]
    # The learner's own memory/* lines: each minute keeps its last in-use and arena sizes; a minute without any: None
    heap = [(105.0, {"malloc_in_use_mb": 700.0, "malloc_arena_mb": 1200.0}),
            (150.0, {"malloc_in_use_mb": 701.0, "malloc_arena_mb": 1210.0}), (200.0, {"malloc_in_use_mb": 1.0})]
    rows = per_minute(acks, [], 100.0, 190.0, episodes_to_fill=150, memory=heap)
    assert (rows[0]["malloc_in_use_mb"], rows[0]["malloc_arena_mb"]) == (701.0, 1210.0)
    assert rows[1]["malloc_in_use_mb"] is None and "malloc_in_use_mb" not in per_minute(acks, [], 100.0, 190.0, 150)[0]


def test_soak_trends_tell_a_memory_that_levels_off_from_one_that_keeps_growing():
    """The soak's goal statistics: RSS that rises then stays level has a later-half slope whose interval holds 0,
    a steady climb does not; a trendless acks/s series has an interval around 0 (would fail if the trend were
    taken over the buffer-filling minutes, or the interval dropped)."""
    wiggle = [np.sin(1.7 * m) for m in range(40)]  # noise without a trend, the same on every run
    level = [{"minute": m + 1, "acks_per_s": 110 + 3 * wiggle[m], "buffer_full": m >= 2,
              "rss_mb": 2000 + 40 * min(m, 12) / 12 + 0.5 * wiggle[m]} for m in range(40)]
    t = trends(level + [{**level[-1], "minute": 41, "rss_mb": 9999.0}], minutes=40.0)  # a partial 41st minute
    assert t["rss_after_full"]["minutes"] == 38 and t["rss_after_full"]["last_mb"] < 2100
    later = t["rss_after_full"]["later_half_slope_mb_per_min"]
    assert later["n"] == 19 and later["lo"] < 0 < later["hi"]
    assert t["acks_per_s"]["n"] == 40 and t["acks_per_s"]["lo"] < 0 < t["acks_per_s"]["hi"]
    climbing = [{**r, "rss_mb": 2000 + 2.0 * r["minute"]} for r in level]
    c = trends(climbing, minutes=40.0)["rss_after_full"]["later_half_slope_mb_per_min"]
    assert abs(c["slope"] - 2.0) < 1e-9 and c["lo"] > 1.9
    # With the learner's split: fragmentation (arenas climb, live allocations level) is told from a leak
    assert "malloc_in_use_after_full" not in trends(level, minutes=40.0)
    split = [{**r, "malloc_in_use_mb": 700 + 0.5 * wiggle[r["minute"] - 1], "malloc_arena_mb": 1200 + 3.0 * r["minute"]}
             for r in level]
    t = trends(split, minutes=40.0)
    live, arena = (t[k]["later_half_slope_mb_per_min"] for k in ("malloc_in_use_after_full", "malloc_arena_after_full"))
    assert live["lo"] < 0 < live["hi"] and abs(arena["slope"] - 3.0) < 1e-9


def test_episode_to_sampleable_counts_to_the_first_update_whose_batch_was_built_after_it():
    """bench_pipeline's latency: an episode accepted at t is sampleable in the first batch whose build started
    at or after t, from the moment that batch's update starts; one accepted after the last build is not counted."""
    from experiments.bench_pipeline import sampleable_latencies

    built = [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)]  # (build start, update start) per call
    lat = sampleable_latencies([0.0, 0.2, 0.5, 0.9, 1.2], built)
    np.testing.assert_allclose(lat, [0.5, 0.8, 0.5, 0.6])  # 0.0 -> call 0; 0.2, 0.5 -> call 1; 0.9 -> call 2


def test_memory_bomb_attacks_are_refused_before_the_learner_buffers_them(tmp_path):
    """The memory-bomb experiment at small sizes: a declared-huge header is refused with nothing read, a robot
    over its stream limit is RESOURCE_EXHAUSTED, and a good episode still lands afterwards (it would fail if the
    header bound or the per-robot stream limit went, or if an attack left the servicer unusable)."""
    from experiments.memory_bomb import markdown, run

    res = run(str(tmp_path), attacks=("declared_huge", "held_open"), attack_bytes=64 << 20, hold_s=1.0)
    rows = {(r["attack"], r["streams"]): r for r in res["attacks"]}
    assert rows[("declared_huge", 1)]["codes"] == ["INVALID_ARGUMENT"]
    assert rows[("declared_huge", 4)]["codes"] == ["INVALID_ARGUMENT"] * 4
    held = rows[("held_open", 8)]["codes"]
    assert held.count("RESOURCE_EXHAUSTED") == 8 - res["max_streams_per_robot"]
    assert res["good_episode_after"] == {"acked": True, "episodes_stored": 1}
    assert "declared_huge" in markdown(res)
