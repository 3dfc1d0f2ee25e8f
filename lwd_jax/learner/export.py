"""Checkpoint -> policy blob: what `make eval` (and anyone serving a finished run) loads from a training workdir.

A run's workdir holds `checkpoints/` (orbax: the whole agent pytree plus a JSON meta record whose "config" is the
experiment config) and `norm_stats.json` (the `NormStats` the learner trained with). The blob is the same
self-describing `encode_policy` bytes the learner streams to the fleet, so evaluation runs exactly what a robot
would run. Every missing or unreadable file is an error naming its path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from fleet_api.embodiment import UR5E, Embodiment, load_embodiment
from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data.normalize import NormStats
from lwd_jax.learner.checkpoint import Checkpointer
from lwd_jax.learner.task_catalog import all_tasks, load_catalog
from lwd_jax.nets.language import BertConfig, default_model_dir, get_default_encoder
from lwd_jax.policy import KINDS, encode_policy

CHECKPOINT_DIR = "checkpoints"  # under a run's workdir (experiments/train.py)
STATS_FILE = "norm_stats.json"  # under a run's workdir: NormStats.to_json()


@dataclasses.dataclass(frozen=True)
class ExportedPolicy:
    """The blob plus where it came from (recorded in evaluation reports)."""

    blob: bytes
    kind: str
    step: int
    version: int
    phase: str
    checkpoint_dir: str

    def info(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "blob"}


def lang_embed_dim() -> int:
    """Width of the instruction embedding the policy was built for (the frozen encoder's hidden size)."""

    return BertConfig.from_json(default_model_dir() / "config.json").hidden_size


def example_obs(agent_cfg: ml_collections.ConfigDict, n: int = 1, embodiment: Embodiment = UR5E) -> dict[str, np.ndarray]:
    """Zero observations of the embodiment's shapes: enough for `LWDAgent.abstract_state` (params ignore the batch)."""
    obs = {
        "state": np.zeros((n, embodiment.state_dim), np.float32),
        "state_mask": np.zeros((n, embodiment.state_dim), bool),
        "proprio": np.zeros((n, embodiment.proprio_dim), np.float32),
        "lang": np.zeros((n, lang_embed_dim()), np.float32),
    }
    if agent_cfg.use_image:
        obs["image"] = np.zeros((n, *embodiment.image_shape), np.uint8)
    return obs


def run_wordings(cfg: ml_collections.ConfigDict) -> list[str]:
    """The registered wordings of the run's tasks: embedded into the blob, so a robot with the bridge install
    (no text encoder) can act with an exported policy too. Tasks no longer known (an old run whose task left
    the registry, or whose task file moved) are skipped, so such a run still exports."""
    task_file = str(cfg.get("task_file", ""))
    if task_file and not os.path.isfile(task_file):
        task_file = ""
    catalog = load_catalog(task_file)
    spec = str(cfg.get("tasks", "all"))
    if spec == "all":
        names = all_tasks(task_file)
    else:
        names = [t.strip() for t in spec.split(",")]
    return [w for t in names if t in catalog for w in catalog[t].instructions]


def load_stats(path: str) -> NormStats:
    """`NormStats` from a run's norm_stats.json; errors name the path and what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"export: normalization stats {path} not found (experiments/train.py writes it when a run starts; a run "
            "trained before that needs it written from its offline data: NormStats.to_json())"
        )
    with open(path) as f:
        text = f.read()
    try:
        return NormStats.from_json(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"export: {path} is not valid JSON (truncated?): {e}") from None
    except KeyError as e:
        raise ValueError(f"export: {path} lacks the field {e.args[0]!r} of NormStats.to_json()") from None


def _read_meta(ckpt: Checkpointer, step: int) -> dict[str, Any]:
    """The JSON side record of one step, without touching the (large) agent item."""
    try:
        return ckpt.meta(step)
    except Exception as e:  # noqa: BLE001 - orbax raises many types; the message names the directory
        raise ValueError(
            f"export: the meta record of checkpoint step {step} under {ckpt.directory} is unreadable (truncated?): "
            f"{type(e).__name__}: {e}"
        ) from e


def export_policy(workdir: str, kind: str = "policy", step: int | None = None,
                  recap_indicator: float | None = None) -> ExportedPolicy:
    """Restores `<workdir>/checkpoints` (step: None = latest) and packs the acting params of `kind` as a blob.

    `recap_indicator` (-1, 0 or 1; None: as trained, i.e. +1): the advantage indicator a RECAP policy acts with,
    to see what the conditioning does (a RECAP run only: any other run's policy has no indicator).
    """

    if kind not in KINDS:
        raise ValueError(f"export: kind expected one of {KINDS}, got {kind!r}")
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"export: no checkpoint directory {directory} (train the run first: make train)")
    stats = load_stats(os.path.join(workdir, STATS_FILE))
    ckpt = Checkpointer(directory)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"export: no finished checkpoint under {directory}")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise ValueError(f"export: no checkpoint at step {step} under {directory}; saved steps: {sorted(steps)}")
        meta = _read_meta(ckpt, step)
        if "config" not in meta:
            raise ValueError(f"export: the meta record of step {step} under {directory} has no 'config' field")
        cfg = ml_collections.ConfigDict(json.loads(meta["config"]))
        embodiment = load_embodiment(cfg.get("embodiment", ""))  # a run from before embodiments: the UR5e
        if recap_indicator is not None:
            if kind != "policy" or cfg.agent.get("extraction", "qam") != "recap":
                raise ValueError(f"export: recap_indicator needs the policy of a RECAP run; {workdir} has extraction "
                                 f"{cfg.agent.get('extraction', 'qam')!r} (kind {kind!r})")
            with cfg.unlocked():
                cfg.agent.baselines.recap_act_indicator = float(recap_indicator)
        agent = LWDAgent(cfg.agent, mesh=None)
        try:
            state, _, _ = ckpt.restore(agent.abstract_state(example_obs(cfg.agent, embodiment=embodiment)), step)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"export: checkpoint step {step} under {directory} could not be restored (truncated, or saved by a "
                f"different agent config): {type(e).__name__}: {e}"
            ) from e
    finally:
        ckpt.close()
    params = jax.device_get(policy_params(state, kind))
    version = int(meta.get("version", 0))
    wordings = run_wordings(cfg)
    lang = dict(zip(wordings, get_default_encoder().encode(wordings), strict=True)) if wordings else None
    blob = encode_policy(cfg.agent, params, stats, version=version, kind=kind, instructions=lang, embodiment=embodiment)
    return ExportedPolicy(blob, kind, step, version, str(meta.get("phase", "")), directory)


def policy_blob_from_checkpoint(workdir: str, kind: str = "policy", step: int | None = None) -> bytes:
    """The `encode_policy` blob of a run's checkpoint (see `export_policy`)."""
    return export_policy(workdir, kind, step).blob
