"""`Policy`: what a robot (or the evaluator) loads and calls. Owns the acting params, the normalization
stats, the instruction embeddings and the jitted sampler; turns raw observations into raw action chunks.

Why a wrapper (openpi's habit): the agent knows normalized arrays and batches; a robot knows one raw
observation dict and a sentence. The transforms between the two live here, in one place, with their
inverses in `NormStats`, and travel together as one serialized blob (params as flax msgpack, metadata as
JSON: no pickle), which is also what the learner streams to the fleet.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np

from fleet_api.embodiment import UR5E, Embodiment
from lwd_jax.agent import LWDAgent
from lwd_jax.data.normalize import NormStats
from lwd_jax.nets.language import LanguageModelNotFoundError, get_default_encoder

_MAGIC = b"LWDPOL1\0"
# The fine-tuned policy, the BC (SFT) flow it started from, or the best of agent.qam.best_of_n BC samples by
# the target critic (the critic's within-state ranking put to work without any extraction).
KINDS = ("policy", "base", "best_of_n")


def encode_policy(agent_cfg: ml_collections.ConfigDict, params: Any, stats: NormStats, version: int, kind: str,
                  instructions: Mapping[str, np.ndarray] | None = None, embodiment: Embodiment = UR5E) -> bytes:
    """One self-describing blob: magic, JSON header length, JSON header, msgpack body.

    `instructions` ({wording: embedding}): the frozen text encoder's vectors of the wordings the fleet's robots
    give, carried in the blob so a robot never loads the encoder (a few hundred MB of RAM and the model
    package): the bridge install has no text encoder at all. Without them the body is the params alone.
    `embodiment`: the body the policy was trained for, in the header: a robot of another body refuses it."""
    if kind not in KINDS:
        raise ValueError(f"policy: kind expected one of {KINDS}, got {kind!r}")
    texts = sorted(instructions or {})
    if int(agent_cfg.action_dim) != embodiment.action_dim:
        raise ValueError(f"policy: agent_config.action_dim {agent_cfg.action_dim} is not the embodiment "
                         f"{embodiment.describe()}'s")
    head: dict[str, Any] = {"agent_config": agent_cfg.to_json(), "stats": stats.to_json(), "version": int(version),
                            "kind": kind, "embodiment": embodiment.to_dict()}
    tree: Any = jax.tree.map(np.asarray, params)
    if texts:
        head["instructions"] = texts
        tree = {"params": tree, "lang": np.stack([np.asarray(instructions[t], np.float32) for t in texts])}
    header = json.dumps(head).encode()
    return _MAGIC + struct.pack("<Q", len(header)) + header + flax.serialization.msgpack_serialize(tree)


def read_header(blob: bytes) -> tuple[dict[str, Any], int]:
    """(the blob's JSON header, where its params body starts), without decoding the params; raises ValueError
    naming what is wrong with a bad blob."""
    if not blob.startswith(_MAGIC):
        raise ValueError("policy blob: bad magic (not an lwd-jax policy, or a truncated download)")
    (n,) = struct.unpack("<Q", blob[len(_MAGIC) : len(_MAGIC) + 8])
    start = len(_MAGIC) + 8
    if start + n > len(blob):
        raise ValueError(f"policy blob: header of {n} bytes runs past the blob's {len(blob)} bytes (truncated)")
    return json.loads(blob[start : start + n]), start + n


def needs_image(blob: bytes) -> bool:
    """Whether the blob's policy reads the camera (`observation/image`): its agent config's use_image."""
    return bool(json.loads(read_header(blob)[0]["agent_config"]).get("use_image", False))


def decode_policy(blob: bytes) -> tuple[dict[str, Any], Any, dict[str, np.ndarray]]:
    """Inverse of `encode_policy`: (header, params, {wording: embedding}); raises ValueError naming what is
    wrong with a bad blob."""
    header, body_start = read_header(blob)
    body = flax.serialization.msgpack_restore(blob[body_start:])
    texts = header.get("instructions", [])
    if not texts:
        return header, body, {}
    lang = np.asarray(body["lang"], np.float32)
    if lang.shape[0] != len(texts):
        raise ValueError(f"policy blob: {len(texts)} instructions in the header but {lang.shape[0]} embeddings")
    return header, body["params"], dict(zip(texts, lang, strict=True))


_AGENTS: dict[str, LWDAgent] = {}  # agent config JSON -> the one agent (and its compiled sampler) for it
_AGENTS_LOCK = threading.Lock()


def shared_agent(agent_config_json: str) -> LWDAgent:
    """The process's one `LWDAgent` for an agent config: every policy version of one architecture acts through
    the same jitted sampler (params are its arguments), so a robot loading version N + 1 compiles nothing.
    Measured before (issue 17): each new version recompiled the sampler, 1.3-2.5 s of a robot's swap."""
    with _AGENTS_LOCK:
        agent = _AGENTS.get(agent_config_json)
        if agent is None:
            agent = _AGENTS[agent_config_json] = LWDAgent(ml_collections.ConfigDict(json.loads(agent_config_json)),
                                                          mesh=None)
        return agent


class Policy:
    """Raw obs + instruction -> raw action chunk [H, A]; `act_batch` for many robots/episodes at once."""

    def __init__(self, blob: bytes, seed: int = 0, encoder: Any = None):
        header, params, table = decode_policy(blob)
        self.version = int(header["version"])
        self.kind = header["kind"]
        self.agent_cfg = ml_collections.ConfigDict(json.loads(header["agent_config"]))
        self.stats = NormStats.from_json(header["stats"])
        # Blobs from before embodiments were data carry none: they were all made for the simulated UR5e.
        self.embodiment = (Embodiment.from_dict(header["embodiment"], where="policy blob header 'embodiment'")
                           if "embodiment" in header else UR5E)
        self.params = jax.tree.map(jax.numpy.asarray, params)
        self.agent = shared_agent(header["agent_config"])
        self._encoder = encoder
        self._lang: dict[str, np.ndarray] = dict(table)  # the blob's wordings: no encoder needed for them
        self._rng = jax.random.PRNGKey(seed)
        self.last_latency_s = 0.0

    def reseed(self, seed: int) -> None:
        """Ties the sampling noise to `seed` (evaluation reseeds per episode, so results are reproducible)."""
        self._rng = jax.random.PRNGKey(seed)

    def prepare(self, instructions: list[str]) -> None:
        """Embeds `instructions` now (a robot's known task wordings), so no episode waits on the language encoder."""
        if instructions:
            self._embed(list(instructions))

    @property
    def needs_image(self) -> bool:
        """Whether this policy reads the camera (`observation/image`), besides state and language."""
        return bool(self.agent_cfg.get("use_image", False))

    @property
    def chunk_len(self) -> int:
        return int(self.agent_cfg.action_horizon)

    def _embed(self, instructions: list[str]) -> np.ndarray:
        missing = sorted({s for s in instructions if s not in self._lang})
        if missing:
            if self._encoder is None:
                try:
                    self._encoder = get_default_encoder()
                except (LanguageModelNotFoundError, ImportError) as e:
                    raise ValueError(
                        f"policy: instruction(s) {missing} are not among the {len(self._lang)} wordings the policy "
                        f"blob carries, and this machine has no text encoder to embed them ({type(e).__name__}: "
                        f"{e}). Give the learner the robot's wordings (its tasks), or install the learner extra."
                    ) from None
            for s, e in zip(missing, self._encoder.encode(missing), strict=True):
                self._lang[s] = np.asarray(e, np.float32)
        return np.stack([self._lang[s] for s in instructions])

    def act_batch(self, obs: Mapping[str, np.ndarray], instructions: list[str]) -> np.ndarray:
        """obs leaves [N, ...] (raw), N instructions -> raw action chunks [N, H, A]."""
        t0 = time.perf_counter()
        x = self.stats.normalize_obs({k: np.asarray(v) for k, v in obs.items()})
        x["lang"] = self._embed(list(instructions))
        self._rng, key = jax.random.split(self._rng)
        a = self.agent.sample_actions(self.params, x, key)  # the params' keys say which kind acts
        out = self.stats.unnormalize_action(np.asarray(a))
        self.last_latency_s = time.perf_counter() - t0
        return out

    def __call__(self, obs: Mapping[str, np.ndarray], instruction: str) -> np.ndarray:
        """One robot: raw obs dict (no batch axis) -> raw action chunk [H, A]."""
        return self.act_batch({k: np.asarray(v)[None] for k, v in obs.items()}, [instruction])[0]
