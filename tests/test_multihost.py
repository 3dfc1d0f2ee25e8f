"""A multi-process learner that really runs: two JAX processes on this machine (one CPU device each, gloo
collectives, `jax.distributed` from the LWD_* variables) each build only their own half of every batch; the
BC and full offline updates on the global batch they form equal one process's updates on the whole
batch (to float tolerance: the gradient mean is reduced across processes in another order), and the orbax
checkpoint the two processes write together restores in a single process, bit for bit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lwd_jax import sharding as shd

ROOT = Path(__file__).resolve().parents[1]
# One CPU device per process and one XLA thread: the two processes share this machine's cores.
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
       "TF_CPP_MIN_LOG_LEVEL": "2"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs, strict=False):
        assert p.returncode == 0, out[-4000:]


def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    port = str(_free_port())
    _finish([_worker("--processes", "2", "--process-id", str(i), "--port", port, "--out", str(two)) for i in (0, 1)])
    _finish([_worker("--processes", "1", "--out", str(one), "--restore", str(two))])

    multi, single, restored = (np.load(d / f) for d, f in ((two, "params.npz"), (one, "params.npz"), (one, "restored.npz")))
    keys = [k for k in single.files if not k.startswith("metric/")]
    assert keys and set(keys) <= set(multi.files)
    for k in keys:  # the updates of two processes on their halves == one process on the whole batch
        np.testing.assert_allclose(multi[k], single[k], rtol=2e-4, atol=2e-5, err_msg=k)
    for k in (k for k in single.files if k.startswith("metric/")):  # losses are global means in both runs
        np.testing.assert_allclose(multi[k], single[k], rtol=2e-3, atol=1e-5, err_msg=k)
    assert int(restored["processes"]) == 2 and int(restored["step"]) == 4
    for k in keys:  # the checkpoint written by two processes, restored by one
        np.testing.assert_array_equal(restored[k], multi[k], err_msg=k)


def test_distributed_settings_are_checked():
    assert not shd.maybe_initialize_distributed({})  # no coordinator: one process, nothing started
    with pytest.raises(ValueError, match="LWD_NUM_PROCESSES is not"):
        shd.maybe_initialize_distributed({"LWD_COORDINATOR": "127.0.0.1:1", "LWD_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match=r"LWD_PROCESS_ID 2 is not in \[0, LWD_NUM_PROCESSES=2\)"):
        shd.maybe_initialize_distributed({"LWD_COORDINATOR": "127.0.0.1:1", "LWD_NUM_PROCESSES": "2",
                                          "LWD_PROCESS_ID": "2"})
    assert shd.local_batch_size(256) == 256  # one process builds the whole batch
    batch = {"x": np.zeros((2, 4, 3))}
    assert shd.global_batch(shd.make_mesh(), batch, stacked=True) is batch


def test_every_stage_runs_end_to_end_on_two_processes_with_ingest_replicas(smoke_dataset, tmp_path):
    """`experiments.train` on two processes, stage=all (BC pretrain, critic warm-up, offline RL, then online RL
    with two ingest replicas): each samples its own rows, both run every jitted computation, process 0 writes
    the run's files, runs the robots and the replicas and publishes the policies, the other logs under
    logs/process-1/ and tails the replicas' store into its own buffer; the scalars both log are the same
    global values, in every stage."""
    import json

    from lwd_jax.learner.replicas import SharedStore, iter_commits

    data_cfg, _ = smoke_dataset
    run, port = tmp_path / "run", str(_free_port())
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/multitask.py:smoke",
         "--config.stage=all", f"--config.workdir={run}", f"--config.data.offline_dir={data_cfg.out_dir}",
         f"--config.tasks={data_cfg.tasks}", "--config.critic_warmup_steps=2", "--config.eval.episodes_per_task=0",
         "--config.online.ingest_replicas=2"],
        cwd=ROOT, env={**ENV, "MUJOCO_GL": "disable", "LWD_COORDINATOR": f"127.0.0.1:{port}", "LWD_NUM_PROCESSES": "2",
                       "LWD_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in (0, 1)]
    _finish(procs)
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 4 + 2 + 4 + 4
    assert (run / "probe.json").exists() and (run / "results.json").exists() and (run / "norm_stats.json").exists()

    def scalars(path: Path) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for r in map(json.loads, path.read_text().splitlines()):
            out.setdefault(r["step"], {}).update({k: v for k, v in r.items() if k not in ("step", "time")})
        return out

    primary, other = scalars(run / "logs" / "metrics.jsonl"), scalars(run / "logs" / "process-1" / "metrics.jsonl")
    stages = ("pretrain", "critic", "offline", "online")
    trained = [(s, k) for s, rec in other.items() for k in rec if k.split("/")[0] in stages]
    assert {k.split("/")[0] for _, k in trained} == set(stages)
    for step, k in trained:  # one SPMD program: both processes saw the same global losses and norms
        assert primary[step][k] == pytest.approx(other[step][k], rel=1e-6, abs=1e-7), (step, k)
    # The fleet's episodes: committed once by the replicas, read once by process 0 (its fleet log) and at most
    # once by process 1 (its own log: its tail's last read may come before the robots' last episodes)
    commits = dict(iter_commits(SharedStore(run / "fleet" / "shared")))
    assert len(commits) == 4

    def logged(path: Path) -> list[str]:
        return [json.loads(x)["episode_id"] for x in path.read_text().splitlines()]

    assert sorted(logged(run / "fleet" / "rlds.episodes.jsonl")) == sorted(commits)
    mine = logged(run / "fleet" / "process-1" / "rlds.episodes.jsonl")
    assert len(mine) == len(set(mine)) and set(mine) <= set(commits) and len(mine) >= 2  # (2: the warm-up's)
    assert other[4 + 2 + 4 + 4]["fleet/episodes"] >= 2  # process 1 trained on fleet data of its own reading
    blobs = [v for v in os.listdir(run / "fleet" / "shared" / "policies") if v.endswith(".blob")]
    assert blobs  # process 0 published (process 1 never writes there)
