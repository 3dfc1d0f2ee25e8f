"""CPU smoke test of the offline entry point: data -> pretrain -> offline RL -> eval table; then resume."""

import json
import os

import pytest

from experiments.configs.multitask import get_config
from experiments.train import check_config, run
from lwd_jax.learner.online import fleet_log_path


def _cfg(data_cfg, workdir):
    cfg = get_config("smoke")
    cfg.data.offline_dir = data_cfg.out_dir
    cfg.tasks = data_cfg.tasks
    cfg.workdir = str(workdir)
    return cfg


def test_generate_summary(smoke_dataset):
    cfg, summary = smoke_dataset
    assert summary["episodes"] == 8 and summary["steps"] > 0
    assert os.path.exists(os.path.join(cfg.out_dir, ".complete"))
    for task in cfg.tasks.split(","):
        assert summary["per_task"][task]["demo_success"] == 1.0  # the clean expert succeeds


def test_train_offline_then_resume(smoke_dataset, tmp_path, capsys):
    data_cfg, _ = smoke_dataset
    cfg = _cfg(data_cfg, tmp_path)
    cfg.stage = "offline"
    cfg.critic_warmup_steps = cfg.updates_per_call  # pretrain -> critic warm-up -> offline RL
    results = run(cfg)
    assert set(results) == {"pretrain", "offline", "offline best-of-16"}
    with open(tmp_path / "logs" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    warmup = [r for r in logged if "critic/critic_loss" in r]
    assert [r["step"] for r in warmup] == [cfg.pretrain_steps + cfg.critic_warmup_steps]
    assert "critic/am_loss" not in warmup[0]  # the warm-up trains no policy
    assert any("probe/q_mc_pearson" in r for r in logged)
    with open(tmp_path / "probe.json") as f:
        probe = json.load(f)
    assert probe["offline"]["step"] == cfg.pretrain_steps + cfg.critic_warmup_steps + cfg.offline_steps
    assert set(probe["offline"]) >= {"q_mc_pearson", "q_success_auroc", "q_mean", "mc_mean", "q_policy_minus_base",
                                     "policy_base_action_dist"}
    with open(tmp_path / "paired.json") as f:  # every evaluation met the same scenes: paired tests exist
        paired = json.load(f)
    assert set(paired) == {"offline vs pretrain", "offline best-of-16 vs pretrain", "offline best-of-16 vs offline"}
    assert all(c["n"] == len(results["pretrain"]) for c in paired.values())  # one episode per task here
    for method in results.values():
        for s in method.values():
            assert 0.0 <= s["success_rate"] <= 1.0 and s["episodes"] == 1
    assert os.path.exists(tmp_path / "results.md")
    with open(tmp_path / "results.json") as f:
        assert json.load(f).keys() == results.keys()
    first = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert first[-1] == cfg.pretrain_steps + cfg.critic_warmup_steps + cfg.offline_steps
    # Resume: two more updates on top of the saved run, not a restart from zero.
    cfg.offline_steps += cfg.updates_per_call
    capsys.readouterr()
    run(cfg)
    assert f"resumed from step {first[-1]}" in capsys.readouterr().out
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps[-1] == first[-1] + cfg.updates_per_call


def test_mini_flywheel_end_to_end(smoke_dataset, tmp_path, capsys):
    """Tiny nets, 2 bridge processes over loopback gRPC, a few online updates and version pushes."""
    from lwd_jax.data.rlds_reader import read_episodes

    data_cfg, _ = smoke_dataset
    cfg = _cfg(data_cfg, tmp_path)
    cfg.stage = "all"
    cfg.eval.every = 5  # one periodic evaluation in the online stage (step 10 of 8..12), and one offline
    results = run(cfg)
    assert list(results) == ["pretrain", "offline", "offline best-of-16", "online", "online best-of-16"]
    curve = json.loads((tmp_path / "evals" / "online@10.json").read_text())  # the plot's learning-curve point
    assert curve["step"] == 10 and 0 <= curve["meta"]["fleet_episodes"] <= 4 and curve["episodes"]
    out = capsys.readouterr().out
    assert "Online budget: 4 fleet episodes" in out and "online success" in out
    assert (tmp_path / "success_vs_fleet_episodes.png").stat().st_size > 10_000
    fleet = read_episodes(tmp_path / "fleet" / "rlds")
    robot_ids = []
    for r in ("robot-0", "robot-1"):
        lines = (tmp_path / "fleet" / r / "state" / "episodes.jsonl").read_text().splitlines()
        logged = [json.loads(x) for x in lines]
        assert len(logged) == 2 and not os.listdir(tmp_path / "fleet" / r / "state" / "spool" / "pending")
        robot_ids += [x["episode_id"] for x in logged]
    assert sorted(ep.episode_id for ep in fleet) == sorted(robot_ids)  # every fleet episode landed exactly once
    with open(fleet_log_path(str(tmp_path))) as f:  # the one fleet log (plots and the benchmark read it)
        assert sorted(json.loads(x)["episode_id"] for x in f) == sorted(robot_ids)
    assert not (tmp_path / "fleet_episodes.jsonl").exists()  # no second copy of it
    total = cfg.pretrain_steps + cfg.offline_steps + cfg.online_steps
    assert {ep.policy_version for ep in fleet} <= set(range(cfg.pretrain_steps + cfg.offline_steps, total + 1))
    assert not any(ep.intervention.any() for ep in fleet if ep.robot_id == "robot-1")  # robot-1 has no human attendant
    assert max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == total
    # A restarted learner resumes from its checkpoint and rebuilds the fleet buffer from the fleet's RLDS data;
    # the robots' budgets are spent, so nothing new arrives and nothing is stored twice.
    cfg.online_steps += cfg.updates_per_call
    run(cfg)
    out = capsys.readouterr().out
    assert f"resumed from step {total} (online)" in out and "rebuilt the fleet buffer from disk: 4 episodes" in out
    assert len(read_episodes(tmp_path / "fleet" / "rlds")) == 4
    assert max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == total + cfg.updates_per_call


def test_mini_flywheel_through_two_ingest_replicas(smoke_dataset, tmp_path, capsys):
    """online.ingest_replicas = 2: two replica processes take the robots' uploads into the shared store and
    serve the published policy; the learner answers no robot, tails the store, and trains on what it reads."""
    from lwd_jax.learner.replicas import SharedStore, iter_commits

    data_cfg, _ = smoke_dataset
    cfg = _cfg(data_cfg, tmp_path)
    cfg.stage = "all"
    cfg.online.ingest_replicas = 2
    run(cfg)
    out = capsys.readouterr().out
    assert "2 ingest replicas 127.0.0.1:" in out and "Online budget: 4 fleet episodes" in out
    robot_ids = []
    for r in ("robot-0", "robot-1"):
        logged = [json.loads(x) for x in (tmp_path / "fleet" / r / "state" / "episodes.jsonl").read_text().splitlines()]
        assert len(logged) == 2 and not os.listdir(tmp_path / "fleet" / r / "state" / "spool" / "pending")
        robot_ids += [x["episode_id"] for x in logged]
    commits = dict(iter_commits(SharedStore(tmp_path / "fleet" / "shared")))
    assert sorted(commits) == sorted(robot_ids)  # every fleet episode committed exactly once, by some replica
    with open(fleet_log_path(str(tmp_path))) as f:  # and read by the learner once
        assert sorted(json.loads(x)["episode_id"] for x in f) == sorted(robot_ids)
    assert not (tmp_path / "fleet" / "rlds").exists()  # the learner stored nothing itself
    total = cfg.pretrain_steps + cfg.offline_steps + cfg.online_steps
    assert max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == total
    versions = sorted(os.listdir(tmp_path / "fleet" / "shared" / "policies"))
    assert "CURRENT" in versions and len([v for v in versions if v.endswith(".blob")]) <= 3


def test_image_policy_on_a_dataset_without_images_is_a_clear_error(smoke_dataset, tmp_path):
    data_cfg, _ = smoke_dataset  # generated without images
    cfg = _cfg(data_cfg, tmp_path)
    cfg.agent.use_image = True
    with pytest.raises(ValueError, match="config.agent.use_image: .* has no camera images .*observation/image"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists()  # refused before any training


def test_config_errors_name_the_key(tmp_path):
    cfg = get_config("smoke")
    cfg.stage = "sideways"
    with pytest.raises(ValueError, match="config.stage"):
        check_config(cfg)
    cfg = get_config("smoke")
    cfg.tasks = "cube_pick_place,no_such_task"
    with pytest.raises(ValueError, match="no_such_task"):
        check_config(cfg)
    cfg = get_config("smoke")
    cfg.online.updates_per_call = 3  # does not divide online_steps (4)
    with pytest.raises(ValueError, match="config.online.updates_per_call"):
        check_config(cfg)
    cfg = get_config("smoke")
    cfg.online.teleop_robots = 3  # more attended robots than robots
    with pytest.raises(ValueError, match="config.online.teleop_robots"):
        check_config(cfg)
    for bad in (-4, 1):  # 0 is off, N >= 2 is the probe; anything else is a typo, not "off"
        cfg = get_config("smoke")
        cfg.eval.best_of_n = bad
        with pytest.raises(ValueError, match="config.eval.best_of_n"):
            check_config(cfg)
    cfg = get_config("smoke")
    cfg.online.fleet_episodes = -1
    with pytest.raises(ValueError, match="config.online.fleet_episodes"):
        check_config(cfg)
    with pytest.raises(AttributeError, match="no_such_field"):
        get_config("smoke").agent.no_such_field = 1  # ConfigDict refuses unknown keys once locked
    with pytest.raises(ValueError, match="variant"):
        get_config("huge")


def test_cli_unknown_override_names_the_key():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/multitask.py:smoke", "--config.agent.actor_lrr=1e-3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode != 0 and "actor_lrr" in proc.stderr


def test_flywheel_study_end_to_end(smoke_dataset, tmp_path):
    """`make flywheel` at smoke size: one seed through SFT -> offline -> online (best-of-N acting, utd pacing,
    tau ramp), then the pooled paired tables; every stage met the same scenes."""
    from experiments import flywheel

    data_cfg, _ = smoke_dataset
    with pytest.raises(ValueError, match="no field 'agent.divl.tau_base_onlin'"):
        flywheel.apply_overrides(flywheel.get_config("smoke"), ["agent.divl.tau_base_onlin=0.6"])
    agg = flywheel.main(["--smoke", "--seeds", "0", "--tasks", data_cfg.tasks, "--offline-dir", data_cfg.out_dir,
                         "--root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
                         "--set", "agent.divl.tau_base_online=0.7"])
    n = len(data_cfg.tasks.split(","))  # one evaluation episode per task at smoke size
    assert all(agg["pooled"][s]["episodes"] == n for s in flywheel.STAGES)
    assert agg["paired"]["online vs offline (pooled)"]["n"] == n
    assert "McNemar" in (tmp_path / "results" / "flywheel.md").read_text()
    # a baseline row from another root on the same scenes (here the run itself: every pair is concordant);
    # the seed has its results, so this only aggregates
    agg = flywheel.main(["--smoke", "--seeds", "0", "--tasks", data_cfg.tasks, "--offline-dir", data_cfg.out_dir,
                         "--root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
                         "--baseline", f"Itself={tmp_path / 'runs'}", "--baseline", f"Its SFT={tmp_path / 'runs'}:pretrain"])
    same = agg["paired"]["online vs Itself (pooled)"]
    assert same["n"] == n and same["diff"] == 0 and same["a_only"] == same["b_only"] == 0
    assert "| Itself |" in (tmp_path / "results" / "flywheel.md").read_text()
    assert agg["paired"]["online vs Its SFT (pooled)"] == agg["paired"]["online vs pretrain (pooled)"]
    with pytest.raises(SystemExit):
        flywheel.main(["--smoke", "--root", str(tmp_path / "runs"), "--baseline", "NoSuch=/nonexistent"])
    with open(tmp_path / "runs" / "seed0" / "logs" / "metrics.jsonl") as f:
        online = [json.loads(line) for line in f if '"online/' in line]
    assert online and all("online/am_loss" not in r for r in online)  # best-of-N trains no actor
    assert {"online/tau_base", "online/tau_next_p90"} <= set(online[-1])
    assert online[-1]["online/tau_base"] == pytest.approx(0.7)  # the --set override reached the run (ramp of 2)
