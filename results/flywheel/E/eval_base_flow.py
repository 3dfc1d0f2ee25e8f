"""Decomposition of run E's LWD online: the deployed best-of-16 vs the same run's BC flow alone (kind "base"),
on the same test scenes (eval.seed 24680, 24 per task). Writes runs/flywheel_E_base/seed<k>/evals/online.json."""
import dataclasses, json, os, sys
from lwd_jax.learner.evaluation import evaluate, eval_path, summarize
from lwd_jax.learner.export import export_policy
from lwd_jax.sim.tasks import task_names
TASKS = "puzzle_3x3_diagonal_off,scene_open_drawer,cube_stack,scene_unlock_and_open".split(",")
if __name__ == "__main__":
    for s in [int(x) for x in sys.argv[1].split(",")]:
        ex = export_policy(f"runs/flywheel_E/seed{s}", "base")
        res = evaluate(ex.blob, TASKS, 24, 24680, 2, task_names())
        path = eval_path(f"runs/flywheel_E_base/seed{s}", "online")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"step": ex.step, "tasks": TASKS, "kind": "base", "summary": summarize(res),
                       "episodes": [dataclasses.asdict(r) for r in res]}, f)
        print(s, ex.step, sum(r.success for r in res) / len(res), flush=True)
    