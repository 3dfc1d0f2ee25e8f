"""The flywheel study: does deployment improve the policy? SFT -> offline -> online on the same test scenes.

    make flywheel        # data (4 tasks, the 5x mix), then 3 seeds and the pooled paired tables in results/flywheel/
    python -m experiments.train --config=experiments/configs/flywheel.py --config.seed=1 --config.workdir=runs/flywheel/seed1

The protocol is the main job's (experiments/configs/multitask.py: `flywheel_method` says why each setting,
`main_job` the budgets), fixed before any run from measurements on other scenes, not tuned on the reported
ones. Three differences, all to keep runs C-E reproducible: the data is the 5x mix of the four tasks only
(data/flywheel_large), 24 evaluation episodes per task per seed (experiments/flywheel.py pools the three
seeds' pairs; the single-seed main job takes 48), and no periodic evaluations during the online stage.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import multitask

TASKS = multitask.MAIN_TASKS


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "smoke"):
        raise ValueError(f"flywheel config: unknown variant {variant!r}; expected '' or 'smoke'")
    if variant == "smoke":
        c = multitask.get_config("smoke")
        multitask.flywheel_method(c)
        c.agent.divl.tau_ramp_updates = 2
    else:
        c = multitask.get_config("")
        c.eval.episodes_per_task = 24
        c.eval.every = 1_000_000  # runs C-E had no periodic evaluations (they pause the learner)
    c.data.offline_dir = "data/flywheel_large"
    c.workdir = "runs/flywheel"
    return c
