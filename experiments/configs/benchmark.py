"""The method comparison (the LWD paper's Table I and its ablations) on the simulated suite, every method a
config of the same system: same offline data, same SFT start, same nets, same fleet budget, same evaluation.

    make benchmark                       # this CPU config: 8 tasks (4 long), 3 seeds, all methods, <= 2 h on 2 cores
    python -m experiments.benchmark --config=experiments/configs/benchmark.py:gpu   # larger budgets, GPU machine

Per seed the driver (experiments/benchmark.py) runs BC pretraining on the demonstrations once (= the SFT
row), then every method starting from that checkpoint (`init_from`), then writes the tables and plots to
`results/benchmark/`. Method overrides are dotted config keys of experiments/configs/multitask.py.

The data is the 5x offline dataset (`make benchmark` generates `data/offline_large` with data.py:large: 50
demos, 40 noisy rollouts, 30 exploration and 10 corrected episodes per task). Why: with the default 10 demos per
task and 3,000 BC updates the SFT policy stayed near 0.2 average success (measured), a floor under which no
method's differences show; 50 demos and 30,000 updates give it 0.50 (3 seeds) with room above (README, Baselines).
"""

from __future__ import annotations

import ml_collections

# 4 short and 4 long tasks (the paper: 4 short restocking + 4 long multi-stage); the long ones are the
# multi-stage tasks with the shortest step budgets, so a failed episode does not dominate evaluation time.
TASKS = (
    "cube_pick_place,cube_pick_place_diagonal,puzzle_3x3_diagonal_off,scene_open_drawer,"
    "cube_stack,puzzle_3x3_one_off,scene_unlock_and_open,scene_close_and_lock"
)

# name -> (overrides, which evaluations make its Table I entry). "stage" and budgets are overrides too.
# Evaluations: "offline" (after offline RL), "online" (after the fleet stage); the SFT row is the
# pretrain run's "pretrain" evaluation.
METHODS = {
    # HG-DAgger aggregates the human segments with the demos and retrains on the union, sampled uniformly
    "HG-DAgger": dict(stage="all", critic_warmup_steps=0, offline_steps=0, online_learner="hg_dagger",
                      **{"data.online_mix": "proportional"}),
    "RECAP": dict(stage="all", **{"agent.extraction": "recap", "eval.offline": False}),
    "HIL-SERL/RLPD": dict(stage="all", **{"agent.extraction": "q_grad", "agent.divl.critic_target": "policy",
                                          "agent.divl.value_type": "expectile", "eval.offline": False}),
    "LWD": dict(stage="all"),  # gives both "LWD offline" and "LWD online"
    # Extraction-free use of the same critic: act with the best of 16 BC samples by the target critic Q̄, the
    # critic trained offline and then online on the fleet's episodes (the actor is never trained).
    "Best-of-16": dict(stage="all", **{"agent.extraction": "best_of_n", "agent.qam.best_of_n": 16,
                                       "eval.best_of_n": 0, "eval.offline": False}),
    # ablations of LWD's offline stage (one switch each)
    "DIVL -> expectile (IQL)": dict(stage="offline", **{"agent.divl.value_type": "expectile"}),
    "adaptive -> constant tau": dict(stage="offline", **{"agent.divl.tau_mode": "constant"}),
    "QAM -> AWR flow": dict(stage="offline", **{"agent.extraction": "awr"}),
    # A reference, not a method: BC of the flow on the whole offline mix (noisy rollouts, exploration and
    # corrections included) from scratch, the policy the data-refitting extractions (AWR, RECAP) move towards.
    "BC on all data": dict(stage="offline", init_from="", critic_warmup_steps=0, offline_steps=0,
                           **{"data.pretrain_data": "all"}),
    "n-step -> 1-step": dict(stage="offline", **{"data.n_chunks_offline_long": 1}),  # last: it re-reads the data
}


