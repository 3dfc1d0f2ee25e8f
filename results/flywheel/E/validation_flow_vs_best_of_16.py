"""Which policy should LWD online deploy: best-of-16 under the critic (the protocol) or its BC flow alone?
Decided on validation scenes (eval seed 770, never a reported one: the test scenes are eval.seed 12345 and
24680), on run E's online checkpoints (seeds 6-8), 48 episodes per task, paired per seed and pooled.

    PYTHONPATH=. python results/flywheel/E/validation_flow_vs_best_of_16.py runs/flywheel_E 6,7,8

Writes validation_flow_vs_best_of_16.json beside this file (per-seed and pooled paired tests, every episode)."""
import dataclasses
import json
import os
import sys

from lwd_jax.learner.eval_report import paired_success, with_seed
from lwd_jax.learner.evaluation import evaluate
from lwd_jax.learner.export import export_policy
from lwd_jax.sim.tasks import task_names

TASKS = "puzzle_3x3_diagonal_off,scene_open_drawer,cube_stack,scene_unlock_and_open".split(",")
VALIDATION_EVAL_SEED = 770
EPISODES = 48

if __name__ == "__main__":
    root, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    out, pooled = {"eval_seed": VALIDATION_EVAL_SEED, "episodes_per_task": EPISODES, "seeds": {}}, {"policy": [], "base": []}
    for s in seeds:
        res = {}
        for kind in ("policy", "base"):
            ex = export_policy(os.path.join(root, f"seed{s}"), kind)
            res[kind] = evaluate(ex.blob, TASKS, EPISODES, VALIDATION_EVAL_SEED, 2, task_names())
            pooled[kind] += with_seed(res[kind], s)
        cmp = paired_success(res["policy"], res["base"])
        out["seeds"][s] = {"step": ex.step, "best_of_16": sum(r.success for r in res["policy"]) / len(res["policy"]),
                           "flow_alone": sum(r.success for r in res["base"]) / len(res["base"]), "paired": cmp,
                           "episodes": {k: [dataclasses.asdict(r) for r in v] for k, v in res.items()}}
        print(s, {k: v for k, v in out["seeds"][s].items() if k != "episodes"}, flush=True)
    out["pooled"] = paired_success(pooled["policy"], pooled["base"])
    long_ = [t for t in TASKS if t in ("cube_stack", "scene_unlock_and_open")]
    out["pooled_long"] = paired_success([r for r in pooled["policy"] if r.task.split(":")[1] in long_],
                                        [r for r in pooled["base"] if r.task.split(":")[1] in long_])
    out["pooled_rates"] = {k: sum(r.success for r in v) / len(v) for k, v in pooled.items()}
    print("pooled best-of-16 vs flow alone", out["pooled"], out["pooled_rates"], "long", out["pooled_long"], flush=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "validation_flow_vs_best_of_16.json"), "w") as f:
        json.dump(out, f)
