"""The baselines' losses on toys whose answer is known, HG-DAgger's data selection, the demos-only SFT
buffer, the shared-SFT start (`init_from`), and the benchmark driver end to end on tiny nets."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lwd_jax import sharding as shd
from lwd_jax.agent import LWDAgent
from lwd_jax.algos import bc, extraction
from lwd_jax.algos.extraction import ExtractionConfig
from lwd_jax.fake import random_obs
from lwd_jax.nets.flow import VelocityField
from tests.agent_config import smoke_agent_config
from tests.fit import fit

GOOD, BAD = 0.5, -0.5  # the two action modes of the toys (1-step chunks of 1-d actions)
L = 8  # toy "language embedding" size: the RECAP indicator is added to it


def _net():
    return VelocityField(1, 1, hidden_dims=(64, 64), time_embed_dim=8)


def _apply(net):
    return lambda p, obs, x, t: net.apply(p, obs["lang"], x, t)


def two_mode_data(rng, n: int):
    """Half the data at GOOD (advantage +0.1), half at BAD (advantage -0.1), the same observation."""
    good = jax.random.bernoulli(rng, 0.5, (n,))
    actions = jnp.where(good, GOOD, BAD)[:, None, None] + 0.02 * jax.random.normal(rng, (n, 1, 1))
    adv = jnp.where(good, 0.1, -0.1)
    return {"lang": jnp.zeros((n, L))}, actions, adv


def _sample(net, params, obs, n, seed=3, cond: float | None = None, flow_steps: int = 10):
    if cond is not None:
        obs = extraction.condition_obs(obs, jnp.full((n,), cond), 1.0)
    v = lambda o, x, t: _apply(net)(params, o, x, t)  # noqa: E731
    return bc.sample_actions(v, obs, jax.random.PRNGKey(seed), n, (1, 1), bc.FlowConfig(flow_steps=flow_steps))[:, 0, 0]


def _init(net, n=4):
    return net.init(jax.random.PRNGKey(0), jnp.zeros((n, L)), jnp.zeros((n, 1, 1)), jnp.zeros((n,)))


def _fit_two_modes(net, loss, cfg: ExtractionConfig):
    """Trains `net` with `loss(apply, params, obs, actions, advantage, rng, valid, cfg)` on the two-mode data."""
    valid = jnp.ones((256, 1), bool)

    def loss_fn(p, rng):
        d, r = jax.random.split(rng)
        obs, actions, adv = two_mode_data(d, 256)
        return loss(_apply(net), p, obs, actions, adv, r, valid, cfg)

    params, _ = fit(loss_fn, _init(net), 1500, optax.adam(3e-3), 0)
    return params


def test_recap_conditioned_policy_picks_the_better_mode():
    net = _net()
    params = _fit_two_modes(net, extraction.recap_loss, ExtractionConfig())
    obs = {"lang": jnp.zeros((400, L))}
    pos, neg, free = (_sample(net, params, obs, 400, cond=c) for c in (1.0, -1.0, 0.0))
    assert float(jnp.mean(pos > 0)) > 0.9  # "advantage positive" -> the better mode
    assert float(jnp.mean(neg < 0)) > 0.9  # "negative" -> the worse one
    assert 0.2 < float(jnp.mean(free > 0)) < 0.8  # unconditioned (dropped indicator): both modes


def test_recap_indicator_labels_and_drops():
    adv = jnp.array([0.3, -0.2, 0.0, 1.0] * 500)
    cond = extraction.recap_indicator(adv, jax.random.PRNGKey(0), ExtractionConfig(recap_drop_prob=0.3))
    kept = cond != 0
    assert abs(float(jnp.mean(~kept)) - 0.3) < 0.05
    np.testing.assert_array_equal(np.asarray(cond[kept]), np.where(np.asarray(adv[kept]) > 0, 1.0, -1.0))
    human = jnp.arange(2000) % 2 == 0  # human-driven chunks are positive whatever their advantage (pi0.6)
    cond = extraction.recap_indicator(adv, jax.random.PRNGKey(0), ExtractionConfig(recap_drop_prob=0.0), human)
    np.testing.assert_array_equal(np.asarray(cond), np.where(np.asarray(human | (adv > 0)), 1.0, -1.0))
    off = extraction.recap_indicator(adv, jax.random.PRNGKey(0), ExtractionConfig(recap_drop_prob=0.0, recap_human_positive=False), human)
    np.testing.assert_array_equal(np.asarray(off), np.where(np.asarray(adv) > 0, 1.0, -1.0))


def test_awr_flow_tilts_towards_the_better_mode():
    net = _net()
    # temperature 30: weights e^3 vs e^-3, ~400:1 for the good mode
    params = _fit_two_modes(net, extraction.awr_flow_loss, ExtractionConfig(awr_temperature=30.0))
    a = _sample(net, params, {"lang": jnp.zeros((400, L))}, 400)
    assert float(jnp.mean(a > 0)) > 0.9
    w = extraction.awr_weights(jnp.array([0.0, 1.0, 100.0]), 1.0, 50.0)
    np.testing.assert_allclose(np.asarray(w), [1.0, np.e, 50.0], rtol=1e-6)  # exp, clipped at the max weight


def test_q_grad_actor_moves_to_the_argmax_of_q():
    """Q(a) = 1 - (a - 0.8)^2 on data centred at 0: with a small BC weight the sampler's output goes to ~0.8."""
    net = _net()
    cfg = ExtractionConfig(q_grad_bc_weight=0.01)
    flow = bc.FlowConfig(flow_steps=5)
    n = 128

    def q_fn(_obs, a):
        return 1.0 - jnp.square(a[:, 0, 0] - 0.8)[None, :]

    def loss(p, rng):
        d, r, s = jax.random.split(rng, 3)
        obs = {"lang": jnp.zeros((n, L))}
        actions = 0.1 * jax.random.normal(d, (n, 1, 1))
        bc_loss, _ = bc.flow_matching_loss(_apply(net), p, obs, actions, r)
        v = lambda o, x, t: _apply(net)(p, o, x, t)  # noqa: E731
        return extraction.q_grad_loss(v, q_fn, obs, bc_loss, s, (1, 1), flow, cfg)

    params, _ = fit(loss, _init(net), 800, optax.adam(3e-3), 0)
    a = _sample(net, params, {"lang": jnp.zeros((400, L))}, 400, flow_steps=flow.flow_steps)  # the trained sampler
    assert abs(float(jnp.mean(a)) - 0.8) < 0.15


