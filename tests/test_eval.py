"""Per-task evaluation (issue 7): interval statistics, step-wise score and cycle time, reports, checkpoint export,
and an end-to-end run of an untrained smoke-sized agent through `evaluate` and the `experiments/eval.py` CLI."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from fleet_api import schema
from lwd_jax.data.normalize import NormStats
from lwd_jax.learner import eval_report as rep
from lwd_jax.learner import evaluation as ev
from lwd_jax.learner.eval_report import EpisodeResult

EVAL_TASK = "scene_open_drawer"  # the shortest budget (150 steps) of the suite


# ================================================================================================ statistics
@pytest.mark.parametrize(
    "k,n,lo,hi",
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (81, 100, 0.7222, 0.8749)],
)
def test_wilson_known_binomial_cases(k, n, lo, hi):
    a, b = rep.wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-3) and b == pytest.approx(hi, abs=1e-3)


def test_wilson_coverage_is_near_nominal():
    """Exact coverage (sum of binomial probabilities of the k whose interval holds p): near 95% everywhere."""
    covs = []
    for n in (10, 30):
        for p in np.linspace(0.05, 0.95, 19):
            cov = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)
                      if rep.wilson_interval(k, n)[0] <= p <= rep.wilson_interval(k, n)[1])
            covs.append(cov)
    assert min(covs) > 0.87 and 0.93 < float(np.mean(covs)) < 0.97


def test_score_interval():
    zeros, ones = [0.0] * 10, [1.0] * 10
    assert rep.score_interval(zeros) == pytest.approx((0.0, 0.2775), abs=1e-3)  # not a zero-width [0, 0]
    assert rep.score_interval(ones) == pytest.approx((0.7225, 1.0), abs=1e-3)
    binary = [1.0] * 5 + [0.0] * 5
    assert rep.score_interval(binary) == pytest.approx(rep.wilson_interval(5, 10), abs=1e-6)  # 0/1 scores: Wilson
    lo, hi = rep.score_interval([0.25, 0.5, 0.5, 0.75])
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert rep.score_interval([]) == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rep.score_interval([1.5, 2.0])
    # Conservative: coverage of the true mean at least nominal for a fractional score distribution.
    rng = np.random.default_rng(0)
    values, probs = np.array([0.0, 0.25, 0.5, 0.75, 1.0]), np.array([0.3, 0.1, 0.2, 0.1, 0.3])
    mu = float(values @ probs)
    hits = [lo <= mu <= hi for lo, hi in (rep.score_interval(rng.choice(values, 20, p=probs)) for _ in range(2000))]
    assert np.mean(hits) >= 0.94


def _episode(subgoals, num_subgoals, success, intervention) -> schema.Episode:
    t = len(subgoals) - 1
    obs = {"state": np.zeros((t + 1, schema.STATE_DIM), np.float32)}
    return schema.Episode(
        observation=obs, action=np.zeros((t, schema.ACTION_DIM), np.float32), reward=np.zeros(t, np.float32),
        intervention=np.asarray(intervention, bool), subgoals=np.asarray(subgoals, np.int32), terminal=success,
        language_instruction="x", task="cube_stack", success=success, num_subgoals=num_subgoals,
    )


def test_stepwise_score_and_intervention_from_episodes():
    ep = _episode([0, 1, 2, 2], 4, False, [False, True, True])  # long task: 2 of its 4 sub-goals
    r = ev.episode_result(ep, seed=3, budget=400)
    assert r == EpisodeResult("cube_stack", 3, False, 3, 0.5, 400, pytest.approx(2 / 3))
    won = ev.episode_result(_episode([0, 2, 4], 4, True, [False, False]), seed=4, budget=400)
    assert won.subgoal_frac == 1.0 and won.success and won.intervention_rate == 0.0
    s = rep.summarize([r, won])["cube_stack"]
    assert s["stepwise_score"] == 0.75 and s["intervention_rate"] == pytest.approx(1 / 3)
    assert s["score_lo"] < 0.75 < s["score_hi"]


def test_cycle_time_counts_failures_at_budget():
    rs = [
        EpisodeResult("a", 0, True, 50, 1.0, 400),
        EpisodeResult("a", 1, True, 70, 1.0, 400),
        EpisodeResult("a", 2, False, 400, 0.5, 400),
        EpisodeResult("b", 0, False, 150, 0.0, 150),
    ]
    s = rep.summarize(rs)
    assert s["a"]["cycle_time_success"] == 60 and s["a"]["cycle_time_all"] == pytest.approx(520 / 3)
    assert s["a"]["cycle_time_success_s"] == 60 / rep.SIM_CONTROL_HZ
    assert s["a"]["cycle_time_all_s"] == pytest.approx(520 / 3 / 20.0)
    assert math.isnan(s["b"]["cycle_time_success"]) and s["b"]["cycle_time_all_s"] == 7.5
    old_keys = {"episodes", "success_rate", "success_lo", "success_hi", "stepwise_score", "cycle_time_success", "cycle_time_all"}
    assert old_keys <= set(s["a"])  # experiments/train.py and plots.py read these
    avg = rep.averages(s, long_tasks={"a"})
    assert avg["all"]["cycle_time_success"] == 60  # over the tasks with a success
    assert avg["short"]["success_rate"] == 0.0 and avg["long"]["success_rate"] == pytest.approx(2 / 3)


def test_sim_control_rate_is_the_envs():
    from lwd_jax.sim.env import make_env

    assert 1.0 / make_env(EVAL_TASK).ogb_env.control_timestep() == pytest.approx(rep.SIM_CONTROL_HZ)


# ================================================================================================ reports
def _results(shift: int) -> list[EpisodeResult]:
    return [
        EpisodeResult("cube_stack", 0, True, 100 + shift, 1.0, 400, 0.1),
        EpisodeResult("cube_stack", 1, False, 400, 0.5, 400, 0.3),
        EpisodeResult("cube_pick_place", 0, False, 200, 0.0, 200, 0.0),
    ]


def test_write_report_round_trip(tmp_path):
    runs = {"base": _results(0), "policy": _results(20)}
    stem = str(tmp_path / "sub" / "all_policy")
    report = rep.write_report(runs, stem, seed=7, policy={"kind": "policy", "step": 4}, teleop=True)
    with open(stem + ".json") as f:
        saved = json.load(f)
    assert saved == report and saved["seed"] == 7 and saved["policy"]["step"] == 4 and saved["teleop"] is True
    assert saved["long_tasks"] == ["cube_stack"] and saved["episodes_per_task"] == {"cube_stack": 2, "cube_pick_place": 1}
    assert rep.load_results(stem + ".json") == runs
    summ = saved["methods"]["policy"]["summary"]
    assert summ["cube_pick_place"]["cycle_time_success"] is None  # NaN written as null
    assert summ["cube_stack"]["success_rate"] == 0.5 and summ["cube_stack"]["intervention_rate"] == pytest.approx(0.2)
    assert set(saved["methods"]["base"]["averages"]) == {"all", "short", "long"}
    md = open(stem + ".md").read()
    assert "policy score [95% CI]" in md and "cycle s (success / all)" in md and "intervention" in md
    assert "| cube_stack (long) |" in md and "**average long**" in md and "seed 7" in md
    first = open(stem + ".json").read(), md
    rep.write_report(runs, stem, seed=7, policy={"kind": "policy", "step": 4}, teleop=True)
    assert (open(stem + ".json").read(), open(stem + ".md").read()) == first  # byte-identical
    rep.write_report(_results(0), str(tmp_path / "one"), seed=1)  # a single method, teleop off
    md1 = open(tmp_path / "one.md").read()
    assert "policy success" in md1 and "intervention" not in md1


def test_markdown_table_default_unchanged():
    s = rep.summarize(_results(0))
    md = rep.markdown_table({"m": s}, long_tasks={"cube_stack"})
    assert md.splitlines()[0] == "| task | m success | m score | m cycle (steps) |"
    assert "| **average long** |" in md


def test_eval_configs_cover_every_task():
    from experiments.configs.eval import all as all_cfg
    from experiments.configs.eval.common import LONG_EPISODES, SHORT_EPISODES, episodes_for
    from lwd_jax.sim.tasks import get_task, task_names

    for t in task_names():
        assert episodes_for(t) == (LONG_EPISODES if get_task(t).is_long else SHORT_EPISODES)
    cfg = all_cfg.get_config()
    assert cfg.tasks == "all" and cfg.episodes == 0 and cfg.step is None and cfg.out_dir is None


# ================================================================================================ export + end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An untrained smoke-sized agent saved as a run: checkpoint (meta with the config) + norm_stats.json."""
    from experiments.configs.multitask import get_config
    from lwd_jax.agent import LWDAgent
    from lwd_jax.learner.checkpoint import Checkpointer
    from lwd_jax.learner.export import STATS_FILE, example_obs

    cfg = get_config("smoke")
    workdir = str(tmp_path_factory.mktemp("run"))
    agent = LWDAgent(cfg.agent, mesh=None)
    state = agent.init(0, example_obs(cfg.agent, 2))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(4, state, {"phase": "offline", "step": 4, "version": 3, "config": cfg.to_json()}, force=True)
    ckpt.close()
    dims = {"state": schema.STATE_DIM, "proprio": schema.PROPRIO_DIM}
    stats = NormStats({k: np.zeros(d, np.float32) for k, d in dims.items()}, {k: np.ones(d, np.float32) for k, d in dims.items()},
                      -np.ones(schema.ACTION_DIM, np.float32), np.ones(schema.ACTION_DIM, np.float32))
    with open(os.path.join(workdir, STATS_FILE), "w") as f:
        f.write(stats.to_json())
    return workdir, jax.device_get(state)


