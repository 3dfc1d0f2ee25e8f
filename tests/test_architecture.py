"""The package map holds: data flows one way, each unit imports only the units below it, production never
imports the tests, and project imports sit at the top of their files.

`ALLOWED` is the one written statement of the import graph (docs/architecture.md draws it and points
here). A unit is a top-level package, or a sub-package/module of `lwd_jax`. Adding an edge is a design
decision: change it here, in the same commit, and say why in the architecture document.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("fleet_api", "lwd_jax", "robot_bridge", "experiments", "tests")
PRODUCTION = ("fleet_api", "lwd_jax", "robot_bridge", "experiments")

# unit -> the units it may import (besides itself). Read bottom-up: fleet_api is the wire contract both sides
# share and imports nothing of ours; the bridge sees only the contract, the policy and the simulator.
ALLOWED: dict[str, set[str]] = {
    "fleet_api": set(),
    "lwd_jax.sharding": set(),
    "lwd_jax.nets": set(),
    "lwd_jax.algos": set(),
    "lwd_jax.data": {"fleet_api"},
    "lwd_jax.fake": {"fleet_api"},
    "lwd_jax.methods": {"lwd_jax.algos", "lwd_jax.nets"},
    "lwd_jax.agent": {"lwd_jax.algos", "lwd_jax.methods", "lwd_jax.nets", "lwd_jax.sharding"},
    "lwd_jax.policy": {"fleet_api", "lwd_jax.agent", "lwd_jax.data", "lwd_jax.nets"},
    "lwd_jax.sim": {"fleet_api", "lwd_jax.data"},
    "lwd_jax.learner": {
        "fleet_api", "lwd_jax.agent", "lwd_jax.algos", "lwd_jax.data", "lwd_jax.nets", "lwd_jax.policy",
        "lwd_jax.sharding", "lwd_jax.sim",
    },
    "robot_bridge": {"fleet_api", "lwd_jax.policy", "lwd_jax.sim"},
    "experiments": {
        "fleet_api", "lwd_jax.agent", "lwd_jax.algos", "lwd_jax.data", "lwd_jax.fake", "lwd_jax.learner",
        "lwd_jax.methods", "lwd_jax.nets", "lwd_jax.policy", "lwd_jax.sharding", "lwd_jax.sim", "robot_bridge",
    },
}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "lwd_jax" and len(parts) > 1 else parts[0]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module top level) for every import of a project module in `tree`."""
    top = {id(n) for n in tree.body} if isinstance(tree, ast.Module) else set()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lwd_jax import sharding` imports the module lwd_jax.sharding
            names = [f"{node.module}.{a.name}" if node.module == "lwd_jax" else node.module for a in node.names]
        else:
            continue
        out += [(n, node.lineno, id(node) in top) for n in names if n.split(".")[0] in PROJECT]
    return out


def production_files() -> list[pathlib.Path]:
    files = [p for pkg in PRODUCTION for p in (ROOT / pkg).rglob("*.py")]
    return sorted(p for p in files if "_generated" not in p.parts)


def test_every_production_unit_is_in_the_graph():
    units = {unit_of(module_name(p)) for p in production_files()} - {"lwd_jax"}
    assert units <= set(ALLOWED), f"units missing from ALLOWED: {sorted(units - set(ALLOWED))}"


def test_imports_follow_the_allowed_graph():
    bad = []
    for path in production_files():
        src = unit_of(module_name(path))
        for name, line, _ in project_imports(ast.parse(path.read_text(), str(path))):
            dst = unit_of(name)
            if dst != src and dst not in ALLOWED.get(src, set()):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {name} ({dst})")
    assert not bad, "imports outside the allowed graph:\n" + "\n".join(bad)


def test_project_imports_are_at_the_top_of_files():
    nested = [
        f"{p.relative_to(ROOT)}:{line} imports {name} inside a function or class"
        for p in production_files()
        for name, line, top in project_imports(ast.parse(p.read_text(), str(p)))
        if not top
    ]
    assert not nested, "\n".join(nested)


def test_the_graph_has_no_cycles():
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        if state.get(u) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [u])}")
        if state.get(u) == 2:
            return
        state[u] = 1
        for v in sorted(ALLOWED.get(u, set())):
            visit(v, path + [u])
        state[u] = 2

    for u in ALLOWED:
        visit(u, [])


def test_the_checker_catches_a_forbidden_import():
    """The checks above can fail: a nested learner -> robot_bridge import is seen, with its position."""
    tree = ast.parse("import os\n\ndef f():\n    from robot_bridge.client import LearnerClient\n")
    assert project_imports(tree) == [("robot_bridge.client", 4, False)]
    assert "robot_bridge" not in ALLOWED["lwd_jax.learner"]