def test_extraction_config_rejects_bad_values():
    with pytest.raises(ValueError, match="recap_drop_prob"):
        ExtractionConfig(recap_drop_prob=1.0)
    with pytest.raises(ValueError, match="q_grad_bc_weight"):
        ExtractionConfig(q_grad_bc_weight=-1.0)


# ------------------------------------------------------------------------------------------- HG-DAgger
def test_human_chunk_mask_keeps_whole_human_chunks_only():
    from lwd_jax.learner.fleet_store import human_chunk_mask

    inter = np.array([0, 0, 1, 1, 1, 1, 0, 1, 1], bool)
    # H = 2: chunk t..t+1 (cut at the end) is all human at t = 2, 3, 4, 7, 8
    np.testing.assert_array_equal(human_chunk_mask(inter, 2), [0, 0, 1, 1, 1, 0, 0, 1, 1])
    assert not human_chunk_mask(np.zeros(5, bool), 3).any()
    assert human_chunk_mask(np.ones(5, bool), 3).all()


def test_hg_dagger_fleet_buffer_holds_exactly_the_human_segments(tmp_path):
    from lwd_jax.data.batching import InstructionTable
    from lwd_jax.data.replay import TransitionBuffer
    from lwd_jax.learner.fleet_store import FleetStore, human_chunk_mask
    from tests.rlds_fixtures import make_episode

    table = InstructionTable(lambda texts: np.ones((len(texts), 4), np.float32), 4)
    kw = dict(chunk_len=3, n_chunks=1, gamma=0.99, task_ids={"cube_pick_place": 0}, table=table, capacity=1000, durable=False)
    human = FleetStore(str(tmp_path / "h"), keep="human", **kw)
    every = FleetStore(str(tmp_path / "a"), **kw)
    total = 0
    for seed in range(3):
        ep = make_episode(np.random.default_rng(seed), num_steps=20, task="cube_pick_place")
        ep.intervention = np.zeros(20, bool)
        ep.intervention[5:12] = True  # one human takeover of 7 steps
        for store in (human, every):
            store.persist(ep)
            store.on_accept(ep)
        total += int(human_chunk_mask(ep.intervention, 3).sum())
    assert len(human) == len(every) == 3  # every episode is logged (and stored on disk) ...
    assert human.num_transitions() == total == 3 * 5  # ... but only chunks t = 5..9 enter BC's buffer
    assert every.num_transitions() == 60
    rows = human.buffer.gather(np.arange(total))
    assert rows["intervention"].all()
    # A keep-all store holds the same human chunks apart (LWD's base clones them: agent.base_bc_data="expert"),
    # and its expert batch weighs every demo and human transition alike, as HG-DAgger's aggregate does.
    assert every.num_human_transitions() == human.num_human_transitions() == total
    np.testing.assert_array_equal(every.human.gather(np.arange(total))["action"], rows["action"])
    demos = TransitionBuffer(1000)
    demos.add({k: v[:1].repeat(45, axis=0) for k, v in every.buffer.gather(np.arange(60)).items()})
    demos_action = every.buffer.gather(np.arange(1))["action"]
    batch = every.sample_expert(np.random.default_rng(0), demos, 600)
    from_demos = np.all(batch["action"] == demos_action, axis=(1, 2))
    assert from_demos.sum() == 450  # 45 demo rows of 60 in all: a fixed 3/4 of the batch
    with pytest.raises(ValueError, match="keep"):
        FleetStore(str(tmp_path / "x"), keep="robot", **kw)


