"""Tests of the simulated robot suite (lwd_jax.sim) on the real OGBench/MuJoCo simulator.

Kept fast (one MuJoCo build per backend, shared by every test through `SimEnv.set_task`; short tasks and few
seeds); the full >= 95% expert check is `python -m lwd_jax.sim.measure_experts --episodes 20`.
"""

from __future__ import annotations

import numpy as np
import pytest

from fleet_api import schema
from lwd_jax.sim import lights_out
from lwd_jax.sim.env import PROPRIO_LAYOUT, SimEnv, make_env
from lwd_jax.sim.experts import ExpertConfig
from lwd_jax.sim.recorder import record_episode
from lwd_jax.sim.tasks import BACKEND_STATE_DIMS, TASKS, get_task, task_names
from lwd_jax.sim.teleop import TeleopConfig

# One (fast) expert seed per task is enough to catch a broken plan; the >= 95% rate is measure_experts' job.
EXPERT_SEEDS = {name: (0, 1) if not TASKS[name].is_long else (0,) for name in TASKS}


@pytest.fixture(scope="module")
def envs() -> dict[str, SimEnv]:
    """One env per OGBench backend (building a MuJoCo scene is the slow part)."""
    out: dict[str, SimEnv] = {}
    for name in task_names():
        backend = TASKS[name].backend
        if backend not in out:
            out[backend] = SimEnv(TASKS[name])
    return out


def env_for(envs: dict[str, SimEnv], name: str) -> SimEnv:
    env = envs[TASKS[name].backend]
    env.set_task(name)
    return env


def zero_policy(obs: dict, instruction: str) -> np.ndarray:
    return np.zeros(schema.ACTION_DIM, dtype=np.float32)


# ------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------


def test_registry_shape() -> None:
    assert len(TASKS) >= 8
    assert sum(t.is_long for t in TASKS.values()) >= 3
    assert sum(not t.is_long for t in TASKS.values()) >= 2
    for name, task in TASKS.items():
        assert name == task.name and name.isidentifier() and name == name.lower()
        assert len(set(task.instructions)) >= 3, name  # instruction + at least two paraphrases
        assert task.state_dim <= schema.STATE_DIM
        assert task.num_subgoals >= 2 and task.step_budget > 0
        assert task.backend in BACKEND_STATE_DIMS


@pytest.mark.parametrize("call", [get_task, make_env])
def test_unknown_task_raises_naming_it(call) -> None:
    with pytest.raises(KeyError, match="no_such_task") as err:
        call("no_such_task")
    assert "cube_pick_place" in str(err.value)  # lists the known tasks


def test_unknown_task_in_record_episode() -> None:
    with pytest.raises(KeyError, match="no_such_task"):
        record_episode("no_such_task", "expert", seed=0)


def test_lights_out_solver() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        board, goal = rng.integers(0, 2, 9), rng.integers(0, 2, 9)
        presses = lights_out.solve(board, goal, 3, 3)
        after = board.copy()
        for b in presses:
            after ^= lights_out.press_effect(b, 3, 3)
        np.testing.assert_array_equal(after, goal)
    assert lights_out.presses_remaining(np.ones(9, int), np.array((0, 1, 1, 1, 1, 1, 1, 1, 1)), 3, 3) == 5


# ------------------------------------------------------------------------------------------------------------
# Env contract
# ------------------------------------------------------------------------------------------------------------


def _check_obs(obs: dict, state_dim: int) -> None:
    assert set(obs) == {"state", "state_mask", "proprio"}
    assert obs["state"].shape == (schema.STATE_DIM,) and obs["state"].dtype == np.float32
    assert obs["state_mask"].shape == (schema.STATE_DIM,) and obs["state_mask"].dtype == np.bool_
    assert obs["proprio"].shape == (schema.PROPRIO_DIM,) and obs["proprio"].dtype == np.float32
    assert obs["state_mask"].sum() == state_dim and obs["state_mask"][:state_dim].all()
    assert np.all(obs["state"][state_dim:] == 0)
    assert np.all(np.isfinite(obs["state"])) and np.all(np.isfinite(obs["proprio"]))


@pytest.mark.parametrize("name", task_names())
def test_reset_step_every_task(envs, name: str) -> None:
    env = env_for(envs, name)
    task = TASKS[name]
    obs, info = env.reset(seed=3)
    _check_obs(obs, task.state_dim)
    assert info["instruction"] in task.instructions and info["subgoals"] == 0 and not info["success"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-2, 2, schema.ACTION_DIM))  # clipped
        _check_obs(obs, task.state_dim)
        assert reward == 0.0 and not terminated and not truncated
        assert 0 <= info["subgoals"] <= task.num_subgoals


