"""Observation encoder: fuses {state, state_mask, proprio, lang, image?} into one feature vector [B, D].

Why one fused vector: every head (flow field, critics, value) is an MLP on `obs_feat [B, D]`, so the
multi-task conditioning (the frozen sentence embedding of the instruction) and the optional camera enter
the learner in exactly one place. Heads never see the raw dict, and a user who plugs in a real VLA
backbone replaces only this module.

Inputs (the episode schema's observation plus the cached instruction embedding):
  state      [B, S]  float32, zero-padded task state
  state_mask [B, S]  bool, True on the task's real entries (the padding is zeroed again here, and the
                     mask itself is fed as a feature so that which entries are real is explicit)
  proprio    [B, P]  float32
  lang       [B, L]  float32, frozen sentence embedding (L = 384 for all-MiniLM-L6-v2); only projected
  image      [B, 64, 64, 3] uint8, optional (off by default: CPU rendering is too slow for the fleet)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lwd_jax.nets.mlp import MLP, get_activation


class SmallCNN(nn.Module):
    """image [B, H, W, C] uint8 -> [B, out_dim]: strided 3x3 convs, then one Dense.

    Deliberately small (a few MFLOP per 64x64 frame): the CPU default does not render at all, and a
    GPU user after real vision swaps in a pretrained backbone instead of growing this one.
    """

    channels: Sequence[int] = (32, 64, 64)
    strides: Sequence[int] = (2, 2, 2)
    out_dim: int = 128
    activation: str = "gelu"

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        x = image.astype(jnp.float32) / 255.0 - 0.5
        for i, (ch, st) in enumerate(zip(self.channels, self.strides, strict=True)):
            x = act(nn.Conv(ch, (3, 3), strides=(st, st), name=f"conv_{i}")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.LayerNorm(name="ln")(nn.Dense(self.out_dim, name="proj")(x))


class ObsEncoder(nn.Module):
    """obs dict -> obs_feat [B, out_dim] (the LayerNorm'ed output of an MLP trunk on the fused inputs).

    Every input is a constructor switch, so the same class serves state-only, state+language (the CPU
    default) and image runs; a switched-on key that is missing from the dict raises naming the key.
    """

    use_state: bool = True
    use_state_mask: bool = True
    use_proprio: bool = True
    use_lang: bool = True
    use_image: bool = False
    lang_proj_dim: int = 64  # the 384-d embedding is projected down so it does not dominate the trunk
    hidden_dims: Sequence[int] = (256,)
    out_dim: int = 256
    activation: str = "gelu"
    cnn_channels: Sequence[int] = (32, 64, 64)
    cnn_strides: Sequence[int] = (2, 2, 2)
    cnn_out_dim: int = 128

    @nn.compact
    def __call__(self, obs: Mapping[str, jax.Array]) -> jax.Array:
        def get(key: str) -> jax.Array:
            if key not in obs:
                raise KeyError(f"ObsEncoder: observation key '{key}' is switched on but missing; got keys {sorted(obs)}")
            return obs[key]

        parts = []
        if self.use_state:
            state = get("state").astype(jnp.float32)
            if "state_mask" in obs:
                state = state * obs["state_mask"].astype(jnp.float32)
            parts.append(state)
            if self.use_state_mask:
                parts.append(get("state_mask").astype(jnp.float32))
        if self.use_proprio:
            parts.append(get("proprio").astype(jnp.float32))
        if self.use_lang:
            parts.append(nn.Dense(self.lang_proj_dim, name="lang_proj")(get("lang").astype(jnp.float32)))
        if self.use_image:
            cnn = SmallCNN(self.cnn_channels, self.cnn_strides, self.cnn_out_dim, self.activation, name="cnn")
            parts.append(cnn(get("image")))
        if not parts:
            raise ValueError("ObsEncoder: every input is switched off")
        x = jnp.concatenate(parts, axis=-1)
        x = MLP(self.hidden_dims, self.out_dim, self.activation, name="trunk")(x)
        return nn.LayerNorm(name="ln_out")(x)


class EncodedNet(nn.Module):
    """head(encoder(obs), *args): one parameter tree {'encoder': ..., 'head': ...} for one learner net.

    Why a wrapper rather than an encoder inside each head: the algorithms only need `apply(params, obs,
    ...)`, while the agent can (a) encode once and reuse features across the K flow steps
    (`method=EncodedNet.encode` then `method=EncodedNet.from_features`), and (b) freeze the encoder
    subtree online (LWD freezes the vision-language backbone) with a plain optax mask on 'encoder'.
    """

    encoder: nn.Module
    head: nn.Module

    def __call__(self, obs, *args, **kwargs):
        return self.head(self.encoder(obs), *args, **kwargs)

    def encode(self, obs) -> jax.Array:
        """obs dict -> obs_feat [B, D]."""
        return self.encoder(obs)

    def from_features(self, obs_feat: jax.Array, *args, **kwargs):
        """The head on precomputed features (same params as __call__)."""
        return self.head(obs_feat, *args, **kwargs)

    def encode_projected(self, obs) -> jax.Array:
        """obs dict -> the head's first-layer share of the features (a flow head's `project`), for
        `from_features(..., projected=True)` over many flow steps."""
        return self.head.project(self.encoder(obs))