# ------------------------------------------------------------------------------ SFT data and shared start
def test_demos_only_pretrain_buffer(smoke_dataset):
    from experiments.configs.multitask import get_config
    from experiments.train import load_offline
    from lwd_jax.data.batching import InstructionTable
    from lwd_jax.data.rlds_reader import RLDSReader
    from lwd_jax.sim.tasks import task_names

    data_cfg, _ = smoke_dataset
    cfg = get_config("smoke")
    cfg.data.offline_dir = data_cfg.out_dir
    cfg.data.pretrain_data = "demos"
    tasks = data_cfg.tasks.split(",")
    table = InstructionTable(lambda texts: np.zeros((len(texts), 4), np.float32), 4)
    offline, demos = load_offline(cfg, tasks, {t: i for i, t in enumerate(task_names())}, table)
    eps = list(RLDSReader(data_cfg.out_dir).episodes())
    assert len(offline) == sum(e.num_steps for e in eps)
    assert len(demos) == sum(e.num_steps for e in eps if e.source == "demo") < len(offline)


def test_benchmark_driver_end_to_end(smoke_dataset, tmp_path):
    """SFT once, methods from its checkpoint (HG-DAgger and LWD-QAM online, an offline ablation), tables,
    JSON and a plot; every run is the main job's protocol with the method's switches."""
    from experiments import benchmark
    from experiments.cli import ConfigError
    from experiments.configs.benchmark import get_config

    data_cfg, _ = smoke_dataset
    b = get_config("smoke")
    b.root, b.results_dir, b.offline_dir = str(tmp_path / "runs"), str(tmp_path / "results"), data_cfg.out_dir
    b.methods = "HG-DAgger,LWD-QAM,best-of-16 -> AWR flow,BC on all data"
    b.extra = f"tasks={data_cfg.tasks}"
    out = benchmark.run_benchmark(b)
    assert list(out["rows"]) == ["SFT", "HG-DAgger", "LWD-QAM offline", "LWD-QAM online", "best-of-16 -> AWR flow",
                                 "BC on all data"]
    n = len(data_cfg.tasks.split(","))  # one evaluation episode per task: every method met the same scenes
    assert out["paired"]["LWD-QAM online vs SFT"]["n"] == n
    assert "best-of-16 -> AWR flow vs LWD offline" not in out["paired"]  # no LWD run: no reference row
    assert "**Paired comparisons**" in (tmp_path / "results" / "benchmark.md").read_text()
    # the best-of-N probe beside the AWR actor (its offline stage)
    assert set(out["critic_probe"]["best-of-16 -> AWR flow"]["offline"]) >= {"best_of_n_success", "policy_success"}
    assert out["rows"]["BC on all data"]["evaluation"] == "pretrain"
    ref = benchmark.run_config(b, 0, "BC on all data")  # trains its own BC flow on the whole mix
    assert ref.init_from == "" and ref.data.pretrain_data == "all" and ref.offline_steps == 0
    assert os.path.isdir(os.path.join(ref.workdir, "checkpoints", str(ref.pretrain_steps)))
    assert list(out["critic_probe"]) == ["LWD-QAM", "best-of-16 -> AWR flow"]  # HG-DAgger trains no critic
    assert out["critic_probe"]["best-of-16 -> AWR flow"]["offline"]["seeds"] == 1
    sft = benchmark.workdir(b, 0, "SFT")
    with open(os.path.join(benchmark.workdir(b, 0, "HG-DAgger"), "results.json")) as f:
        hg = json.load(f)
    with open(os.path.join(sft, "results.json")) as f:
        assert hg["pretrain"] == json.load(f)["pretrain"]  # the shared SFT evaluation, not a re-run
    assert set(hg) == {"pretrain", "online"}  # HG-DAgger has no offline RL stage
    for name in ("benchmark.json", "benchmark.md", "hg-dagger.png", "lwd-qam.png"):
        assert os.path.getsize(tmp_path / "results" / name) > 0
    md = (tmp_path / "results" / "benchmark.md").read_text()
    assert "| SFT |" in md and "best-of-16 -> AWR flow" in md and "**Critic probe**" in md
    # a method's run starts from the SFT checkpoint (its BC flow equals SFT's) on the main job's protocol;
    # a method with its own extraction acts with it alone, LWD with the best of 16 under its critic
    cfg = benchmark.run_config(b, 0, "best-of-16 -> AWR flow")
    assert cfg.init_from == sft and cfg.agent.extraction == "awr" and cfg.data.pretrain_data == "demos"
    assert cfg.agent.qam.best_of_n == 1 and cfg.agent.base_bc_data == "batch"
    lwd = benchmark.run_config(get_config(""), 0, "LWD")
    assert lwd.agent.extraction == "best_of_n" and lwd.agent.qam.best_of_n == 16 and lwd.online.control_hz == 20.0
    assert lwd.tasks == "puzzle_3x3_diagonal_off,scene_open_drawer,cube_stack,scene_unlock_and_open"
    assert lwd.eval.episodes_per_task == 48 and lwd.online_steps == 10_000
    with pytest.raises(ValueError, match="no such field"):
        b.extra = "agent.nonsense=1"
        benchmark.run_config(b, 0, "LWD")
    b.methods = "LWD,NoSuchMethod"  # a one-line error (exit 2 from the command line) before any run
    with pytest.raises(ConfigError, match="unknown \\['NoSuchMethod'\\]"):
        benchmark.run_benchmark(b)


