"""Policy extractions and critic targets as registry entries: each one its loss and its acting hook.

Why a registry: the agent's update order (value -> TD target -> critic -> EMA -> extraction -> base BC) is the
same for every method; what differs is which actor loss runs, which TD target the critic regresses on,
whether the value head is learned, and how the trained field acts. Each of those is a field of one entry
here, so adding a method is adding an entry, and `agent.py` holds no string branches on method names.

An entry's functions are pure: they take the agent's networks (`Nets`), the parameter dict, the batch and
an RNG key, and return what the update needs (an actor loss of the actor params; a TD target). The
maths they bind lives in `lwd_jax/algos/` (qam, extraction, divl, bc).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lwd_jax.algos import bc, divl, extraction, qam
from lwd_jax.algos.common import Info, Velocity
from lwd_jax.nets.encoder import EncodedNet

Batch = dict[str, Any]
Params = dict[str, Any]
ActorLoss = Callable[[Any], tuple[jax.Array, Info]]  # actor params -> (loss, info)


@dataclasses.dataclass(frozen=True)
class Nets:
    """The agent's static parts the entries bind: modules, action shape and the method settings."""

    actor: EncodedNet
    base: EncodedNet
    critic: EncodedNet
    value: EncodedNet
    action_shape: tuple[int, int]
    qam: qam.QAMConfig
    baselines: extraction.ExtractionConfig

    @staticmethod
    def apply(net: EncodedNet) -> Callable[..., Any]:
        """`net.apply` as a plain function of (params, *inputs)."""
        return lambda params, *args: net.apply(params, *args)

    @staticmethod
    def bound(net: EncodedNet, params: Any) -> Velocity:
        """`net` with its params bound: (obs, x, t) -> v."""
        return lambda obs, x, t: net.apply(params, obs, x, t)


# ---------------------------------------------------------------------------------------- extractions
@dataclasses.dataclass(frozen=True)
class Extraction:
    """One way to extract the policy from the critic.

    actor_loss(nets, params, batch, rng, divl_cfg) -> a function of the actor params returning (loss, info);
      None: the actor is not trained (it stays the BC flow it was initialised to).
    act(nets, velocity) -> the velocity the policy acts with (identity unless the method conditions it).
    needs_value: the method reads the value head's advantages, so the value head is learned even when the
    critic target does not need it. residual: the method supports QAM's residual field v_beta + delta.
    """

    actor_loss: Callable[[Nets, Params, Batch, jax.Array, divl.DIVLConfig], ActorLoss] | None
    act: Callable[[Nets, Velocity], Velocity] = staticmethod(lambda nets, v: v)  # type: ignore[assignment]
    needs_value: bool = False
    residual: bool = False


def _qam_loss(nets: Nets, p: Params, batch: Batch, rng: jax.Array, dcfg: divl.DIVLConfig) -> ActorLoss:
    """QAM against the reference base flow. Each net encodes the observation once (not once per flow step):
    the algos see an obs pytree of per-net features, and each bound field picks its own. The actor's
    features are computed inside the loss so its encoder learns."""
    obs = batch["observations"]
    q_params = p["critic_target"] if nets.qam.adjoint_critic == "target" else p["critic"]
    # The flow heads get their features already multiplied into their first layer (`encode_projected`): the
    # K flow steps of the rollout, the adjoint and the regression then skip that product (nets/flow.py)
    feats = {
        "base": jax.lax.stop_gradient(nets.base.apply(p["base_ref"], obs, method=EncodedNet.encode_projected)),
        "critic": jax.lax.stop_gradient(nets.critic.apply(q_params, obs, method=EncodedNet.encode)),
    }

    def v_ref(f, x, t):
        return nets.base.apply(p["base_ref"], f["base"], x, t, True, method=EncodedNet.from_features)

    def q_fn(f, a):
        return nets.critic.apply(q_params, f["critic"], a, method=EncodedNet.from_features)

    def am_loss(ap):
        f = dict(feats, actor=nets.actor.apply(ap, obs, method=EncodedNet.encode_projected))

        def fine_apply(_, f_, x, t):  # params are bound above so the encoder's gradient is kept
            return nets.actor.apply(ap, f_["actor"], x, t, True, method=EncodedNet.from_features)

        return qam.adjoint_matching_loss(fine_apply, ap, v_ref, q_fn, f, rng, nets.action_shape, nets.qam)

    return am_loss


def _advantage(nets: Nets, p: Params, batch: Batch, dcfg: divl.DIVLConfig) -> jax.Array:
    """A(s, a) = Q̄(s, a) - E[V(s)] [B] on the data's actions (target critic, value head's mean)."""
    obs, actions = batch["observations"], batch["actions"]
    q = divl.target_q(Nets.apply(nets.critic), p["critic_target"], obs, actions, dcfg.target_agg)
    return q - divl.mean_value(Nets.apply(nets.value), p["value"], obs, dcfg)


def _awr_loss(nets: Nets, p: Params, batch: Batch, rng: jax.Array, dcfg: divl.DIVLConfig) -> ActorLoss:
    adv = _advantage(nets, p, batch, dcfg)
    obs, actions, valid = batch["observations"], batch["actions"], batch["action_valid"]
    apply = Nets.apply(nets.actor)
    return lambda ap: extraction.awr_flow_loss(apply, ap, obs, actions, adv, rng, valid, nets.baselines)


