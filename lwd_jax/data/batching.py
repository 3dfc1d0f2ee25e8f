"""From RLDS and replay columns to the agent's batches: instruction table, normalization, stacking.

Why here and not in the agent: everything in this file is host-side numpy that runs once per jitted call
(gather rows, look up cached instruction embeddings, normalize, reshape to [U, B, ...]); the agent then
sees only fixed-shape float arrays, so it compiles once and the language model never enters the learner's
hot loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lwd_jax.data.normalize import NormStats, compute_stats
from lwd_jax.data.replay import TransitionBuffer
from lwd_jax.data.transitions import NEXT_OBS_PREFIX, OBS_PREFIX

# Columns the buffers keep (text columns become `lang_id`; diagnostics like mc_return stay for logging).
KEEP_COLUMNS = (
    "action",
    "action_valid",
    "reward",
    "discount",
    "terminal",
    "timeout",
    "intervention",
    "mc_return",
    "subgoal_frac",
    "task_id",
)
OBS_KEYS = ("state", "state_mask", "proprio", "image")


class InstructionTable:
    """Instruction string -> row of a growing [N, L] table of frozen sentence embeddings.

    Why a table: the buffers store a small int per transition instead of 384 floats, and a paraphrase
    first seen online (a new robot operator's wording) is embedded once and appended.
    """

    def __init__(self, encode: Callable[[list[str]], np.ndarray], embed_dim: int):
        self._encode = encode
        self._ids: dict[str, int] = {}
        self.table = np.zeros((0, embed_dim), np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def instructions(self) -> list[str]:
        return sorted(self._ids, key=self._ids.get)

    def ids(self, texts: Sequence[str]) -> np.ndarray:
        """Ids of `texts`, embedding any not seen before (in one batch)."""
        new = sorted({t for t in texts if t not in self._ids})
        if new:
            emb = np.asarray(self._encode(new), np.float32)
            for t in new:
                self._ids[t] = len(self._ids)
            self.table = np.concatenate([self.table, emb])
        return np.array([self._ids[t] for t in texts], np.int32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        ids = self.ids(texts)  # first: it may grow the table (`self.table[self.ids(...)]` would index the old one)
        return self.table[ids]


def buffer_columns(transitions: Mapping[str, np.ndarray], table: InstructionTable) -> dict[str, np.ndarray]:
    """Transition columns (transitions.py layout) -> the buffer's columns (text replaced by `lang_id`)."""
    cols = {k: transitions[k] for k in KEEP_COLUMNS}
    for prefix in (OBS_PREFIX, NEXT_OBS_PREFIX):
        for k in OBS_KEYS:
            if prefix + k in transitions:
                cols[prefix + k] = transitions[prefix + k]
    cols["lang_id"] = table.ids(list(transitions["language_instruction"]))
    return cols


def stats_from_buffer(buf: TransitionBuffer, action_low: Any = -1.0, action_high: Any = 1.0) -> NormStats:
    """Observation stats over every stored start observation (the offline data at the offline stage)."""
    idx = np.arange(len(buf))
    cols = buf.gather(idx)
    return compute_stats(
        {"state": cols[OBS_PREFIX + "state"], "proprio": cols[OBS_PREFIX + "proprio"]},
        action_low=action_low,
        action_high=action_high,
        action_dim=cols["action"].shape[-1],
    )


def agent_obs(cols: Mapping[str, np.ndarray], prefix: str, stats: NormStats, lang: np.ndarray) -> dict[str, np.ndarray]:
    """One observation pytree for the nets: normalized state/proprio, mask, language embedding, image."""
    raw = {k: cols[prefix + k] for k in OBS_KEYS if prefix + k in cols}
    obs = stats.normalize_obs(raw)
    obs["lang"] = lang
    return obs


def agent_batch(cols: Mapping[str, np.ndarray], stats: NormStats, table: InstructionTable) -> dict[str, Any]:
    """Buffer rows -> the agent's batch (see agent.py for the layout)."""
    lang = table.table[cols["lang_id"]]
    return {
        "observations": agent_obs(cols, OBS_PREFIX, stats, lang),
        "next_observations": agent_obs(cols, NEXT_OBS_PREFIX, stats, lang),
        "actions": stats.normalize_action(cols["action"]),
        "action_valid": cols["action_valid"],
        "reward": cols["reward"].astype(np.float32),
        "discount": cols["discount"].astype(np.float32),
        "intervention": cols["intervention"],
    }


def stack(batch: dict[str, Any], num: int) -> dict[str, Any]:
    """[num * B, ...] leaves -> [num, B, ...] (the lax.scan axis of several updates per call)."""

    def split(x):
        return x.reshape(num, x.shape[0] // num, *x.shape[1:])

    return {k: stack(v, num) if isinstance(v, dict) else split(v) for k, v in batch.items()}


def example_obs(obs_cols: Mapping[str, np.ndarray], embed_dim: int, n: int = 2) -> dict[str, np.ndarray]:
    """A tiny observation pytree of the right shapes (for agent init / abstract restore targets)."""
    out = {k[len(OBS_PREFIX):]: np.zeros((n, *v.shape[1:]), v.dtype) for k, v in obs_cols.items() if k.startswith(OBS_PREFIX)}
    out["lang"] = np.zeros((n, embed_dim), np.float32)
    return out
