"""Tasks as data: what the learner and every robot need to know of a task, read from a TOML task file.

Why in the contract package: a task name is a key on the wire, in datasets and in configs, and the learner
(which instructions to embed into the policy blob, how long an episode may be, whether a task is long) and the
robots (which wordings to give, the step budget, how many sub-goals the step-wise score counts) must read
the same facts. A robot that is not our simulator brings its tasks as a file; the simulated suite is one such
file too (`lwd_jax/sim/suite_tasks.toml`, which the simulator's registry reads its wordings and budgets from).

A task file holds one table per task:

    [point_reach_7d]
    instructions = ["move the arm to the target", "reach the target"]   # the first is canonical
    step_budget = 60                # the time-out in control steps
    subgoals = ["reached"]          # optional, ordered; the last is success itself. Without sub-goals a task
                                    # reports success only (its step-wise score is 0 or 1)
    long = false                    # optional: multi-stage (n-step targets offline, the "long" table rows);
                                    # default: 4 or more sub-goals
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

# Task names travel on the wire and name files: the same rule the wire's ids follow, with dots allowed.
TASK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
LONG_SUBGOALS = 4  # "long" by default: this many sub-goals or more (the simulated suite's rule)


class TaskFileError(ValueError):
    """A task file or task record is malformed; the message names the file, the task and the key."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task as the learner and the robots see it (no scene, no expert: those belong to a simulator)."""

    name: str
    instructions: tuple[str, ...]
    step_budget: int
    subgoals: tuple[str, ...] = ()
    is_long: bool = False

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not isinstance(self.name, str) or not TASK_NAME.fullmatch(self.name):
            raise TaskFileError(f"task name {self.name!r}: expected {TASK_NAME.pattern}")
        if not self.instructions or not all(isinstance(s, str) and s.strip() for s in self.instructions):
            raise TaskFileError(f"{where}: field 'instructions' expected a non-empty list of non-empty strings, "
                                f"got {list(self.instructions)!r}")
        if isinstance(self.step_budget, bool) or not isinstance(self.step_budget, int) or self.step_budget < 1:
            raise TaskFileError(f"{where}: field 'step_budget' expected an int >= 1, got {self.step_budget!r}")
        if not all(isinstance(s, str) and s.strip() for s in self.subgoals):
            raise TaskFileError(f"{where}: field 'subgoals' expected a list of non-empty strings, got {list(self.subgoals)!r}")

    @property
    def instruction(self) -> str:
        """The canonical wording (the first)."""
        return self.instructions[0]

    @property
    def num_subgoals(self) -> int:
        """Sub-goals the step-wise score counts: 1 (success) for a task that names none."""
        return max(len(self.subgoals), 1)

    def to_toml(self) -> str:
        """This task as a table of a task file (`load_task_file` reads it back)."""

        def strings(xs: tuple[str, ...]) -> str:
            one_line = "[" + ", ".join(_toml_string(x) for x in xs) + "]"
            return one_line if len(one_line) <= 90 else "[\n" + "".join(f"  {_toml_string(x)},\n" for x in xs) + "]"

        lines = [f"[{self.name}]", f"instructions = {strings(self.instructions)}", f"step_budget = {self.step_budget}"]
        if self.subgoals:
            lines.append(f"subgoals = {strings(self.subgoals)}")
        lines.append(f"long = {'true' if self.is_long else 'false'}")
        return "\n".join(lines) + "\n"


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def task_from_dict(name: str, d: Mapping[str, Any], where: str = "task file") -> TaskSpec:
    """One task table -> TaskSpec; errors name the file, the task and the key."""
    known = {"instructions", "step_budget", "subgoals", "long"}
    if not isinstance(d, Mapping):
        raise TaskFileError(f"{where}: [{name}] expected a table of {sorted(known)}, got {type(d).__name__}")
    unknown = sorted(set(d) - known)
    if unknown:
        raise TaskFileError(f"{where}: [{name}] unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("instructions", "step_budget"):
        if key not in d:
            raise TaskFileError(f"{where}: [{name}] missing key '{key}'")
    instructions, subgoals = d["instructions"], d.get("subgoals", [])
    for key, value in (("instructions", instructions), ("subgoals", subgoals)):
        if not isinstance(value, list):
            raise TaskFileError(f"{where}: [{name}] field '{key}' expected a list of strings, got {value!r}")
    is_long = d.get("long", len(subgoals) >= LONG_SUBGOALS)
    if not isinstance(is_long, bool):
        raise TaskFileError(f"{where}: [{name}] field 'long' expected true or false, got {is_long!r}")
    try:
        return TaskSpec(name, tuple(instructions), d["step_budget"], tuple(subgoals), is_long)
    except TaskFileError as e:
        raise TaskFileError(f"{where}: {e}") from None


def load_task_file(path: str | os.PathLike) -> dict[str, TaskSpec]:
    """A TOML task file -> {name: TaskSpec}, in file order; raises TaskFileError naming what is wrong."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise TaskFileError(f"task file {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise TaskFileError(f"task file {path}: not valid TOML ({e})") from None
    if not data:
        raise TaskFileError(f"task file {path}: defines no task")
    return {name: task_from_dict(name, d, f"task file {path}") for name, d in data.items()}
