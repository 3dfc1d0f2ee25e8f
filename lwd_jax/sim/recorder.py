"""Run one episode on a simulated robot and record it as a schema `Episode`.

Why one recorder: demos, noisy/failed expert data, policy rollouts and human-corrected rollouts must all land
in the same validated format with the same conventions (T actions, T + 1 observations, reward on the step that
succeeds, terminal only on success, an intervention flag per action, the latched sub-goal count per
observation), so that the offline and online buffers can be mixed freely.

Policies: any callable `policy(obs, instruction) -> action` where the action is [5] (one step) or [H, 5] (an
action chunk, executed open-loop; the policy is called again when the chunk is used up). A policy with a
`reset()` method has it called at the start of each episode. Scripted experts are passed as an
`ExpertConfig` (or the string "expert" for a clean one), since they must be bound to the episode's env.
When the teleoperator takes over, the rest of the policy's current chunk is discarded.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import numpy as np

from fleet_api import schema
from lwd_jax.sim.env import Obs, SimEnv
from lwd_jax.sim.experts import ExpertConfig, ScriptedExpert
from lwd_jax.sim.tasks import TASKS, Task, get_task
from lwd_jax.sim.teleop import TeleopConfig, Teleoperator

PolicyFn = Callable[[Obs, str], np.ndarray]
Policy = PolicyFn | ExpertConfig | str
EXPERT = "expert"
DEMO_MAX_NOISE = 0.05  # an expert at or below this noise (and with no failure fired) records as a demo


@dataclasses.dataclass
class Recording:
    """The episode plus what happened in it (for data-generation statistics and tests)."""

    episode: schema.Episode
    expert_events: list[tuple[int, str]]  # injected failures that fired, (step, kind)
    teleop_events: list[tuple[int, str]]  # (step, "takeover:<reason>" | "handback")


def infer_source(
    is_expert: bool, expert_config: ExpertConfig | None, expert_events: list, intervened: bool
) -> schema.Source:
    """The episode's `source` label from how it was produced (see schema.Source)."""
    if intervened:
        return schema.Source.INTERVENTION
    if not is_expert:
        return schema.Source.ROLLOUT
    if expert_events:
        return schema.Source.EXPLORATION
    if expert_config is not None and expert_config.noise_std > DEMO_MAX_NOISE:
        return schema.Source.ROLLOUT
    return schema.Source.DEMO


def _stack_obs(observations: list[Obs]) -> dict[str, np.ndarray]:
    return {key: np.stack([o[key] for o in observations]) for key in observations[0]}


def _resolve_env(task: Task, env: SimEnv | None, render: bool, step_budget: int | None) -> SimEnv:
    if env is None:
        return SimEnv(task, render=render, step_budget=step_budget)
    if env.task.backend != task.backend:
        raise ValueError(f"env runs backend {env.task.backend!r} but task {task.name!r} needs {task.backend!r}")
    env.set_task(task, step_budget=step_budget)  # cheap; also restores the task's budget when None
    return env


def record_episode(
    task: str | Task,
    policy: Policy,
    *,
    seed: int,
    teleop: TeleopConfig | None = None,
    env: SimEnv | None = None,
    render: bool = False,
    instruction: str | None = None,
    robot_id: str = "sim-0",
    policy_version: int = 0,
    source: str | schema.Source | None = None,
    step_budget: int | None = None,
    validate: bool = True,
) -> Recording:
    """Runs one episode of `task` with `policy` (and optionally a simulated teleoperator); see module doc.

    `env` may be passed to reuse a built simulator across episodes (it is switched to `task`, which must run on
    the same backend, and to `step_budget`, default the task's own). `seed` fixes the scene jitter, the instruction paraphrase, expert noise/failures
    and the teleoperator's expert.
    """
    task = get_task(task) if isinstance(task, str) else task
    env = _resolve_env(task, env, render, step_budget)
    obs, info = env.reset(seed=seed, instruction=instruction)

    expert_config: ExpertConfig | None = None
    if isinstance(policy, str):
        if policy != EXPERT:
            raise ValueError(f"policy string must be {EXPERT!r}, got {policy!r}")
        policy = ExpertConfig()
    if isinstance(policy, ExpertConfig):
        expert_config = policy
        policy = ScriptedExpert(env, expert_config, seed)
    if isinstance(policy, ScriptedExpert):
        if policy.env is not env:
            raise ValueError("a ScriptedExpert instance must be bound to the env of the episode; pass an ExpertConfig")
        expert_config = policy.config
        policy.reset(seed)
    elif hasattr(policy, "reset"):
        policy.reset()
    human = Teleoperator(env, teleop, seed) if teleop is not None else None

    observations, actions, rewards, interventions, subgoals = [obs], [], [], [], [info["subgoals"]]
    queue: collections.deque[np.ndarray] = collections.deque()
    terminated = truncated = False
    while not (terminated or truncated):
        action = human.select(obs) if human is not None else None
        intervened = action is not None
        if intervened:
            queue.clear()
        else:
            if not queue:
                queue.extend(schema.as_action_chunk(policy(obs, env.instruction), f"task {task.name!r}"))
            action = queue.popleft()
        action = np.clip(np.asarray(action, dtype=np.float32), schema.ACTION_LOW, schema.ACTION_HIGH)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        interventions.append(intervened)
        subgoals.append(info["subgoals"])

    expert_events = list(policy.events) if isinstance(policy, ScriptedExpert) else []
    intervention = np.asarray(interventions, dtype=bool)
    if source is None:
        source = infer_source(expert_config is not None, expert_config, expert_events, bool(intervention.any()))
    episode = schema.Episode(
        observation=_stack_obs(observations),
        action=np.stack(actions).astype(np.float32),
        reward=np.asarray(rewards, dtype=np.float32),
        intervention=intervention,
        subgoals=np.asarray(subgoals, dtype=np.int32),
        terminal=bool(terminated),
        language_instruction=env.instruction,
        task=task.name,
        robot_id=robot_id,
        policy_version=policy_version,
        source=schema.Source(source).value,
        success=bool(terminated),
        num_subgoals=task.num_subgoals,
    )
    if validate:
        schema.validate_episode(episode, known_tasks=TASKS, max_steps=env.step_budget, where=f"sim rollout seed {seed}")
    return Recording(episode, expert_events, list(human.events) if human is not None else [])
