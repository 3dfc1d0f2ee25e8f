"""The default offline RLDS dataset: expert demos, noisy and failed rollouts, exploration around failures,
and teleoperator-corrected rollouts, for every task of the simulated suite.

    python -m lwd_jax.sim.generate --config=experiments/configs/data.py --config.out_dir=data/offline

(`make data` runs exactly this.) Sizes are per task; `:large` multiplies them by 5. The default
generates in a few minutes on 2 cores (see README for the measured time).
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.out_dir = "data/offline"
    c.tasks = "all"
    c.seed = 0
    c.workers = 2
    c.episodes_per_shard = 32
    c.durable = True
    # Camera images in every observation (64x64 RGB, PNG in the RLDS features), rendered headless in the
    # workers (EGL, Mesa's llvmpipe on CPU machines; LWD_RENDER_GL=osmesa for OSMesa). Off: the CPU default
    # policy reads state and language only.
    c.render = False
    # Each kind: how many episodes per task, and the scripted expert's knobs (lwd_jax.sim.experts.ExpertConfig).
    # demo: the clean demonstrator ("expert demos"). rollout: a noisy, sometimes failing policy ("old rollouts").
    # exploration: deliberate failure modes (drop, wrong order, stall) with noise ("exploratory/failure data").
    # intervention: a noisy expert with failures, watched and corrected by the simulated teleoperator.
    c.kinds = ml_collections.ConfigDict(
        dict(
            demo=dict(episodes=10, noise_std=0.0, p_drop=0.0, p_wrong_order=0.0, p_stall=0.0, teleop=False),
            rollout=dict(episodes=8, noise_std=0.3, p_drop=0.0, p_wrong_order=0.0, p_stall=0.0, teleop=False),
            exploration=dict(episodes=6, noise_std=0.15, p_drop=0.5, p_wrong_order=0.4, p_stall=0.3, teleop=False),
            intervention=dict(episodes=2, noise_std=0.3, p_drop=0.5, p_wrong_order=0.3, p_stall=0.3, teleop=True),
        )
    )
    if variant == "large":
        for k in c.kinds:
            c.kinds[k].episodes *= 5
    elif variant == "smoke":  # what the tests generate: one episode of each kind, two tasks
        c.tasks = "cube_pick_place,scene_open_drawer"
        c.workers = 1
        c.durable = False
        for k in c.kinds:
            c.kinds[k].episodes = 1
    elif variant:
        raise ValueError(f"data config: unknown variant {variant!r}; expected '', 'large' or 'smoke'")
    c.lock()  # a misspelt field is an error naming it, never a silent new key
    return c
