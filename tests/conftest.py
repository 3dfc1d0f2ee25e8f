"""Session-wide test set-up: headless MuJoCo, a persistent XLA cache, and one tiny generated dataset.

Why a persistent compilation cache: several tests build the same jitted updates in fresh agents (train,
then resume), and on 2 CPU cores each compile costs tens of seconds; the cache makes the second one free.
"""

import os

# Before anything imports mujoco: EGL in a process that also loads TensorFlow aborts at exit, and the tests
# never render.
os.environ["MUJOCO_GL"] = "disable"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    # One cache per xdist worker (`make test` runs two): a directory is never written by two processes at once.
    cache = os.path.join(str(config.rootpath), ".pytest_cache", "jax", os.environ.get("PYTEST_XDIST_WORKER", "main"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory):
    """The `data.py:smoke` RLDS dataset (one episode of each kind for two tasks), generated once."""
    from experiments.configs.data import get_config
    from lwd_jax.sim.generate import generate

    cfg = get_config("smoke")
    cfg.out_dir = str(tmp_path_factory.mktemp("data") / "offline")
    summary = generate(cfg)
    return cfg, summary
