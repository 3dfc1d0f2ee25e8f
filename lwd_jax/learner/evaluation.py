"""Per-task evaluation in the simulator: success rate, step-wise score and cycle time of a policy blob.

Why worker processes: MuJoCo stepping is single-threaded Python-bound work (~300 steps/s a core), so
episodes run in parallel processes, each loading the policy blob once. Evaluation is deterministic given
its seed: episode i of task k always resets with the same seed, and the policy's sampling key (and, with
`teleop`, the simulated human's expert) is derived from it, so two runs of the same checkpoint give the
same table.

The statistics and report files are `lwd_jax/learner/eval_report.py`; `EvalCache` keeps a run's evaluations
on disk so a resumed run reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import jax
import ml_collections
import numpy as np

from lwd_jax.agent import policy_params
from lwd_jax.learner.eval_report import EpisodeResult, summarize
from lwd_jax.learner.metrics_log import MetricsLogger
from lwd_jax.policy import Policy, encode_policy
from lwd_jax.sim.env import make_env
from lwd_jax.sim.jobs import children_render
from lwd_jax.sim.recorder import record_episode
from lwd_jax.sim.teleop import TeleopConfig

_WORKER: dict[str, Any] = {}

def eval_episode_seed(base_seed: int, task_index: int, episode: int) -> int:
    """A fixed, collision-free reset seed per (task, episode), so every method meets the same scenes."""
    return int(base_seed) * 1_000_003 + task_index * 10_007 + episode


def episode_result(ep: Any, seed: int, budget: int) -> EpisodeResult:
    """A recorded `schema.Episode` -> its evaluation record (score: the episode's latched sub-goal fraction)."""
    return EpisodeResult(
        ep.task, int(seed), bool(ep.success), int(ep.num_steps), float(ep.subgoal_frac), int(budget),
        float(np.mean(ep.intervention)) if len(ep.intervention) else 0.0,
    )


def run_policy_episode(policy: Any, task: str, seed: int, teleop: Any = None) -> EpisodeResult:
    """One episode with the sim's recorder (chunks executed open-loop, re-planned at each chunk end).

    `teleop`: a `TeleopConfig` to have the simulated human watch the episode (built per episode from `seed`).
    """
    env = _WORKER.setdefault("envs", {}).get(task)
    if env is None:  # building a MuJoCo scene costs as much as a short episode: one per task per worker
        env = _WORKER["envs"][task] = make_env(task, render=_WORKER.get("render", False))
    ep = record_episode(task, policy, seed=seed, teleop=teleop, env=env, validate=False).episode
    return episode_result(ep, seed, env.step_budget)


def _init_worker(blob: bytes, seed: int, render: bool = False) -> None:
    # Workers act on the CPU unless told otherwise (before JAX picks a backend: nothing has run yet here), so
    # evaluation never competes with the learner for an accelerator. MuJoCo's GL backend was fixed when the
    # sim was imported (lwd_jax.sim: headless default "disable"; a rendering evaluation starts its workers with
    # a GL backend, `children_render`).
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")
    _WORKER["policy"] = Policy(blob, seed=seed)
    _WORKER["render"] = render


def _run_job(job: tuple[str, int, Any]) -> EpisodeResult:
    policy = _WORKER["policy"]
    task, seed, teleop = job
    policy.reseed(seed)  # sampling noise tied to the episode: reproducible whatever the worker
    return run_policy_episode(policy, task, seed, teleop)


def _teleop_config(teleop: Any) -> Any:
    if teleop is False or teleop is None:
        return None
    return TeleopConfig() if teleop is True else teleop


def evaluate(
    blob: bytes,
    tasks: Sequence[str],
    episodes_per_task: int | Mapping[str, int],
    seed: int,
    workers: int = 1,
    all_tasks: Sequence[str] | None = None,
    teleop: Any = False,
    render: bool = False,
) -> list[EpisodeResult]:
    """Every (task, episode) once; results in job order whatever the worker count.

    `episodes_per_task`: one count for every task, or a count per task. `all_tasks`: the registry order that
    fixes each task's reset seeds (so a subset meets the same scenes as a full run). `teleop`: False, True (the
    default simulated teleoperator) or a `TeleopConfig`; with one, `intervention_rate` is the fraction of steps
    it drove and success counts the human's help. `render`: camera images in the observations (an image
    policy); the episodes then run in worker processes (at least one) that render, never in this one.
    """
    order = list(all_tasks) if all_tasks is not None else list(tasks)
    counts = episodes_per_task if isinstance(episodes_per_task, Mapping) else {t: episodes_per_task for t in tasks}
    human = _teleop_config(teleop)
    jobs = [(t, eval_episode_seed(seed, order.index(t), i), human) for t in tasks for i in range(int(counts[t]))]
    if workers <= 1 and not render:
        _init_worker(blob, seed)
        return [_run_job(j) for j in jobs]
    # Why an executor, not multiprocessing.Pool: a Pool whose worker dies (a MuJoCo segfault, the OOM killer) or
    # whose initializer raises (a bad blob) respawns workers and waits forever for the lost job; the executor
    # marks itself broken and every pending result raises, so a run fails loudly instead of hanging.
    ctx = mp.get_context("spawn")  # never fork a process that holds JAX/TF threads
    with children_render(render), ProcessPoolExecutor(max(workers, 1), mp_context=ctx, initializer=_init_worker,
                                                      initargs=(blob, seed, render)) as pool:
        try:
            return list(pool.map(_run_job, jobs))
        except BrokenProcessPool as e:
            raise RuntimeError(
                f"evaluation: a worker process died or failed to load the policy ({e}); tasks {list(tasks)}, "
                f"{len(jobs)} episodes, {workers} workers. Run with workers=1 to see the worker's own error."
            ) from e


def eval_path(workdir: str, name: str) -> str:
    """Where a run keeps the evaluation `name`: <workdir>/evals/<name with "_" for " ">.json."""
    return os.path.join(workdir, "evals", name.replace(" ", "_") + ".json")


def load_episodes(workdir: str, name: str) -> list[EpisodeResult]:
    """The per-episode results of a run's stored evaluation (empty when absent or saved before they were kept)."""
    path = eval_path(workdir, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [EpisodeResult(**e) for e in json.load(f).get("episodes", [])]


class EvalCache:
    """Per-task simulator evaluations, stored in workdir/evals/<name>.json (summary and every episode) so a
    resumed run reuses them and two evaluations on the same scenes can be compared pairwise."""

    def __init__(self, cfg, agent, stats, tasks, all_tasks):
        self.cfg, self.agent, self.stats, self.tasks, self.all_tasks = cfg, agent, stats, tasks, all_tasks
        self.dir = os.path.join(cfg.workdir, "evals")
        os.makedirs(self.dir, exist_ok=True)

    def _path(self, name: str) -> str:
        return eval_path(self.cfg.workdir, name)

    def _saved(self, name: str, step: int | None = None) -> dict | None:
        path = self._path(name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            saved = json.load(f)
        if saved["tasks"] != self.tasks or (step is not None and saved["step"] != step):
            return None
        return saved

    def get(self, name: str, state, kind: str, step: int, logger: MetricsLogger | None = None) -> dict:
        """The evaluation `name` (taken at `step`), computed from `state` unless already on disk; {} when the run
        has no simulated task (nothing to evaluate in the simulator)."""
        if not self.tasks:
            return {}
        saved = self._saved(name, step)
        if saved is not None:
            return saved["summary"]
        summary, results = evaluate_state(self.cfg, self.agent, state, self.stats, self.tasks, self.all_tasks, kind)
        self._store(name, step, kind, summary, results)
        if logger is not None:
            self._log(logger, step, summary, name)
        return summary

    def _store(self, name: str, step: int, kind: str, summary: dict, results, extra: dict | None = None) -> None:
        """evals/<name>.json (summary and every episode), replaced atomically: a resumed run reuses it."""
        path = self._path(name)
        with open(path + ".tmp", "w") as f:
            json.dump({"step": step, "tasks": self.tasks, "kind": kind, **(extra or {}), "summary": summary,
                       "episodes": [dataclasses.asdict(r) for r in results]}, f)
        os.replace(path + ".tmp", path)

    def episodes(self, name: str) -> list[EpisodeResult]:
        """The per-episode results of a stored evaluation (empty for one saved before they were kept)."""
        return load_episodes(self.cfg.workdir, name) if self._saved(name) else []

    def progress(self, phase: str, state, step: int, logger: MetricsLogger, meta: dict | None = None) -> dict:
        """A periodic evaluation of the deployed policy during `phase`, stored as `<phase>@<step>` with `meta`
        (e.g. the fleet episodes so far) beside it; a resumed run reuses it. Logged as eval/policy/*."""
        name = f"{phase}@{step}"
        if not self.tasks:
            return {}
        saved = self._saved(name, step)
        if saved is not None:
            return saved["summary"]
        summary, results = evaluate_state(self.cfg, self.agent, state, self.stats, self.tasks, self.all_tasks, "policy")
        self._store(name, step, "policy", summary, results, {"meta": dict(meta or {})})
        self._log(logger, step, summary, "policy")
        return summary

    def progress_evals(self, phase: str) -> list[dict]:
        """The stored periodic evaluations of `phase` (this run's tasks), by step: dicts with step, meta, summary."""
        out = []
        for fname in os.listdir(self.dir):
            if fname.startswith(phase + "@") and fname.endswith(".json"):
                saved = self._saved(fname[: -len(".json")])
                if saved is not None:
                    out.append({"step": saved["step"], "meta": saved.get("meta", {}), "summary": saved["summary"]})
        return sorted(out, key=lambda e: e["step"])

    @staticmethod
    def _log(logger: MetricsLogger, step: int, summary: dict, name: str) -> None:
        logger.log(step, {t: {"success": s["success_rate"], "score": s["stepwise_score"], "cycle_time": s["cycle_time_all"]}
                          for t, s in summary.items()}, prefix="eval/" + name.replace(" ", "_"))


def evaluate_state(cfg, agent, state, stats, tasks, all_tasks, kind: str) -> tuple[dict, list[EpisodeResult]]:
    """(per-task summary, episodes) of one policy kind of `state` in the simulator: 'policy' (the fine-tuned
    field), 'base' (the BC flow) or 'best_of_n' (the best of `eval.best_of_n` BC samples by the target critic)."""
    if cfg.eval.episodes_per_task <= 0:
        return {}, []
    agent_cfg = cfg.agent
    if kind == "best_of_n":
        agent_cfg = ml_collections.ConfigDict(cfg.agent.to_dict())
        agent_cfg.qam.best_of_n = int(cfg.eval.best_of_n)
    params = jax.device_get(policy_params(state, kind))
    blob = encode_policy(agent_cfg, params, stats, version=int(state.step), kind=kind)
    res = evaluate(blob, tasks, cfg.eval.episodes_per_task, cfg.eval.seed, cfg.eval.workers, all_tasks,
                   render=bool(cfg.agent.use_image))
    return summarize(res), res