def _recap_loss(nets: Nets, p: Params, batch: Batch, rng: jax.Array, dcfg: divl.DIVLConfig) -> ActorLoss:
    adv = _advantage(nets, p, batch, dcfg)
    obs, actions, valid = batch["observations"], batch["actions"], batch["action_valid"]
    apply, human = Nets.apply(nets.actor), batch["intervention"]
    return lambda ap: extraction.recap_loss(apply, ap, obs, actions, adv, rng, valid, nets.baselines, human)


def _recap_act(nets: Nets, v: Velocity) -> Velocity:
    """RECAP acts with its advantage indicator set to "positive" (the conditioning is part of the policy);
    `baselines.recap_act_indicator` 0 (dropped) or -1 (negative) are for diagnosis (experiments/eval.py)."""
    scale, indicator = nets.baselines.recap_cond_scale, nets.baselines.recap_act_indicator

    def conditioned(obs, x, t):
        b = jax.tree.leaves(obs)[0].shape[0]
        return v(extraction.condition_obs(obs, jnp.full((b,), indicator, jnp.float32), scale), x, t)

    return conditioned


def _q_grad_loss(nets: Nets, p: Params, batch: Batch, rng: jax.Array, dcfg: divl.DIVLConfig) -> ActorLoss:
    """Max Q through the whole sampler + flow BC (RLPD / HIL-SERL-style actor)."""
    obs, actions, valid = batch["observations"], batch["actions"], batch["action_valid"]
    apply = Nets.apply(nets.actor)
    r_bc, r_pi = jax.random.split(rng)

    def loss(ap):
        bc_loss, _ = bc.flow_matching_loss(apply, ap, obs, actions, r_bc, valid)
        feat = nets.actor.apply(ap, obs, method=EncodedNet.encode)  # encode once, reuse over K steps
        q_feat = jax.lax.stop_gradient(nets.critic.apply(p["critic"], obs, method=EncodedNet.encode))

        def vel(_, x, t):
            return nets.actor.apply(ap, feat, x, t, method=EncodedNet.from_features)

        def q_fn(_, a):
            return nets.critic.apply(p["critic"], q_feat, a, method=EncodedNet.from_features)

        return extraction.q_grad_loss(vel, q_fn, obs, bc_loss, r_pi, nets.action_shape, nets.qam.flow, nets.baselines)

    return loss


# "qam" (LWD) | "awr" (advantage-weighted flow matching: the critic-gradient-free ablation) | "recap"
# (advantage-conditioned flow, pi0.6-style) | "q_grad" (RLPD/HIL-SERL-style: max Q through the sampler) |
# "best_of_n" (no actor training; acting picks the best of N BC samples by the target critic).
EXTRACTIONS: dict[str, Extraction] = {
    "qam": Extraction(_qam_loss, residual=True),
    "awr": Extraction(_awr_loss, needs_value=True),
    "recap": Extraction(_recap_loss, act=_recap_act, needs_value=True),
    "q_grad": Extraction(_q_grad_loss),
    # Act with the best of qam.best_of_n samples of the untrained actor (= the BC flow) under the target
    # critic: the extraction-free use of the critic, and the probe of whether it ranks actions within a state.
    "best_of_n": Extraction(None),
}


# -------------------------------------------------------------------------------------- critic targets
@dataclasses.dataclass(frozen=True)
class CriticTarget:
    """One TD target for the critic: target(nets, params, policy_velocity, batch, divl_cfg, rng) -> (y [B], info).

    `policy_velocity(params)` is the acting field, for targets that query the policy; needs_value: the
    target bootstraps from the value head, so the head is learned first (ALGORITHMS.md update order).
    """

    target: Callable[[Nets, Params, Callable[[Params], Velocity], Batch, divl.DIVLConfig, jax.Array],
                     tuple[jax.Array, Info]]
    needs_value: bool


def _divl_target(nets, p, policy_velocity, batch, dcfg, rng):
    """In-sample: y = n-chunk return + discount * V_tau(s') from the (updated) value distribution."""
    return divl.divl_target(Nets.apply(nets.value), p["value"], batch, dcfg)


def _policy_action_target(nets, p, policy_velocity, batch, dcfg, rng):
    """The QAM reference's target: mean - rho * std of the target ensemble at a' ~ pi(s')."""
    nobs = batch["next_observations"]
    a_next = qam.sample_actions(policy_velocity(p), nobs, rng, nets.action_shape, nets.qam)
    return divl.policy_action_target(Nets.apply(nets.critic), p["critic_target"], batch, a_next, dcfg.rho)


CRITIC_TARGETS: dict[str, CriticTarget] = {
    "divl": CriticTarget(_divl_target, needs_value=True),
    "policy": CriticTarget(_policy_action_target, needs_value=False),
}


def get_extraction(name: str) -> Extraction:
    """The registry entry `name`; the error names the config field and the known entries."""
    if name not in EXTRACTIONS:
        raise ValueError(f"config.agent.extraction: expected one of {tuple(EXTRACTIONS)}, got {name!r}")
    return EXTRACTIONS[name]


def get_critic_target(name: str) -> CriticTarget:
    if name not in CRITIC_TARGETS:
        raise ValueError(f"config.agent.divl.critic_target: expected one of {tuple(CRITIC_TARGETS)}, got {name!r}")
    return CRITIC_TARGETS[name]
