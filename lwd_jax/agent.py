"""The LWD agent: one parameter tree (policy, base flow, frozen reference, critic, target critic, value),
pure `init` / `pretrain_update` / `update` / `sample_actions`, jitted with explicit shardings.

Why a state pytree plus a plain builder object: everything that changes during training (params,
optimizer states, RNG, step) lives in `AgentState`, a pytree of arrays that jit, orbax and shardings handle
uniformly; everything static (modules, optimizers, configs) lives in `LWDAgent`, which closes over it to
build the pure functions. Gradients flow only where a sub-tree is passed as the differentiated argument.

Update order per batch (ALGORITHMS.md): value psi -> TD target from the updated psi -> critic phi ->
target-critic EMA -> QAM policy extraction -> base-flow BC (when the base is kept trained) -> its EMA.

Batch layout (leading axis B; `lwd_jax.data.batching` builds it on the host):
  observations, next_observations: {state [B,S], state_mask [B,S], proprio [B,P], lang [B,L], image?}
  actions [B,H,A] in [-1,1]; action_valid [B,H]; reward [B]; discount [B]; intervention [B]
  bc (online, with agent.base_bc_data = "expert"): {observations, actions, action_valid} of the base's BC data
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from lwd_jax import methods
from lwd_jax import sharding as shd
from lwd_jax.algos import bc, divl, extraction, qam
from lwd_jax.algos.common import ema_update
from lwd_jax.nets.critic import CriticEnsemble
from lwd_jax.nets.encoder import EncodedNet, ObsEncoder
from lwd_jax.nets.flow import VelocityField
from lwd_jax.nets.value import CategoricalValue, ScalarValue

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
TRAINED = ("actor", "base", "critic", "value")  # sub-trees with an optimizer
# What the base flow clones when it is kept trained: "batch" (the RL batch, as the public QAM code does) |
# "expert" (a batch of its own: the data BC pretraining cloned plus the fleet's human-driven chunks, the
# aggregate HG-DAgger clones; only the online stage supplies it).
BASE_BC_DATA = ("batch", "expert")


@flax.struct.dataclass
class AgentState:
    """Everything that changes while training; a pytree of arrays (checkpointed whole)."""

    step: jax.Array  # int32 scalar: learner updates done
    rng: jax.Array  # uint32 [2] raw key data (portable across checkpoint restores)
    params: dict[str, Any]  # actor, base, base_ref, critic, critic_target, value
    opt_state: dict[str, Any]  # one optax state per name in TRAINED


def _encoder(cfg: ml_collections.ConfigDict) -> ObsEncoder:
    return ObsEncoder(
        use_image=cfg.use_image,
        lang_proj_dim=cfg.lang_proj_dim,
        hidden_dims=tuple(cfg.encoder_hidden),
        out_dim=cfg.encoder_dim,
        activation=cfg.activation,
    )


class LWDAgent:
    """Builds the nets and optimizers from `config.agent` and the jitted pure functions over a mesh."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh: Mesh | None = None):
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else shd.make_mesh()
        self.action_shape = (cfg.action_horizon, cfg.action_dim)
        vel = functools.partial(
            VelocityField, cfg.action_horizon, cfg.action_dim, tuple(cfg.actor_hidden), cfg.activation
        )
        self.actor_net = EncodedNet(_encoder(cfg), vel(final_init_scale=0.0 if cfg.qam.residual else 1.0))
        self.base_net = EncodedNet(_encoder(cfg), vel())
        self.critic_net = EncodedNet(
            _encoder(cfg), CriticEnsemble(cfg.num_critics, tuple(cfg.critic_hidden), cfg.activation)
        )
        value_head = (
            CategoricalValue(cfg.divl.num_atoms, tuple(cfg.value_hidden), cfg.activation)
            if cfg.divl.value_type == "distributional"
            else ScalarValue(tuple(cfg.value_hidden), cfg.activation)
        )
        self.value_net = EncodedNet(_encoder(cfg), value_head)
        self.divl_cfg = divl.DIVLConfig(**dict(cfg.divl))
        self.qam_cfg = qam.QAMConfig(**dict(cfg.qam))
        self.flow_cfg = self.qam_cfg.flow
        self.extraction = methods.get_extraction(cfg.extraction)
        if cfg.base_bc_data not in BASE_BC_DATA:
            raise ValueError(f"config.agent.base_bc_data: expected one of {BASE_BC_DATA}, got {cfg.base_bc_data!r}")
        if cfg.base_bc_data == "expert" and cfg.qam.base_reference == "frozen":
            raise ValueError("config.agent.base_bc_data='expert' trains the base flow online, but "
                             "config.agent.qam.base_reference is 'frozen'; set it to 'online' or 'ema'")
        if cfg.qam.residual and not self.extraction.residual:
            raise ValueError(f"config.agent.qam.residual: extraction {cfg.extraction!r} has no residual field")
        if self.extraction.actor_loss is None and cfg.qam.best_of_n < 2:
            raise ValueError(f"config.agent.qam.best_of_n: extraction {cfg.extraction!r} trains no actor and acts "
                             f"with the best of N samples; expected N >= 2, got {cfg.qam.best_of_n}")
        self.nets = methods.Nets(self.actor_net, self.base_net, self.critic_net, self.value_net, self.action_shape,
                                 self.qam_cfg, extraction.ExtractionConfig(**dict(cfg.baselines)))

        def opt(lr: float) -> optax.GradientTransformation:
            return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr))

        self.tx = {
            "actor": opt(cfg.actor_lr),
            "base": opt(cfg.actor_lr),
            "critic": opt(cfg.critic_lr),
            "value": opt(cfg.critic_lr),
        }
        self._jitted: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------- init
    def _init(self, rng: jax.Array, example_obs: dict[str, jax.Array]) -> AgentState:
        ks = jax.random.split(rng, 6)
        b = jax.tree.leaves(example_obs)[0].shape[0]
        x = jnp.zeros((b, *self.action_shape), jnp.float32)
        t = jnp.zeros((b,), jnp.float32)
        base = self.base_net.init(ks[0], example_obs, x, t)
        actor = self.actor_net.init(ks[1], example_obs, x, t)
        critic = self.critic_net.init(ks[2], example_obs, x)
        value = self.value_net.init(ks[3], example_obs)
        params = {
            "actor": actor,
            "base": base,
            "base_ref": base,
            "critic": critic,
            "critic_target": critic,
            "value": value,
        }
        opt_state = {k: self.tx[k].init(params[k]) for k in TRAINED}
        return AgentState(jnp.zeros((), jnp.int32), jax.random.key_data(ks[5]), params, opt_state)

    def state_shardings(self, abstract_state: AgentState) -> AgentState:
        """Replicated scalars/RNG; params and optimizer states replicated or FSDP by `config.fsdp_min_size`."""
        rep = shd.replicated(self.mesh)
        return AgentState(
            step=rep,
            rng=rep,
            params=shd.tree_param_shardings(self.mesh, abstract_state.params, self.cfg.fsdp_min_size),
            opt_state=shd.tree_param_shardings(self.mesh, abstract_state.opt_state, self.cfg.fsdp_min_size),
        )

    def init(self, seed: int, example_obs: dict[str, Any]) -> AgentState:
        """Creates the state already placed on the mesh (no full host copy first)."""
        rng = jax.random.PRNGKey(seed)
        abstract = jax.eval_shape(self._init, rng, example_obs)
        out = self.state_shardings(abstract)
        return jax.jit(self._init, out_shardings=out)(rng, example_obs)

    def abstract_state(self, example_obs: dict[str, Any]) -> AgentState:
        """ShapeDtypeStructs with shardings: the target a checkpoint restores into."""
        abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0), example_obs)
        shard = self.state_shardings(abstract)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shard)

    # ----------------------------------------------------------------------------- apply helpers
    def policy_velocity(self, params: dict[str, Any]):
        """The field the policy acts with: v_theta with params bound (v_beta + delta when residual), through
        the extraction's acting hook (RECAP conditions it on its advantage indicator)."""
        v_ref = methods.Nets.bound(self.base_net, params["base_ref"])
        v = qam.fine_velocity(methods.Nets.apply(self.actor_net), params["actor"], v_ref, self.qam_cfg.residual)
        return self.extraction.act(self.nets, v)

    # ------------------------------------------------------------------------------ pure updates
    @staticmethod
    def _sgd(tx, params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)

    def _pretrain_step(self, state: AgentState, batch: Batch) -> tuple[AgentState, Metrics]:
        """Flow-matching BC of the base flow (the "pretrained VLA"); the policy and reference follow it."""
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        p = state.params

        def loss_fn(bp):
            return bc.flow_matching_loss(
                methods.Nets.apply(self.base_net), bp, batch["observations"], batch["actions"], rng, batch["action_valid"]
            )

        (loss, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(p["base"])
        base, opt_base, gnorm = self._sgd(self.tx["base"], p["base"], state.opt_state["base"], grads)
        params = dict(p, base=base, base_ref=base)
        if not self.qam_cfg.residual:  # the policy starts where the pretrained base is
            params["actor"] = base
        opt_state = dict(state.opt_state, base=opt_base)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {**info, "bc_grad_norm": gnorm}

    def _critic_part(self, p: dict[str, Any], o: dict[str, Any], batch: Batch, dcfg: divl.DIVLConfig,
                     rng: jax.Array) -> Metrics:
        """Steps 1-4 of an update, in place on the dicts `p` (params) and `o` (optimizer states)."""
        critic_apply, value_apply = methods.Nets.apply(self.critic_net), methods.Nets.apply(self.value_net)
        target = methods.get_critic_target(dcfg.critic_target)
        metrics: Metrics = {}

        # 1. value distribution psi on data actions (not learned when neither the target nor the extraction reads it)
        if target.needs_value or self.extraction.needs_value:
            (_, vinfo), g = jax.value_and_grad(
                lambda vp: divl.value_loss(value_apply, vp, critic_apply, p["critic_target"], batch, dcfg), has_aux=True
            )(p["value"])
            p["value"], o["value"], metrics["value_grad_norm"] = self._sgd(self.tx["value"], p["value"], o["value"], g)
            metrics.update(vinfo)

        # 2. TD target from the updated psi (or the policy-action target of the QAM reference)
        y, tinfo = target.target(self.nets, p, self.policy_velocity, batch, dcfg, rng)
        metrics.update(tinfo)

        # 3. critic phi, 4. target EMA
        (_, cinfo), g = jax.value_and_grad(
            lambda cp: divl.critic_loss(critic_apply, cp, batch, y), has_aux=True
        )(p["critic"])
        p["critic"], o["critic"], metrics["critic_grad_norm"] = self._sgd(self.tx["critic"], p["critic"], o["critic"], g)
        p["critic_target"] = ema_update(p["critic"], p["critic_target"], dcfg.target_ema)
        metrics.update(cinfo)
        return metrics

    def _stage_divl(self, state: AgentState, stage: str, stage_start: int) -> divl.DIVLConfig:
        """DIVL settings at this update: the stage's tau_base (ramped over the online updates since `stage_start`)."""
        return self.divl_cfg.at_stage(stage, state.step - stage_start if stage == "online" else None)

    def _critic_step(self, state: AgentState, batch: Batch, stage: str, stage_start: int = 0) -> tuple[AgentState, Metrics]:
        """Steps 1-4 only (value, TD target, critic, target EMA): the critic warm-up before extraction.

        Why it exists: DIVL's target is in-sample (it never queries the policy), so the critic can be
        trained before the policy moves; at a small learner budget an extraction against a critic that has
        not yet propagated the sparse reward only chases its noise. The policy, base and reference stay put.
        """
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        p, o = dict(state.params), dict(state.opt_state)
        metrics = self._critic_part(p, o, batch, self._stage_divl(state, stage, stage_start), jax.random.split(rng, 3)[2])
        return state.replace(step=state.step + 1, params=p, opt_state=o), metrics

    def _rl_step(self, state: AgentState, batch: Batch, stage: str, stage_start: int = 0) -> tuple[AgentState, Metrics]:
        """One full DIVL + extraction update (same losses offline and online; `stage` picks tau_base and freezing)."""
        cfg = self.cfg
        dcfg = self._stage_divl(state, stage, stage_start)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        r_qam, r_bc, r_next = jax.random.split(rng, 3)
        p, o = dict(state.params), dict(state.opt_state)
        obs = batch["observations"]
        metrics = self._critic_part(p, o, batch, dcfg, r_next)

        # 5. policy extraction (the registry entry's actor loss: QAM for LWD; none for best-of-N acting)
        if self.extraction.actor_loss is not None:
            actor_loss = self.extraction.actor_loss(self.nets, p, batch, r_qam, dcfg)
            (_, ainfo), g = jax.value_and_grad(actor_loss, has_aux=True)(p["actor"])
            actor, opt_actor, metrics["actor_grad_norm"] = self._sgd(self.tx["actor"], p["actor"], o["actor"], g)
            if stage == "online" and cfg.freeze_encoder_online:  # LWD: the VL backbone is frozen online
                actor, opt_actor = freeze_subtree(actor, p["actor"]), freeze_subtree(opt_actor, o["actor"])
            p["actor"], o["actor"] = actor, opt_actor
            metrics.update(ainfo)

        # 6. keep the base flow trained by BC (QAM code) unless the reference is the frozen BC checkpoint (LWD):
        # on the RL batch ("batch"), or on the expert batch the online loop draws beside it ("expert": the demos
        # and the fleet's human-driven chunks; offline there is none, so the offline stage stays RL only).
        if self.trains_base(batch):
            if cfg.base_bc_data == "expert":
                bc_obs, bc_actions, w = batch["bc"]["observations"], batch["bc"]["actions"], batch["bc"]["action_valid"].astype(jnp.float32)
            else:  # human-driven chunks can count extra in the base's BC (ALGORITHMS.md: optional, config)
                bc_obs, bc_actions = obs, batch["actions"]
                w = batch["action_valid"].astype(jnp.float32) * (
                    1.0 + cfg.intervention_bc_weight * batch["intervention"].astype(jnp.float32)[:, None]
                )
            (_, binfo), g = jax.value_and_grad(
                lambda bp: bc.flow_matching_loss(
                    methods.Nets.apply(self.base_net), bp, bc_obs, bc_actions, r_bc, w
                ),
                has_aux=True,
            )(p["base"])
            p["base"], o["base"], metrics["base_grad_norm"] = self._sgd(self.tx["base"], p["base"], o["base"], g)
            metrics.update(binfo)
            if self.qam_cfg.base_reference == "ema":
                p["base_ref"] = ema_update(p["base"], p["base_ref"], cfg.base_ema)
            else:
                p["base_ref"] = p["base"]
            if self.extraction.actor_loss is None and not self.qam_cfg.residual:
                p["actor"] = p["base"]  # an extraction that trains no actor acts with the (improving) base flow
        return state.replace(step=state.step + 1, params=p, opt_state=o), metrics

    def trains_base(self, batch: Batch) -> bool:
        """Whether an RL update BC-trains the base flow on this batch (static: decided at trace time)."""
        if self.qam_cfg.base_reference == "frozen":
            return False
        return self.cfg.base_bc_data == "batch" or "bc" in batch

    def _scan(self, step_fn, state: AgentState, batches: Batch) -> tuple[AgentState, Metrics]:
        """Several updates per call: batches carry a leading [U] axis; metrics are averaged over U."""
        state, metrics = jax.lax.scan(step_fn, state, batches)
        return state, jax.tree.map(jnp.mean, metrics)

    # ------------------------------------------------------------------------------ jitted entry points
    def _compile(self, name: str, fn, state: AgentState, batch: Batch, stacked: bool):
        if name not in self._jitted:
            s_shard = jax.tree.map(lambda x: x.sharding, state)
            self._jitted[name] = jax.jit(
                fn,
                in_shardings=(s_shard, shd.tree_batch_shardings(self.mesh, batch, stacked)),
                out_shardings=(s_shard, shd.replicated(self.mesh)),
                donate_argnums=(0,),
            )
        return self._jitted[name]

    def _global(self, batches: Batch) -> Batch:
        """Several processes: each passes its own rows [U, B / processes, ...], assembled here into the global
        batch (`sharding.global_batch`); one process: unchanged. Batches already placed (`place_batches`) pass."""
        if all(isinstance(x, jax.Array) for x in jax.tree.leaves(batches)):
            return batches
        return shd.global_batch(self.mesh, batches, stacked=True)

    def place_batches(self, batches: Batch) -> Batch:
        """Host batches [U, B, ...] (this host's rows of them) -> device arrays in the updates' batch sharding.
        The learner's prefetch thread calls it, so the transfer overlaps the update in flight."""
        if jax.process_count() > 1:
            return shd.global_batch(self.mesh, batches, stacked=True)
        return jax.device_put(batches, shd.tree_batch_shardings(self.mesh, batches, stacked=True))

    def pretrain_update(self, state: AgentState, batches: Batch) -> tuple[AgentState, Metrics]:
        """U BC updates; `batches` leaves are [U, B, ...] (see `config.updates_per_call`; with several processes,
        this host's rows of them)."""
        batches = self._global(batches)
        fn = functools.partial(self._scan, self._pretrain_step)
        return self._compile("pretrain", fn, state, batches, True)(state, batches)

    def update(self, state: AgentState, batches: Batch, stage: str = "offline", stage_start: int = 0
               ) -> tuple[AgentState, Metrics]:
        """U full LWD updates (DIVL + the extraction); `batches` leaves are [U, B, ...]. `stage_start`: the
        learner step the online stage began at (the tau_base ramp counts from it)."""
        if stage not in ("offline", "online"):
            raise ValueError(f"agent.update: stage expected 'offline' or 'online', got {stage!r}")
        batches = self._global(batches)
        fn = functools.partial(self._scan, functools.partial(self._rl_step, stage=stage, stage_start=stage_start))
        name = f"rl_{stage}_{stage_start}" + ("_bc" if "bc" in batches else "")  # the batch's structure is static
        return self._compile(name, fn, state, batches, True)(state, batches)

    def critic_update(self, state: AgentState, batches: Batch, stage: str = "offline", stage_start: int = 0
                      ) -> tuple[AgentState, Metrics]:
        """U critic-only updates (value, critic, target EMA; the flows stay put); `batches` leaves are [U, B, ...]."""
        if stage not in ("offline", "online"):
            raise ValueError(f"agent.critic_update: stage expected 'offline' or 'online', got {stage!r}")
        batches = self._global(batches)
        fn = functools.partial(self._scan, functools.partial(self._critic_step, stage=stage, stage_start=stage_start))
        return self._compile(f"critic_{stage}_{stage_start}", fn, state, batches, True)(state, batches)

    def critic_values(self, params: dict[str, Any], obs: dict[str, Any], actions: jax.Array) -> dict[str, jax.Array]:
        """Q̄(s, a) [B] of the target critic (the value the extraction and the value head see) and the value
        head's mean E[V(s)] [B]: what the critic probe compares with the data's Monte-Carlo returns."""
        if "values" not in self._jitted:
            dcfg = self.divl_cfg

            def values(params, obs, actions):
                q = divl.target_q(methods.Nets.apply(self.critic_net), params["critic_target"], obs, actions, dcfg.target_agg)
                v = divl.mean_value(methods.Nets.apply(self.value_net), params["value"], obs, dcfg)
                return {"q": q, "v": v}

            self._jitted["values"] = jax.jit(values)
        return self._jitted["values"](params, obs, actions)

    def sample_actions(self, params: dict[str, Any], obs: dict[str, Any], rng: jax.Array) -> jax.Array:
        """Action chunks [B, H, A] in [-1, 1], as the policy kind of `params` acts (see `policy_params`):
        with an "actor", the fine-tuned ODE; else the BC flow "base". With qam.best_of_n = N > 1 and a
        "critic_target" in params, the best of N such samples by the target critic's Q̄ (min over heads by default)."""
        if "sample" not in self._jitted:

            def sample(params, obs, rng):
                if "actor" in params:
                    velocity = self.policy_velocity(params)
                else:
                    velocity = methods.Nets.bound(self.base_net, params["base"])
                cfg, q_fn = self.qam_cfg, None
                if cfg.best_of_n > 1 and "critic_target" in params:  # ranked by Q̄, the value the extraction sees
                    def q_fn(ob, a):
                        q = divl.target_q(methods.Nets.apply(self.critic_net), params["critic_target"], ob, a,
                                          self.divl_cfg.target_agg)
                        return q[None]  # [1, B]: qam.sample_actions averages over the leading (head) axis
                elif cfg.best_of_n > 1:
                    cfg = dataclasses.replace(cfg, best_of_n=1)  # a plain BC blob carries no critic
                return qam.sample_actions(velocity, obs, rng, self.action_shape, cfg, q_fn)

            self._jitted["sample"] = jax.jit(sample)
        return self._jitted["sample"](params, obs, rng)


def freeze_subtree(new: Any, old: Any, key: str = "encoder") -> Any:
    """`new` with every leaf under a dict key `key` taken from `old`: params *and* optimizer moments.

    Why not zero gradients: Adam's first moment keeps moving a zero-gradient parameter for hundreds of steps
    (momentum from the offline stage); restoring the leaves after the step is a freeze that cannot leak.
    """

    def pick(path, n, o):
        return o if any(getattr(k, "key", None) == key for k in path) else n

    return jax.tree_util.tree_map_with_path(pick, new, old)


def policy_params(state: AgentState, which: str = "policy") -> dict[str, Any]:
    """The sub-trees acting needs: 'policy' (actor + reference base + target critic for best-of-N), 'base'
    (the BC flow) or 'best_of_n' (the BC flow + the target critic that picks among its samples)."""
    p = state.params
    if which == "base":
        return {"base": p["base"]}
    if which == "best_of_n":
        return {"base": p["base"], "critic_target": p["critic_target"]}
    return {"actor": p["actor"], "base_ref": p["base_ref"], "critic_target": p["critic_target"]}


def as_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass or ConfigDict -> plain dict (for logging the effective settings)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
