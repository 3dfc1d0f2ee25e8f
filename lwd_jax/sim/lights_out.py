"""Exact solver for the "Lights Out" board of OGBench's puzzle environments.

Why a solver: the puzzle expert is closed-loop. Whenever it is about to press a button (at the start, after
each press, after a teleoperator takeover or an injected wrong press) it re-solves from the *current* board,
so it recovers from any mistake and its remaining work defines the puzzle's step-wise score.

Pressing a button toggles it and its 4-neighbours; presses commute and pressing twice cancels, so a solution is
a set of buttons. For a 3x3 board the press matrix is invertible over GF(2), the solution is unique, and a
lookup table over all 2^9 press sets is the simplest exact solver.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

NEIGHBOUR_OFFSETS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
MAX_TABLE_BUTTONS = 16  # a full lookup table beyond 2^16 entries is not worth building; use bigger solvers then


def press_effect(button: int, rows: int, cols: int) -> np.ndarray:
    """The [rows*cols] 0/1 toggle pattern of pressing `button` (row-major index), as the env applies it."""
    effect = np.zeros(rows * cols, dtype=np.int64)
    r, c = divmod(button, cols)
    for dr, dc in NEIGHBOUR_OFFSETS:
        nr, nc = r + dr, c + dc
        if 0 <= nr < rows and 0 <= nc < cols:
            effect[nr * cols + nc] = 1
    return effect


@functools.cache
def _solution_table(rows: int, cols: int) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Maps each reachable toggle pattern to the smallest press set that produces it."""
    n = rows * cols
    if n > MAX_TABLE_BUTTONS:
        raise ValueError(f"lights-out table solver supports at most {MAX_TABLE_BUTTONS} buttons, got {rows}x{cols}")
    effects = [press_effect(b, rows, cols) for b in range(n)]
    table: dict[tuple[int, ...], tuple[int, ...]] = {}
    for size in range(n + 1):  # increasing size, so the first set found for a pattern is a smallest one
        for presses in itertools.combinations(range(n), size):
            pattern = np.zeros(n, dtype=np.int64)
            for b in presses:
                pattern ^= effects[b]
            table.setdefault(tuple(int(v) for v in pattern), presses)
    return table


def solve(current: np.ndarray, goal: np.ndarray, rows: int, cols: int) -> tuple[int, ...]:
    """Buttons to press (each once, any order) to turn board `current` into `goal`; raises if unsolvable."""
    diff = tuple(int(v) for v in (np.asarray(current, dtype=np.int64) ^ np.asarray(goal, dtype=np.int64)))
    table = _solution_table(rows, cols)
    if diff not in table:
        raise ValueError(f"lights-out board {rows}x{cols}: goal {list(goal)} is unreachable from {list(current)}")
    return table[diff]


def presses_remaining(current: np.ndarray, goal: np.ndarray, rows: int, cols: int) -> int:
    """Number of presses an optimal player still needs (0 when solved)."""
    return len(solve(current, goal, rows, cols))