def test_recap_policy_acts_with_the_configured_indicator():
    """+1 (as deployed) and the diagnostic 0 / -1 give three different policies; 0 is the plain actor."""
    obs = random_obs(np.random.default_rng(0), 4)
    x, t = jnp.zeros((4, 5, 5)), jnp.full((4,), 0.5)
    outs = {}
    for ind in (1.0, 0.0, -1.0):
        cfg = smoke_agent_config()
        cfg.extraction, cfg.baselines.recap_act_indicator = "recap", ind
        agent = LWDAgent(cfg, shd.make_mesh(devices=jax.devices()[:1]))
        params = agent.init(0, obs).params
        outs[ind] = np.asarray(agent.policy_velocity(params)(obs, x, t))
    plain = np.asarray(agent.actor_net.apply(params["actor"], obs, x, t))
    np.testing.assert_allclose(outs[0.0], plain, rtol=1e-6, atol=1e-6)
    assert not np.allclose(outs[1.0], outs[0.0]) and not np.allclose(outs[-1.0], outs[0.0])
    with pytest.raises(ValueError, match="recap_act_indicator"):
        ExtractionConfig(recap_act_indicator=0.5)


def test_online_mix_fixed_or_proportional():
    from experiments.configs.multitask import get_config
    from experiments.train import check_config
    from lwd_jax.learner.online import online_fraction

    cfg = get_config("smoke")
    assert online_fraction(cfg, 900, 100) == cfg.data.online_fraction == 0.5  # the paper's ~1:1, whatever the sizes
    cfg.data.online_mix = "proportional"  # HG-DAgger: the aggregate D ∪ D_human, every transition equally likely
    assert online_fraction(cfg, 900, 100) == pytest.approx(0.1) and online_fraction(cfg, 0, 0) == 0.0
    cfg.data.online_mix = "weighted"
    with pytest.raises(ValueError, match="config.data.online_mix"):
        check_config(cfg)


