"""The tasks a learner knows: the simulated suite's task file plus, optionally, the user's own (`config.task_file`).

Why one catalog: task names are keys of datasets, of the fleet's uploads and of configs; what the learner reads of
a task (its wordings for the policy blob, its step budget as the upload bound, whether it is long, how many
sub-goals it counts) must come from one place, whether the task runs in our simulator or on a user's robot.
Only simulated tasks can be evaluated in the simulator or run by the embedded simulated fleet (`simulated`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fleet_api.tasks import TaskFileError, TaskSpec, load_task_file
from lwd_jax.sim.tasks import suite_specs


def load_catalog(task_file: str = "") -> dict[str, TaskSpec]:
    """The simulated suite's tasks, then those of `task_file` ("" : none). A file task may repeat a suite task
    only with the same record (say, to list it beside its own tasks); another record under a suite name is an
    error naming both, never a silent redefinition."""
    catalog = suite_specs()
    if not task_file:
        return catalog
    own = load_task_file(task_file)
    for name, spec in own.items():
        if name in catalog and catalog[name] != spec:
            raise TaskFileError(f"task file {task_file}: [{name}] redefines the simulated suite's task {name!r} "
                                "with another record; give your task another name")
    return {**catalog, **own}


def simulated(name: str) -> bool:
    """Whether `name` is a task of our simulator (it can be evaluated and run by embedded simulated robots)."""
    return name in suite_specs()


def all_tasks(task_file: str = "") -> list[str]:
    """What `tasks = "all"` means: the task file's tasks when there is one, else every simulated task."""
    return list(load_task_file(task_file)) if task_file else list(suite_specs())


def parse_task_list(spec: str, catalog: Mapping[str, TaskSpec], task_file: str = "", field: str = "config.tasks") -> list[str]:
    """"all" (`all_tasks`) or comma-separated names -> the run's task list; an unknown name or an empty list is an
    error naming `field` and the known tasks."""
    if spec == "all":
        tasks = all_tasks(task_file)
    else:
        tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in catalog]
    if unknown or not tasks:
        raise ValueError(f"{field}: unknown task(s) {unknown or spec!r} (known: {sorted(catalog)}"
                         + ("" if task_file else "; a robot's own tasks come from config.task_file") + ")")
    return tasks


def task_ids(catalog: Mapping[str, TaskSpec]) -> dict[str, int]:
    """Stable integer ids: the suite's tasks in registry order, then the task file's in file order."""
    return {name: i for i, name in enumerate(catalog)}