def test_recap_indicator_needs_a_recap_run(tiny_run):
    from lwd_jax.learner.export import export_policy

    workdir, _ = tiny_run
    with pytest.raises(ValueError, match="recap_indicator needs the policy of a RECAP run"):
        export_policy(workdir, "policy", recap_indicator=0.0)


def test_export_blob_matches_checkpoint(tiny_run):
    from lwd_jax.agent import policy_params
    from lwd_jax.learner.export import export_policy
    from lwd_jax.policy import decode_policy

    workdir, state = tiny_run
    for kind in ("policy", "base"):
        out = export_policy(workdir, kind)
        header, params, lang = decode_policy(out.blob)
        assert lang and all(v.shape == (384,) for v in lang.values())  # a bridge robot needs no text encoder
        assert (out.step, out.version, out.phase, header["kind"], header["version"]) == (4, 3, "offline", kind, 3)
        want = jax.tree.leaves(policy_params(state, kind))
        assert len(jax.tree.leaves(params)) == len(want)
        for a, b in zip(jax.tree.leaves(params), want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_policy_versions_of_one_architecture_share_one_compiled_sampler(tiny_run):
    """A robot loading version N + 1 compiles nothing: every Policy of one agent config acts through the same
    agent (its jitted sampler takes the params as arguments), and still acts with its own params."""
    from lwd_jax.agent import LWDAgent
    from lwd_jax.learner.export import export_policy
    from lwd_jax.policy import Policy

    workdir, _ = tiny_run
    blob = export_policy(workdir, "policy").blob
    first, second = Policy(blob, seed=1), Policy(blob, seed=1)
    assert first.agent is second.agent and isinstance(first.agent, LWDAgent)
    obs = {"state": np.zeros(schema.STATE_DIM, np.float32), "state_mask": np.ones(schema.STATE_DIM, bool),
           "proprio": np.zeros(schema.PROPRIO_DIM, np.float32)}
    wording = next(iter(first._lang))
    a1 = first(obs, wording)
    second.params = jax.tree.map(lambda x: x + 0.5, second.params)  # another version's params, same shapes
    a2 = second(obs, wording)
    assert a1.shape == a2.shape and not np.allclose(a1, a2)  # the shared sampler acted with each one's params
    assert Policy(export_policy(workdir, "base").blob).agent is first.agent  # (the blob's kind is in its params)


def test_export_errors_name_the_path(tiny_run, tmp_path):
    from lwd_jax.learner.export import policy_blob_from_checkpoint

    workdir, _ = tiny_run
    with pytest.raises(FileNotFoundError, match="no checkpoint directory .*missing"):
        policy_blob_from_checkpoint(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="step 99 .*saved steps: \\[4\\]"):
        policy_blob_from_checkpoint(workdir, step=99)
    with pytest.raises(ValueError, match="kind"):
        policy_blob_from_checkpoint(workdir, kind="actor")

    bad = tmp_path / "bad"
    shutil.copytree(workdir, bad)
    stats = bad / "norm_stats.json"
    text = stats.read_text()
    stats.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"{stats}.*truncated"):
        policy_blob_from_checkpoint(str(bad))
    stats.unlink()
    with pytest.raises(FileNotFoundError, match=str(stats)):
        policy_blob_from_checkpoint(str(bad))
    stats.write_text(text)
    meta = bad / "checkpoints" / "4" / "meta" / "metadata"
    meta_text = meta.read_text()
    meta.write_text(meta_text[:20])
    with pytest.raises(ValueError, match=f"meta record of checkpoint step 4 under {bad / 'checkpoints'}"):
        policy_blob_from_checkpoint(str(bad))
    meta.write_text(meta_text)
    for path in (bad / "checkpoints" / "4" / "agent").rglob("*"):
        if path.is_file():  # every file of the agent item cut short
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"step 4 under {bad / 'checkpoints'}"):
        policy_blob_from_checkpoint(str(bad))