def test_instruction_table_embeds_wordings_it_has_not_seen():
    """Regression: `embed` indexed the table before `ids` had grown it, so a first-seen wording raised
    IndexError (the online stage embeds every task wording at once)."""
    from lwd_jax.data.batching import InstructionTable

    table = InstructionTable(lambda texts: np.array([[float(len(t)), 1.0] for t in texts], np.float32), 2)
    np.testing.assert_array_equal(table.embed(["ab", "abcd"]), [[2, 1], [4, 1]])
    np.testing.assert_array_equal(table.embed(["abcd", "xyz", "ab"]), [[4, 1], [3, 1], [2, 1]])
    assert len(table) == 3


def test_fleet_log_is_bounded_in_ram_and_whole_on_disk_across_a_restart(tmp_path):
    """Issue 16: RAM keeps the last `recent` fleet-log records and running counts; the whole log is a file
    rewritten from the dataset at every start, so a restart neither loses nor doubles a record."""
    from lwd_jax.data.batching import InstructionTable
    from lwd_jax.learner.fleet_store import FleetStore
    from tests.rlds_fixtures import make_episode

    table = InstructionTable(lambda texts: np.ones((len(texts), 4), np.float32), 4)
    kw = dict(chunk_len=3, n_chunks=1, gamma=0.99, task_ids={"cube_pick_place": 0}, table=table, capacity=50,
              durable=False, recent=3)
    store = FleetStore(str(tmp_path / "rlds"), **kw)
    eps = [make_episode(np.random.default_rng(s), num_steps=10 + s, task="cube_pick_place") for s in range(8)]
    for ep in eps:
        store.persist(ep)
        store.on_accept(ep)
    assert len(store) == 8 and store.robot_steps() == sum(10 + s for s in range(8))
    assert [e.order for e in store.snapshot()] == [5, 6, 7]  # the window, oldest first
    whole = list(store.history())
    assert [e.episode_id for e in whole] == [ep.episode_id for ep in eps] and [e.order for e in whole] == list(range(8))
    store.close()

    again = FleetStore(str(tmp_path / "rlds"), **kw)
    assert len(again.rebuild()) == 8
    assert [e.episode_id for e in again.history()] == [ep.episode_id for ep in eps]  # not 16: rewritten, not appended
    assert len(again) == 8 and [e.order for e in again.snapshot()] == [5, 6, 7]
    again.close()
    with pytest.raises(ValueError, match="FleetStore.recent"):
        FleetStore(str(tmp_path / "other"), **{**kw, "recent": 0})
