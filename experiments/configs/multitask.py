"""The main experiment (`make train EXP=multitask`): one policy for several tasks, BC pretrain -> offline
LWD -> online LWD with the embedded simulated fleet, every stage evaluated on the same test scenes.

    python -m experiments.train --config=experiments/configs/multitask.py
    python -m experiments.train --config=experiments/configs/multitask.py --config.stage=offline

Variants, selected after the colon:
  * "" (the main job): the flywheel protocol (`main_job` below; experiments/configs/flywheel.py runs it for 3
    seeds) on the four tasks of the simulated suite where SFT has headroom, from the 5x offline mix. Why not
    every task with the 10-demo mix, as before: that default could not improve by construction (BC on the
    whole noisy mix left a 0.15 policy that 2,000 online updates did not move; README, Results), while this
    protocol is the one measured to turn the flywheel (README, "The flywheel study").
  * "suite": every task, the paper's extraction (QAM) and the older CPU budgets: the base `make bench` and
    "gpu" build on (the method benchmark, experiments/configs/benchmark.py, runs on the main job).
  * "smoke": tiny nets and budgets on "suite": what the tests train and resume.
  * "gpu": the public QAM reference sizes (4x512 MLPs, batch 256) on "suite", for an accelerator.
Any field can be overridden on the command line, e.g. `--config.agent.actor_lr=1e-4`; an unknown field
is an error naming it.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from fleet_api.embodiment import UR5E
from lwd_jax.algos import divl, extraction, qam


def get_agent_config() -> ml_collections.ConfigDict:
    """Nets, optimizers, DIVL and QAM. CPU-sized by default (see ALGORITHMS.md 'Compute budget')."""
    a = ml_collections.ConfigDict()
    # H and A: the embodiment's chunk_len and action_dim (config.embodiment; checked at start). The simulated UR5e
    # acts in chunks of 5 (QAM code's default; the paper uses 30 at 30 Hz) with 5-d actions.
    a.action_horizon = UR5E.chunk_len
    a.action_dim = UR5E.action_dim
    a.use_image = False  # CPU fleets use state + language; images need EGL rendering on a GPU machine
    a.lang_proj_dim = 64
    a.encoder_hidden = (256,)
    a.encoder_dim = 256
    a.actor_hidden = (256, 256, 256)
    a.critic_hidden = (256, 256, 256)
    a.value_hidden = (256, 256, 256)
    a.activation = "gelu"
    a.num_critics = 2  # clipped double Q (paper)
    a.actor_lr = 3e-4
    a.critic_lr = 3e-4
    a.grad_clip = 10.0
    a.base_ema = 0.005
    a.intervention_bc_weight = 0.0  # >0: human-driven chunks count extra in the base flow's BC
    # What the base flow clones when qam.base_reference keeps it trained: "batch" (the RL batch, the QAM code) |
    # "expert" (online only: what BC pretraining cloned plus the fleet's human-driven chunks, drawn beside the
    # RL batch: the aggregate HG-DAgger clones, so the deployed flow learns the corrections itself).
    a.base_bc_data = "batch"
    a.freeze_encoder_online = True  # LWD freezes the policy's vision-language backbone online
    a.fsdp_min_size = 2**18  # leaves at least this large are split over the `fsdp` mesh axis
    # Method sections are built from the dataclasses' own defaults (paper values marked there): the config
    # overrides only what differs, so a default lives in one place.
    a.divl = ml_collections.ConfigDict(dataclasses.asdict(divl.DIVLConfig()))  # lwd_jax/algos/divl.py
    # Policy extraction, an entry of lwd_jax/methods.py: "qam" (LWD) | "awr" (advantage-weighted flow matching:
    # the critic-gradient-free ablation) | "recap" (advantage-conditioned flow, pi0.6-style) | "q_grad"
    # (RLPD/HIL-SERL-style: max Q through the whole sampler + flow BC). QAM's settings are `qam`; the
    # baselines' are `baselines` (lwd_jax/algos/extraction.py: ExtractionConfig).
    a.extraction = "qam"
    a.baselines = ml_collections.ConfigDict(dataclasses.asdict(extraction.ExtractionConfig()))
    a.qam = ml_collections.ConfigDict(dataclasses.asdict(qam.QAMConfig()))  # lwd_jax/algos/qam.py
    # Log the tilt's effective sample size and sigma_Q every update (a few % of an update): a run then shows
    # whether QAM tilts at all (at inv_temp 0.5 with 0/1 rewards it does not; temperature="relative" does).
    a.qam.tilt_diagnostics = True
    return a


# The four tasks of the main job: two short, two long, where SFT has headroom (SFT 0.52 pooled on them in an
# earlier measurement; 0.67 in the flywheel study's run E).
MAIN_TASKS = "puzzle_3x3_diagonal_off,scene_open_drawer,cube_stack,scene_unlock_and_open"


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "suite", "smoke", "gpu"):
        raise ValueError(f"multitask config: unknown variant {variant!r}; expected '', 'suite', 'smoke' or 'gpu'")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stage = "all"  # "offline": pretrain + offline RL | "online": the fleet loop (after offline) | "all"
    c.workdir = "runs/multitask"
    c.resume = True  # continue from the latest checkpoint in workdir when there is one
    c.tasks = "all"  # comma-separated task names, or "all": every simulated task, or every task of task_file
    # A robot that is not our simulator: its body (a TOML file, fleet_api/embodiment.py; "" the simulated UR5e,
    # whose agent.action_dim and agent.action_horizon must match) and its tasks (a TOML task file,
    # fleet_api/tasks.py; the simulated suite's are always known). Example: experiments/robots/.
    c.embodiment = ""
    c.task_file = ""
    # Start from another run's BC-pretrain checkpoint (its workdir) instead of pretraining here: the
    # benchmark shares one SFT checkpoint per seed across every method. Only the BC flow is taken.
    c.init_from = ""
    # What the online learner does with fleet data: "rl" (the agent's critic + extraction, LWD and the RL
    # baselines) | "hg_dagger" (BC on the demos plus the fleet's human-driven chunks; deploys the BC flow).
    c.online_learner = "rl"

    c.data = ml_collections.ConfigDict()
    c.data.offline_dir = "data/offline"
    # Another lab's RLDS layout: a TOML key map (lwd_jax/data/rlds_keymap.py: load_key_map_file; an example for
    # an RT-1-style Open X-Embodiment layout in experiments/keymaps/rt1_fractal.toml). "": our own layout.
    c.data.key_map_file = ""
    # What BC pretraining clones: "all" episodes of the offline mix, or only the "demos" (the SFT baseline;
    # HG-DAgger aggregates the fleet's human chunks with the same demos).
    c.data.pretrain_data = "all"
    c.data.gamma = 0.998  # per control step; cycle time enters through it (paper: 0.9999 at 30 Hz)
    c.data.n_chunks_offline_long = 10  # paper: n = 10 chunks offline on long tasks
    c.data.n_chunks_offline_short = 1  # paper: n = 1 on short tasks
    c.data.n_chunks_online = 1  # paper: n = 1 online for all tasks
    c.data.stride = 1
    c.data.task_balanced = True
    c.data.online_fraction = 0.5  # paper: offline:online about 1:1
    # "fixed": online_fraction of every batch from the fleet buffer | "proportional": every stored transition
    # equally likely, offline or fleet (DAgger's dataset aggregation: HG-DAgger retrains on D ∪ D_human)
    c.data.online_mix = "fixed"
    c.data.online_capacity = 1_000_000

    c.agent = get_agent_config()
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

    c.batch_size = 256
    c.updates_per_call = 10  # lax.scan over this many batches per jitted call
    # Calls whose batches are built (and placed on the devices) ahead, on a thread beside the update
    # (learner/prefetch.py): 1 overlaps the next call's build with the update in flight; 0 builds each in the
    # training thread between updates.
    c.prefetch_batches = 1
    # CPU budget (measured: ~27 min on 2 shared cores with both evaluations, see README); the gpu variant
    # trains 10-100x longer.
    c.pretrain_steps = 10_000
    # Critic-only DIVL updates between BC pretraining and offline RL (the policy waits for an informed critic;
    # in-sample targets never query it). Each costs a small fraction of a full update (see README, Speed).
    c.critic_warmup_steps = 0
    c.offline_steps = 2_000
    c.online_steps = 2_000  # learner updates of the online stage (stage "online" / "all")

    # The embedded simulated fleet of the online stage (lwd_jax/learner/online.py).
    c.online = ml_collections.ConfigDict()
    c.online.num_robots = 3  # bridge daemon processes on loopback
    c.online.teleop_robots = 1  # the first k robots have a simulated human attendant (interventions)
    c.online.control_hz = 40.0  # simulated robots run at 2x their nominal 20 Hz, paced by the daemon
    c.online.fleet_episodes = 240  # fleet budget, split over the robots (0: until the learner is done)
    c.online.publish_every = 200  # learner updates between parameter versions (K)
    # Updates per jitted call online (0: updates_per_call). A fleet episode enters the next batch built, a call
    # ahead of its update: shorter calls, fresher data (make bench, pipeline), at a small cost in updates/s.
    c.online.updates_per_call = 0
    # How the learner paces itself against the fleet: "episodes" (the update budget spread evenly over the
    # fleet-episode budget: the same for every method) | "utd" (at most utd_ratio updates per robot step
    # delivered so far: the learner trains as fast as its data allows, as SERL's actor/learner does).
    c.online.pacing = "episodes"
    c.online.utd_ratio = 1.0
    c.online.warmup_episodes = 6  # fleet episodes before the first online update
    c.online.warmup_timeout_s = 600.0
    c.online.log_window = 20  # per-task trailing window of fleet success in the logs
    c.online.port = 0  # 0: any free port (the bound one is printed and written to <workdir>/fleet/learner.json)
    c.online.stop_timeout_s = 120.0  # SIGTERM -> SIGKILL for daemons that do not finish and flush
    # Serving a real fleet (experiments/serve.py; README "Run your own fleet"). The defaults serve the embedded
    # fleet on loopback only, with tokens minted per run.
    c.online.host = "127.0.0.1"  # bind address; "[::]" or "0.0.0.0" lets robots on other machines in
    c.online.tokens_file = ""  # robots' hashed tokens (python -m lwd_jax.learner.auth add); re-read on change
    c.online.tls_cert = ""  # PEM certificate chain and key of the learner: TLS on
    c.online.tls_key = ""
    c.online.tls_client_ca = ""  # PEM CA that signed the robots' client certificates: mTLS on
    c.online.tls_ca = ""  # PEM CA the embedded robots check tls_cert against (with TLS and embedded robots)
    c.online.tls_target_name = ""  # the name the embedded robots expect in tls_cert ("" : localhost)
    c.online.until_stopped = False  # the online stage runs until SIGTERM/SIGINT (online_steps is then no limit)
    c.online.duration_s = 0.0  # wall-clock budget of the online stage in seconds (0: none)
    # Ingest bounds (lwd_jax/learner/service.py): payload bytes of all open uploads, open uploads per robot
    # (beyond either: RESOURCE_EXHAUSTED, the robot retries), and |reward| (beyond: refused for good).
    c.online.max_inflight_mb = 1024
    c.online.max_streams_per_robot = 2
    c.online.max_abs_reward = 1e3
    # Ingest replicas (lwd_jax/learner/replicas.py): N > 0 starts N replica processes on `host` that take the
    # robots' uploads into one shared store (exactly once by episode id) and serve the policy; the learner tails
    # the store and answers no robot itself. Robots get the replicas' address list. shared_store: the store's
    # root ("" : <workdir>/fleet/shared); on a cluster, a directory every replica and learner host mounts.
    c.online.ingest_replicas = 0
    c.online.shared_store = ""

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 10_000
    c.eval.episodes_per_task = 10
    c.eval.workers = 2
    c.eval.seed = 12345
    c.eval.offline = True  # evaluate after the offline stage too (the benchmark skips it where Table I does)
    # The best-of-N probe after each RL stage (N BC samples, the best by the target critic); 0: off.
    c.eval.best_of_n = 16

    c.checkpoint_every = 5_000
    c.keep_checkpoints = 3
    c.log_every = 1_000
    c.probe_size = 2048  # offline transitions the critic probe scores against their Monte-Carlo returns

    if variant == "smoke":
        c.workdir = "runs/smoke"
        c.batch_size = 16
        c.updates_per_call = 2
        c.pretrain_steps = 4
        c.offline_steps = 4
        c.online_steps = 4
        c.online.num_robots = 2
        c.online.teleop_robots = 1
        c.online.control_hz = 0.0
        c.online.fleet_episodes = 4
        c.online.publish_every = 2
        c.online.warmup_episodes = 2
        c.online.warmup_timeout_s = 120.0
        c.online.stop_timeout_s = 60.0
        c.eval.every = 4
        c.eval.episodes_per_task = 1
        c.eval.workers = 1
        c.checkpoint_every = 2
        c.log_every = 2
        c.probe_size = 128  # the probe runs at every log: 2048 rows cost ~10 s per probe with the image encoder
        for k in ("encoder_hidden", "actor_hidden", "critic_hidden", "value_hidden"):
            c.agent[k] = (32,)
        c.agent.encoder_dim = 32
        c.agent.lang_proj_dim = 8
        c.agent.divl.num_atoms = 21
        c.agent.qam.flow_steps = 3
    elif variant == "gpu":
        c.workdir = "runs/multitask_gpu"
        for k in ("actor_hidden", "critic_hidden", "value_hidden"):
            c.agent[k] = (512, 512, 512, 512)
        c.agent.encoder_hidden = (512,)
        c.agent.encoder_dim = 512
        c.pretrain_steps = 100_000
        c.offline_steps = 200_000
    elif variant == "suite":
        c.workdir = "runs/suite"
    elif variant == "":
        main_job(c)
    c.lock()  # a misspelt field (here or from the command line) is an error naming it, never a silent new key
    return c


def flywheel_method(c: ml_collections.ConfigDict) -> None:
    """The flywheel protocol's method settings (in place; any budget). Why each, with the runs behind it:

      * SFT = BC on the demonstrations only (data.pretrain_data = demos);
      * extraction "best_of_n": act with the best of 16 BC samples under the target critic. The one lever measured
        to make the critic useful was the policy's own episodes (issue 13, finding 6), which the online stage is;
      * online, the BC flow that best-of-16 samples from keeps cloning the demos plus the fleet's human-driven
        chunks (agent.base_bc_data = "expert", HG-DAgger's aggregate drawn beside the RL batch): with the flow
        frozen, the corrections reached only the critic and LWD online (0.719) stayed far below HG-DAgger
        (0.899; run D); with it, LWD online 0.837 vs HG-DAgger 0.816 (run E, fresh seeds and scenes);
      * DIVL tau_mode "centered" (the batch mean of tau at tau_base: the paper's adaptive form sat at 0.42 here)
        and tau_base 0.6 offline *and online* (the paper's 0.9 online made the online critic optimistic, Q-bar -
        MC +0.11 on validation scenes, run B); a ramp of 2,000 updates if tau_base_online is set apart;
      * the learner paced at 0.5 updates per robot step (it trains as fast as its data allows);
      * no separate best-of-N probe: the deployed policy *is* best-of-16 of the BC flow.
    """
    c.data.pretrain_data = "demos"
    c.agent.extraction = "best_of_n"
    c.agent.qam.best_of_n = 16
    c.agent.qam.base_reference = "online"
    c.agent.base_bc_data = "expert"
    c.agent.divl.tau_mode = "centered"
    c.agent.divl.tau_base_online = 0.6
    c.agent.divl.tau_ramp_updates = 2_000
    c.online.pacing = "utd"
    c.online.utd_ratio = 0.5
    c.eval.best_of_n = 0


def main_job(c: ml_collections.ConfigDict) -> None:
    """The flywheel protocol at its CPU budget (in place): one seed of the flywheel study, ~11 minutes of
    training and evaluation on 2 cores (README). Budgets fixed before run C from earlier measurements:
    20k BC updates, 5k critic-only updates (the critic probe's AUROC saturates by then), 1k offline RL
    updates, then 96 fleet episodes (24 per task, 3 robots in real time at 20 Hz, one with a simulated human)
    and 10k online updates. Unpaced (0 Hz) the fleet ran its 96 episodes in ~80 s, before the learner had
    published a single new version, so no flywheel turned (results/flywheel/unpaced/)."""
    flywheel_method(c)
    c.tasks = MAIN_TASKS
    c.data.offline_dir = "data/offline_large"  # the 5x mix of every task (make data; make benchmark shares it)
    for k in ("actor_hidden", "critic_hidden", "value_hidden"):
        c.agent[k] = (256, 256)
    c.agent.divl.num_atoms = 101
    c.pretrain_steps = 20_000
    c.critic_warmup_steps = 5_000
    c.offline_steps = 1_000
    c.online_steps = 10_000
    c.online.num_robots = 3
    c.online.teleop_robots = 1
    c.online.control_hz = 20.0
    c.online.fleet_episodes = 96
    c.online.publish_every = 500
    c.online.warmup_episodes = 6
    # 48 evaluation episodes per task (192 per stage, the same scenes for every stage): the paired tests of one
    # seed then resolve about a 0.1 gain (the flywheel study keeps 24 per task and pools 3 seeds).
    c.eval.episodes_per_task = 48
    # The deployed policy on the same test scenes every 2,500 updates of the online stage (4 evaluations, ~1 min
    # each): the plot's learning curve against fleet episodes. (Offline RL is 1,000 updates: no periodic one.)
    c.eval.every = 2_500
    c.checkpoint_every = 5_000
    c.log_every = 500
