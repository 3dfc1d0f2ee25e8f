"""Scalar logging to TensorBoard event files, a JSON-lines file and the console.

Why three sinks: TensorBoard for curves, JSON lines for scripts that build tables and plots without a
TensorBoard dependency, and the console for the person watching the run. Non-finite scalars are logged
as they are (so the curve shows the blow-up) and reported by `check_finite`, which the loop calls to
fail loudly.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flattens nested metric dicts of 0-d arrays into `prefix/name -> float`."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(to_scalars(v, name))
        else:
            arr = np.asarray(v)
            if arr.size == 1:
                out[name] = float(arr.reshape(()))
            else:  # e.g. a per-step metric stacked by lax.scan: log its mean
                out[name] = float(arr.mean())
    return out


def check_finite(scalars: Mapping[str, float], step: int) -> None:
    """Raises FloatingPointError naming every non-finite metric: a NaN loss must stop the run, not hide."""
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite metrics at step {step}: {bad}")


class MetricsLogger:
    """Writes scalars to `<logdir>/events.*` (TensorBoard), `<logdir>/metrics.jsonl` and stdout."""

    def __init__(self, logdir: str, console_every: int = 1, quiet: bool = False):
        from tensorboardX import SummaryWriter  # imported here: only the learner needs it

        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        self._tb = SummaryWriter(logdir)
        self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", buffering=1)
        self._console_every = max(1, console_every)
        self._quiet = quiet
        self._n = 0

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        scalars = to_scalars(metrics, prefix)
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        self._n += 1
        if not self._quiet and self._n % self._console_every == 0:
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
            print(f"[{step}] {shown}", file=sys.stderr, flush=True)
        return scalars

    def close(self) -> None:
        self._tb.close()
        self._jsonl.close()
