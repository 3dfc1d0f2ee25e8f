"""What a robot is, as data: the action space, the observation layout, the control rate and the chunk length.

Why a record of its own: the learner, the fleet store, the wire and every robot must agree on the shapes an
episode has, and a second robot (a 7-d arm next to our 5-d simulated UR5e) must not need a code change. One
frozen `Embodiment` says it all; the simulated suite's is `UR5E`. It travels in the policy blob's header (a
robot refuses a policy made for another body), the learner checks every upload against it (a 5-d episode sent
to a 7-d learner is refused for good, with both layouts named), and RLDS datasets written for it have its
widths.

A TOML file describes a new robot (`load_embodiment`):

    name = "my_7dof_arm"
    action_dim = 7
    state_dim = 32            # task state, zero-padded to this width (`state_mask` marks the real part)
    proprio_dim = 14
    action_low = -1.0         # a number for every dimension, or one list of action_dim numbers
    action_high = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    control_hz = 10.0
    chunk_len = 4             # actions per policy call (the policy's action horizon)
    image_shape = [64, 64, 3] # optional; the camera, when the policy reads one
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any


class EmbodimentError(ValueError):
    """An embodiment spec (or a record checked against one) is malformed; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Embodiment:
    """One robot body: what its episodes look like on the wire and on disk, and how fast it acts."""

    name: str
    action_dim: int
    state_dim: int
    proprio_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_hz: float = 20.0
    chunk_len: int = 5
    image_shape: tuple[int, int, int] = (64, 64, 3)

    def __post_init__(self) -> None:
        where = f"embodiment {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise EmbodimentError("embodiment: field 'name' must be a non-empty string")
        for key in ("action_dim", "state_dim", "proprio_dim", "chunk_len"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EmbodimentError(f"{where}: field '{key}' expected an int >= 1, got {value!r}")
        for key in ("action_low", "action_high"):
            value = getattr(self, key)
            if len(value) != self.action_dim or not all(math.isfinite(float(v)) for v in value):
                raise EmbodimentError(f"{where}: field '{key}' expected {self.action_dim} finite numbers "
                                      f"(action_dim), got {list(value)}")
        if any(float(lo) >= float(hi) for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise EmbodimentError(f"{where}: field 'action_high' must exceed 'action_low' in every dimension, got "
                                  f"low {list(self.action_low)}, high {list(self.action_high)}")
        if not (isinstance(self.control_hz, int | float) and math.isfinite(self.control_hz) and self.control_hz > 0):
            raise EmbodimentError(f"{where}: field 'control_hz' expected a number > 0, got {self.control_hz!r}")
        if len(self.image_shape) != 3 or any(not isinstance(v, int) or v < 1 for v in self.image_shape):
            raise EmbodimentError(f"{where}: field 'image_shape' expected [height, width, channels], got "
                                  f"{list(self.image_shape)}")

    def field_layout(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Per-field (dtype, row shape) of an episode of this body: what a wire header may declare."""
        return {
            "action": ("<f4", (self.action_dim,)),
            "reward": ("<f4", ()),
            "intervention": ("|b1", ()),
            "subgoals": ("<i4", ()),
            "observation/state": ("<f4", (self.state_dim,)),
            "observation/state_mask": ("|b1", (self.state_dim,)),
            "observation/proprio": ("<f4", (self.proprio_dim,)),
            "observation/image": ("|u1", tuple(self.image_shape)),
        }

    def describe(self) -> str:
        """A short description for error messages: name and the widths that decide compatibility."""
        return (f"{self.name} ({self.action_dim}-d actions, state {self.state_dim}, proprio {self.proprio_dim}, "
                f"image {'x'.join(map(str, self.image_shape))})")

    def mismatch(self, other: Embodiment, with_image: bool = False) -> str | None:
        """Why episodes of `other` cannot be used where this body's are expected (None: they can). The name and
        the control rate do not decide it: two arms of one model under different names share a policy."""
        keys = ("action_dim", "state_dim", "proprio_dim", "action_low", "action_high") + (("image_shape",) if with_image else ())
        mine, theirs = self.to_dict(), other.to_dict()
        for key in keys:
            if mine[key] != theirs[key]:
                return f"field '{key}' differs: {mine[key]} ({self.name}) vs {theirs[key]} ({other.name})"
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the policy blob header, config dumps)."""
        d = dataclasses.asdict(self)
        for key in ("action_low", "action_high", "image_shape"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "embodiment") -> Embodiment:
        """Inverse of `to_dict`; a scalar bound is broadcast over the action dimensions. Errors name the key."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise EmbodimentError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
        required = ("name", "action_dim", "state_dim", "proprio_dim", "action_low", "action_high")
        missing = [k for k in required if k not in d]
        if missing:
            raise EmbodimentError(f"{where}: missing key(s) {missing}")
        kw = dict(d)
        n = kw["action_dim"]
        for key in ("action_low", "action_high"):
            value = kw[key]
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = [value] * (n if isinstance(n, int) and n > 0 else 1)
            if not isinstance(value, list | tuple) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                               for v in value):
                raise EmbodimentError(f"{where}: field '{key}' expected a number or a list of numbers, got {value!r}")
            kw[key] = tuple(float(v) for v in value)
        if "image_shape" in kw:
            if not isinstance(kw["image_shape"], list | tuple):
                raise EmbodimentError(f"{where}: field 'image_shape' expected a list of 3 ints, got {kw['image_shape']!r}")
            kw["image_shape"] = tuple(kw["image_shape"])
        if "control_hz" in kw and isinstance(kw["control_hz"], int) and not isinstance(kw["control_hz"], bool):
            kw["control_hz"] = float(kw["control_hz"])
        try:
            return cls(**kw)
        except EmbodimentError as e:
            raise EmbodimentError(f"{where}: {e}") from None


# The simulated suite's body (OGBench manipspace UR5e): dx, dy, dz, dyaw, gripper in [-1, 1]; the task state
# zero-padded to 64 (the largest scene has 55); 20 proprioception values (lwd_jax/sim/env.py); 20 Hz, chunks of 5.
UR5E = Embodiment(name="ur5e_manipspace", action_dim=5, state_dim=64, proprio_dim=20,
                  action_low=(-1.0,) * 5, action_high=(1.0,) * 5, control_hz=20.0, chunk_len=5)
BUILTIN: dict[str, Embodiment] = {UR5E.name: UR5E}


def load_embodiment(spec: str | os.PathLike | None) -> Embodiment:
    """"" / None -> the simulated UR5e; a built-in name; or the path of a TOML file (module docstring)."""
    if spec is None or str(spec) == "":
        return UR5E
    spec = os.fspath(spec)
    if spec in BUILTIN:
        return BUILTIN[spec]
    if not os.path.isfile(spec):
        raise EmbodimentError(f"embodiment: {spec!r} is neither a built-in ({sorted(BUILTIN)}) nor a TOML file")
    try:
        with open(spec, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise EmbodimentError(f"embodiment file {spec}: not valid TOML ({e})") from None
    return Embodiment.from_dict(data, where=f"embodiment file {spec}")
