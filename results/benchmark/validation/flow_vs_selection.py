"""Why is LWD online below HG-DAgger on the long tasks? Measured on validation scenes (eval seed 771, never a
reported one; the benchmark reports eval.seed 12345), on the benchmark's own online checkpoints (seeds 0-2),
48 episodes per task: LWD's deployed policy (best-of-16 of its BC flow under the critic), LWD's BC flow alone,
and HG-DAgger's BC flow. If LWD's flow alone matches HG-DAgger, the critic's selection is what costs; if it
is below, LWD's flow (its data: the corrections the human gave a different policy) is.

    PYTHONPATH=. python results/benchmark/validation/flow_vs_selection.py /tmp/bench/runs/benchmark 0,1,2

Writes flow_vs_selection.json beside this file (paired tests per seed and pooled, every episode)."""
import dataclasses
import json
import os
import sys

from lwd_jax.learner.eval_report import paired_success, with_seed
from lwd_jax.learner.evaluation import evaluate
from lwd_jax.learner.export import export_policy
from lwd_jax.sim.tasks import task_names

TASKS = "puzzle_3x3_diagonal_off,scene_open_drawer,cube_stack,scene_unlock_and_open".split(",")
LONG = ("cube_stack", "scene_unlock_and_open")
VALIDATION_EVAL_SEED = 771
EPISODES = 48
ROWS = {"lwd best-of-16": ("lwd", "policy"), "lwd flow alone": ("lwd", "base"), "hg-dagger": ("hg-dagger", "base")}
PAIRS = [("lwd best-of-16", "hg-dagger"), ("lwd flow alone", "hg-dagger"), ("lwd best-of-16", "lwd flow alone")]

if __name__ == "__main__":
    root, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flow_vs_selection.json")
    out = {"eval_seed": VALIDATION_EVAL_SEED, "episodes_per_task": EPISODES, "seeds": {}}
    pooled = {r: [] for r in ROWS}
    for s in seeds:
        res = {}
        for row, (method, kind) in ROWS.items():
            ex = export_policy(os.path.join(root, f"seed{s}", method), kind)
            res[row] = evaluate(ex.blob, TASKS, EPISODES, VALIDATION_EVAL_SEED, 2, task_names())
            pooled[row] += with_seed(res[row], s)
            print(s, row, ex.step, sum(r.success for r in res[row]) / len(res[row]), flush=True)
        out["seeds"][s] = {"episodes": {k: [dataclasses.asdict(r) for r in v] for k, v in res.items()}}
    out["rates"] = {r: {t: sum(e.success for e in v if e.task.split(":")[1] == t) / max(1, sum(e.task.split(":")[1] == t for e in v))
                        for t in TASKS} | {"all": sum(e.success for e in v) / len(v)} for r, v in pooled.items()}
    out["paired"] = {}
    for a, b in PAIRS:
        out["paired"][f"{a} vs {b}"] = paired_success(pooled[a], pooled[b])
        out["paired"][f"{a} vs {b} (long)"] = paired_success([e for e in pooled[a] if e.task.split(":")[1] in LONG],
                                                              [e for e in pooled[b] if e.task.split(":")[1] in LONG])
    print(json.dumps({"rates": out["rates"], "paired": out["paired"]}, indent=1), flush=True)
    with open(out_path, "w") as f:
        json.dump(out, f)