def test_proprio_layout_matches_info(envs) -> None:
    env = env_for(envs, "cube_pick_place")
    obs, _ = env.reset(seed=0)
    w = env.world
    assert sum(n for _, n in PROPRIO_LAYOUT) == schema.PROPRIO_DIM
    np.testing.assert_allclose(obs["proprio"][:6], w["proprio/joint_pos"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(obs["proprio"][12:15], w["proprio/effector_pos"], rtol=1e-6, atol=1e-6)
    yaw = w["proprio/effector_yaw"][0]
    np.testing.assert_allclose(obs["proprio"][15:17], [np.cos(yaw), np.sin(yaw)], atol=1e-6)


def test_time_out_truncates_and_step_after_end_raises(envs) -> None:
    env = env_for(envs, "scene_open_drawer")
    env.set_task("scene_open_drawer", step_budget=5)
    env.reset(seed=0)
    for _ in range(5):
        _, reward, terminated, truncated, _ = env.step(np.zeros(schema.ACTION_DIM))
    assert truncated and not terminated and reward == 0.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(schema.ACTION_DIM))
    with pytest.raises(ValueError, match="finite"):
        env.reset(seed=0)
        env.step(np.array([np.nan, 0, 0, 0, 0]))
    env.set_task("scene_open_drawer")  # restore the default budget for other tests


def test_set_task_refuses_other_backend(envs) -> None:
    with pytest.raises(ValueError, match="backend"):
        envs["cube-single"].set_task("scene_open_drawer")


def test_instruction_paraphrase_by_seed(envs) -> None:
    env = env_for(envs, "cube_pick_place")
    seen = {env.reset(seed=s)[1]["instruction"] for s in range(12)}
    assert len(seen) >= 2 and seen <= set(TASKS["cube_pick_place"].instructions)
    assert env.reset(seed=5)[1]["instruction"] == env.reset(seed=5)[1]["instruction"]


def test_render_without_gl_backend_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "disable")
    with pytest.raises(RuntimeError, match="MUJOCO_GL"):
        SimEnv(TASKS["cube_pick_place"], render=True)


# ------------------------------------------------------------------------------------------------------------
# Experts and the recorder
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", task_names())
def test_expert_succeeds(envs, name: str) -> None:
    task = TASKS[name]
    for seed in EXPERT_SEEDS[name]:
        ep = record_episode(name, "expert", seed=seed, env=env_for(envs, name)).episode
        assert ep.success and ep.terminal, f"{name} seed {seed}: expert failed ({ep.subgoals[-1]}/{task.num_subgoals})"
        schema.validate_episode(ep, known_tasks=TASKS)
        assert ep.source == schema.Source.DEMO.value
        assert ep.reward[-1] == 1.0 and ep.reward[:-1].sum() == 0.0
        assert ep.subgoals[-1] == task.num_subgoals and np.all(np.diff(ep.subgoals) >= 0)
        assert not ep.intervention.any()
        assert ep.observation["state"].shape == (ep.num_steps + 1, schema.STATE_DIM)
        assert ep.language_instruction in task.instructions


def test_episode_is_reproducible_from_its_seed(envs) -> None:
    # Same seed, different env history in between (OGBench's reset leaves unseeded solver state behind,
    # which SimEnv clears): identical episodes, including contact-rich drops.
    env = env_for(envs, "cube_pick_place")
    cfg = ExpertConfig(noise_std=0.1, p_drop=1.0)
    a = record_episode("cube_pick_place", cfg, seed=7, env=env).episode
    rng = np.random.default_rng(0)
    record_episode("cube_pick_place", lambda o, i: rng.uniform(-1, 1, schema.ACTION_DIM), seed=8, env=env, step_budget=30)
    b = record_episode("cube_pick_place", cfg, seed=7, env=env).episode
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.observation["state"], b.observation["state"])


def test_episodes_leave_no_trace_in_the_env(envs) -> None:
    # An episode (here one with a window skill) must not change how the next reset samples the scene.
    env = env_for(envs, "scene_unlock_and_open")
    before, _ = env.reset(seed=5)
    record_episode("scene_unlock_and_open", "expert", seed=0, env=env)
    after, _ = env.reset(seed=5)
    np.testing.assert_array_equal(before["state"], after["state"])


def test_noise_changes_actions(envs) -> None:
    env = env_for(envs, "cube_pick_place")
    clean = record_episode("cube_pick_place", "expert", seed=1, env=env).episode
    noisy = record_episode("cube_pick_place", ExpertConfig(noise_std=0.2), seed=1, env=env).episode
    n = min(clean.num_steps, noisy.num_steps)
    assert not np.allclose(clean.action[:n], noisy.action[:n])
    assert noisy.source == schema.Source.ROLLOUT.value