# Overrides of experiments/configs/multitask.py shared by every method (dotted keys): the CPU budget.
BASE = {
    "tasks": TASKS,
    "data.pretrain_data": "demos",  # SFT = flow-matching BC on the demonstrations only
    "batch_size": 128,
    "pretrain_steps": 30_000,  # BC: 270 updates/s (make bench); the SFT run is ~2 min with its evaluation
    # Critic-only updates before each RL method's extraction (~100/s): the critic probe's AUROC of successful
    # vs failed episodes' transitions is 0.72 after 500 critic updates (the old offline budget), 0.93 after 3,000.
    "critic_warmup_steps": 3000,
    "offline_steps": 1000,
    "online_steps": 300,
    "online.num_robots": 2,
    "online.teleop_robots": 1,
    "online.control_hz": 0.0,  # simulated robots unpaced: the budget is episodes, not wall time
    "online.fleet_episodes": 24,  # 3 per task
    "online.publish_every": 100,
    "online.warmup_episodes": 4,
    "eval.episodes_per_task": 8,
    "eval.every": 1_000_000,
    "checkpoint_every": 1_000_000,
    "log_every": 100,
    "agent.actor_hidden": (256, 256),
    "agent.critic_hidden": (256, 256),
    "agent.value_hidden": (256, 256),
    "agent.divl.num_atoms": 101,
}
GPU = {
    "tasks": "all", "batch_size": 256, "pretrain_steps": 100_000, "critic_warmup_steps": 20_000, "offline_steps": 20_000,
    "online_steps": 5_000,
    "online.num_robots": 8, "online.teleop_robots": 2, "online.fleet_episodes": 400, "online.publish_every": 500,
    "eval.episodes_per_task": 20, "agent.actor_hidden": (512, 512, 512, 512),
    "agent.critic_hidden": (512, 512, 512, 512), "agent.value_hidden": (512, 512, 512, 512), "agent.divl.num_atoms": 201,
}
SMOKE = {  # what the tests run: tiny nets, two tasks, every method
    "tasks": "cube_pick_place,scene_open_drawer", "batch_size": 16, "updates_per_call": 2, "pretrain_steps": 4,
    "critic_warmup_steps": 2, "offline_steps": 4, "online_steps": 4, "online.fleet_episodes": 4, "online.publish_every": 2,
    "online.warmup_episodes": 2, "eval.episodes_per_task": 1, "eval.workers": 1, "log_every": 2,
    "agent.encoder_hidden": (32,), "agent.encoder_dim": 32, "agent.lang_proj_dim": 8, "agent.actor_hidden": (32,),
    "agent.critic_hidden": (32,), "agent.value_hidden": (32,), "agent.divl.num_atoms": 21, "agent.qam.flow_steps": 3,
}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Driver settings; the per-run overrides are BASE (+ GPU or SMOKE) + the method's, then `extra`."""
    if variant not in ("", "gpu", "smoke"):
        raise ValueError(f"benchmark config: unknown variant {variant!r}; expected '', 'gpu' or 'smoke'")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seeds = (0, 1, 2)
    c.root = "runs/benchmark"  # one workdir per (seed, method) below it; rerunning resumes finished parts
    c.results_dir = "results/benchmark"
    c.methods = ",".join(METHODS)  # a subset, comma-separated, to (re)run only some
    c.offline_dir = "data/offline_large"  # make benchmark generates it (data.py:large)
    c.compilation_cache = ".cache/jax"  # persistent XLA cache: seeds after the first reuse its compiles
    c.extra = ""  # more overrides for every run: "pretrain_steps=6000;eval.episodes_per_task=8"
    if variant == "gpu":
        c.root, c.results_dir, c.seeds = "runs/benchmark_gpu", "results/benchmark_gpu", (0, 1, 2, 3, 4)
    elif variant == "smoke":
        c.root, c.results_dir, c.seeds = "runs/benchmark_smoke", "runs/benchmark_smoke/results", (0,)
    c.lock()
    return c


def overrides(variant: str) -> dict:
    """The shared per-run overrides of a variant (dotted multitask-config keys)."""
    return {**BASE, **{"gpu": GPU, "smoke": SMOKE}.get(variant, {})}
