"""The camera path of the vision-language-action policy, end to end on this CPU machine: MuJoCo renders
headless (EGL on Mesa's llvmpipe) in worker and robot processes -> 64x64 RGB in the RLDS image feature ->
reader -> the CNN encoder -> BC, offline RL, the exported policy -> bridge daemons whose simulated robots
render -> episodes with images uploaded over gRPC -> the learner's fleet dataset.

Why the test process itself never renders: a process that has loaded MuJoCo's EGL backend and imports
TensorFlow crashes (lwd_jax/sim/jobs.py); here, as in `make train`, only child processes render.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs.data import get_config as data_config
from experiments.configs.multitask import get_config
from experiments.train import run
from fleet_api import schema
from lwd_jax.data.rlds_reader import read_episodes
from lwd_jax.sim.generate import generate
from lwd_jax.sim.jobs import render_gl


def _child_can_render() -> bool:
    """Whether a child process gets an offscreen GL context (probed in a subprocess, as rendering is done)."""
    probe = "import mujoco; mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8).close()"
    env = {**os.environ, "MUJOCO_GL": render_gl()}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0


@pytest.mark.skipif(not _child_can_render(), reason=f"no offscreen OpenGL ({render_gl()}) for child processes here")
def test_image_policy_from_rendered_rlds_to_rendering_robots(tmp_path):
    dcfg = data_config("smoke")
    dcfg.tasks, dcfg.render, dcfg.out_dir = "cube_pick_place", True, str(tmp_path / "data")
    dcfg.kinds.rollout.episodes = dcfg.kinds.exploration.episodes = 0  # (they run to the 200-step budget)
    summary = generate(dcfg)
    offline = read_episodes(dcfg.out_dir)
    assert len(offline) == summary["episodes"] == 2
    for ep in offline:  # real frames, not a placeholder: the scene and the arm, changing as the arm moves
        img = ep.observation["image"]
        assert img.shape == (ep.num_steps + 1, *schema.IMAGE_SHAPE) and img.dtype == np.uint8
        assert img.std() > 5 and np.abs(img[-1].astype(int) - img[0]).mean() > 0.5

    cfg = get_config("smoke")
    cfg.data.offline_dir, cfg.tasks, cfg.workdir = dcfg.out_dir, dcfg.tasks, str(tmp_path / "run")
    cfg.agent.use_image = True
    cfg.online.fleet_episodes = 2
    cfg.eval.every, cfg.eval.offline, cfg.eval.best_of_n = 1_000_000, False, 0  # two evaluations, not five
    results = run(cfg)
    assert set(results) == {"pretrain", "online"}  # evaluated in rendering worker processes
    fleet = read_episodes(os.path.join(cfg.workdir, "fleet", "rlds"))
    assert len(fleet) == 2
    for ep in fleet:  # the robots rendered their camera and the learner stored it
        assert ep.observation["image"].shape == (ep.num_steps + 1, *schema.IMAGE_SHAPE)
        assert ep.observation["image"].std() > 5