def test_stall_times_out(envs) -> None:
    task = TASKS["cube_pick_place"]
    cfg = ExpertConfig(p_stall=1.0, stall_steps=task.step_budget, stall_start_frac=(0.0, 0.0))
    res = record_episode("cube_pick_place", cfg, seed=0, env=env_for(envs, "cube_pick_place"))
    ep = res.episode
    assert not ep.success and not ep.terminal and ep.num_steps == task.step_budget
    assert [kind for _, kind in res.expert_events] == ["stall"]
    assert ep.source == schema.Source.EXPLORATION.value
    assert np.all(ep.action == 0.0)


def test_drop_fires_and_costs_time(envs) -> None:
    env = env_for(envs, "cube_pick_place")
    clean = record_episode("cube_pick_place", "expert", seed=2, env=env).episode
    res = record_episode("cube_pick_place", ExpertConfig(p_drop=1.0, drop_steps=10), seed=2, env=env)
    assert [kind for _, kind in res.expert_events] == ["drop"]
    assert res.episode.num_steps > clean.num_steps  # the expert re-grasps (or fails at the budget)
    step = res.expert_events[0][0]
    assert np.all(res.episode.action[step, [2, 4]] == [1.0, -1.0])  # lift with the gripper opening


def test_wrong_order_fails_multi_stage_task(envs) -> None:
    # Swapping two steps of "unlock, open, put cube in, close" leaves the plan unable to finish.
    name = "scene_put_cube_in_drawer"
    budget = 200  # the clean expert needs ~130 steps
    res = record_episode(name, ExpertConfig(p_wrong_order=1.0), seed=0, env=env_for(envs, name), step_budget=budget)
    assert [kind for _, kind in res.expert_events] == ["wrong_order"]
    assert not res.episode.success


def test_action_chunks_and_bad_shapes(envs) -> None:
    env = env_for(envs, "scene_open_drawer")
    calls = []

    def chunked(obs, instruction):
        calls.append(1)
        return np.zeros((4, schema.ACTION_DIM))

    ep = record_episode("scene_open_drawer", chunked, seed=0, env=env, step_budget=10).episode
    assert ep.num_steps == 10 and len(calls) == 3 and ep.source == schema.Source.ROLLOUT.value
    with pytest.raises(ValueError, match="policy must return"):
        record_episode("scene_open_drawer", lambda o, i: np.zeros(3), seed=0, env=env)


# ------------------------------------------------------------------------------------------------------------
# Teleoperator
# ------------------------------------------------------------------------------------------------------------


def test_teleop_takes_over_a_zero_policy_and_hands_back(envs) -> None:
    patience = 30
    res = record_episode(
        "cube_pick_place",
        zero_policy,
        seed=0,
        teleop=TeleopConfig(patience_steps=patience),
        env=env_for(envs, "cube_pick_place"),
    )
    ep, events = res.episode, res.teleop_events
    schema.validate_episode(ep, known_tasks=TASKS)
    kinds = [e for _, e in events]
    assert kinds[:3] == ["takeover:stall", "handback", "takeover:stall"]
    assert events[0][0] == patience  # the policy acted alone exactly `patience` steps first
    assert ep.success and ep.source == schema.Source.INTERVENTION.value
    # Flags: the policy's own steps are unflagged, the human's are flagged, and hand-back returns control.
    assert not ep.intervention[:patience].any() and ep.intervention[patience]
    first_back = events[1][0]
    assert ep.intervention[patience:first_back].all() and not ep.intervention[first_back]
    assert ep.subgoals[first_back] > ep.subgoals[patience]  # handed back after reaching the next sub-goal
    assert np.all(ep.action[~ep.intervention] == 0.0)


class DropAfterLift:
    """A policy that lifts the cube like the expert, then opens the gripper high above the table."""

    LET_GO_HEIGHT = 0.15

    def __init__(self, env: SimEnv):
        from lwd_jax.sim.experts import ScriptedExpert

        self.env = env
        self.lifter = ScriptedExpert(env)
        self.letting_go = False

    def reset(self) -> None:
        self.lifter.reset(0)
        self.letting_go = False

    def __call__(self, obs: dict, instruction: str) -> np.ndarray:
        if self.letting_go or self.env.world["privileged/block_0_pos"][2] > self.LET_GO_HEIGHT:
            self.letting_go = True
            return np.array([0.0, 0.0, 1.0, 0.0, -1.0], dtype=np.float32)
        return self.lifter(obs)


def test_teleop_catches_a_dropped_cube(envs) -> None:
    env = env_for(envs, "cube_pick_place")
    res = record_episode("cube_pick_place", DropAfterLift(env), seed=0, teleop=TeleopConfig(), env=env)
    kinds = [e for _, e in res.teleop_events]
    assert kinds and kinds[0] == "takeover:drop", res.teleop_events  # before the stall rule could fire
    assert res.episode.intervention.any() and res.episode.success
