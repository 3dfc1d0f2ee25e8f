"""One episode on any `Robot`: policy chunks at a fixed control rate, human takeover, a schema `Episode` out.

Why separate from the daemon: this is the part that touches the robot every tick, so it must be simple to
reason about. Rules:
* The policy is called for an action chunk [H, A] when the previous chunk is used up; the chunk runs
  open-loop (the LWD/pi0 way). When the human takes over, the rest of the chunk is dropped, and the policy
  re-plans from the current observation when control comes back.
* Every action is recorded with `intervention = True` iff the human chose it.
* Pacing: a tick starts every 1 / control_hz seconds (deadline based, so slow ticks do not accumulate drift;
  ticks that overrun are counted). control_hz = 0 runs as fast as the robot allows (simulation only).
* A stop request (SIGTERM) ends the episode at the next tick as a time-out (truncated, never terminal), so
  the steps taken so far are recorded and spooled like any other episode instead of being lost.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np

from fleet_api import schema
from robot_bridge.robot import Obs, Robot

ActFn = Callable[[Obs, str], np.ndarray]  # raw obs, instruction -> raw action chunk [H, A]


@dataclasses.dataclass
class EpisodeOutcome:
    """The recorded episode plus what the daemon logs about it."""

    episode: schema.Episode
    wall_s: float  # wall-clock duration of the episode
    cycle_time_s: float  # control steps / the robot's nominal rate: the paper's cycle time
    overruns: int  # ticks that started late (inference + robot I/O longer than one period)
    stopped: bool  # ended early by a stop request
    max_latency_s: float  # slowest policy call


def run_episode(
    robot: Robot,
    act: ActFn,
    task: str,
    *,
    seed: int,
    robot_id: str,
    policy_version: int,
    control_hz: float,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> EpisodeOutcome:
    """Runs `task` on `robot` until success, time-out or `stop`; see the module docstring."""
    info_t = robot.task_info(task)
    body = robot.embodiment
    low, high = np.asarray(body.action_low, np.float32), np.asarray(body.action_high, np.float32)
    obs, info = robot.reset(task, seed)
    instruction = str(info["instruction"])
    observations, actions, rewards, human, subgoals = [obs], [], [], [], [int(info.get("subgoals", 0))]
    chunk: list[np.ndarray] = []
    period = 1.0 / control_hz if control_hz > 0 else 0.0
    start = next_tick = clock()
    overruns, stopped, max_latency = 0, False, 0.0
    terminated = truncated = False
    while not (terminated or truncated):
        if stop is not None and stop.is_set() and actions:
            stopped = True
            break
        action = robot.human_action(obs)
        intervened = action is not None
        if intervened:
            chunk.clear()
        else:
            if not chunk:
                t0 = time.perf_counter()
                raw = schema.as_action_chunk(act(obs, instruction), f"robot {robot_id!r} task {task!r}", body.action_dim)
                max_latency = max(max_latency, time.perf_counter() - t0)
                chunk.extend(raw)
            action = chunk.pop(0)
        action = np.clip(np.asarray(action, np.float32), low, high)
        obs, reward, terminated, truncated, info = robot.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        human.append(intervened)
        subgoals.append(int(info.get("subgoals", 0)))
        if period:
            next_tick += period
            delay = next_tick - clock()
            if delay > 0:
                sleep(delay)
            else:
                overruns += 1
                next_tick = clock()  # do not try to catch up with a burst of ticks
    intervention = np.asarray(human, bool)
    source = schema.Source.INTERVENTION if intervention.any() else schema.Source.ROLLOUT
    episode = schema.Episode(
        observation={k: np.stack([o[k] for o in observations]) for k in observations[0]},
        action=np.stack(actions).astype(np.float32),
        reward=np.asarray(rewards, np.float32),
        intervention=intervention,
        subgoals=np.asarray(subgoals, np.int32),
        terminal=bool(terminated),
        language_instruction=instruction,
        task=task,
        robot_id=robot_id,
        policy_version=int(policy_version),
        source=source.value,
        success=bool(terminated),
        num_subgoals=int(info_t["num_subgoals"]),
    )
    return EpisodeOutcome(  # validated where it is stored (Spool.put), before anything else happens to it
        episode=episode,
        wall_s=clock() - start,
        cycle_time_s=len(actions) / robot.control_hz,
        overruns=overruns,
        stopped=stopped,
        max_latency_s=max_latency,
    )