def test_evaluate_is_reproducible_and_teleop_runs(tiny_run, tmp_path):
    from experiments import eval as eval_cli
    from experiments.configs.eval import scene_open_drawer
    from lwd_jax.learner.export import policy_blob_from_checkpoint
    from lwd_jax.sim.tasks import task_names

    workdir, _ = tiny_run
    blob = policy_blob_from_checkpoint(workdir)
    first = ev.evaluate(blob, [EVAL_TASK], 2, seed=7, workers=1, all_tasks=task_names())
    second = ev.evaluate(blob, [EVAL_TASK], 2, seed=7, workers=1, all_tasks=task_names())
    assert first == second and len(first) == 2 and first[0].seed != first[1].seed
    assert all(r.budget == 150 and r.intervention_rate == 0.0 for r in first)

    cfg = scene_open_drawer.get_config()  # the CLI's run(), with the simulated teleoperator on
    cfg.run, cfg.episodes, cfg.workers, cfg.seed, cfg.teleop = workdir, 2, 1, 7, True
    cfg.out_dir = str(tmp_path / "eval")
    report = eval_cli.run(cfg)
    stem = tmp_path / "eval" / f"{EVAL_TASK}_policy_teleop"
    assert (stem.parent / (stem.name + ".json")).exists() and (stem.parent / (stem.name + ".md")).exists()
    summary = report["methods"]["policy"]["summary"][EVAL_TASK]
    assert summary["episodes"] == 2 and summary["intervention_rate"] > 0  # the untrained policy stalls; the human steps in
    assert report["policy"]["step"] == 4 and report["seed"] == 7 and report["teleop"] is True
    assert [e["seed"] for e in report["methods"]["policy"]["episodes"]] == [r.seed for r in first]  # same scenes


@pytest.mark.timeout(180)
def test_parallel_evaluation_fails_loudly_when_workers_cannot_run():
    """A worker that cannot load the policy (or dies) must end the evaluation with an error, never hang it."""
    with pytest.raises(RuntimeError, match="evaluation: a worker process died or failed to load the policy"):
        ev.evaluate(b"not a policy blob", [EVAL_TASK], 2, seed=0, workers=2)


def test_action_ranking_branches_from_replayed_states(tiny_run, tmp_path):
    """experiments/action_ranking.py: the branch replays reach the recorded state exactly (it asserts so),
    every candidate gets an outcome and a Q̄, and the summary counts the branch states."""
    from experiments import action_ranking

    workdir, _ = tiny_run
    out = action_ranking.main(["--run", workdir, "--tasks", "cube_pick_place", "--episodes", "1", "--candidates", "2",
                               "--branch-at", "0.5", "--out", str(tmp_path / "ar.json")])
    (row,) = out["rows"]
    assert len(row["q"]) == len(row["success"]) == 2 and row["t"] % 5 == 0
    assert out["pooled"]["states"] == 1 and 0.0 <= out["pooled"]["mean_candidate_success"] <= 1.0
    assert (tmp_path / "ar.json").stat().st_size > 0
