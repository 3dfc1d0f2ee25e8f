"""The learner a real fleet connects to: `make serve` / `python -m experiments.serve --config=...`.

Same stages, checkpoints and resume as `experiments.train` (it *is* that run, with the serving config of
experiments/configs/serve.py: robots reach it on `online.host:port` with their tokens, over TLS/mTLS when
configured). SIGTERM or Ctrl-C: the update in flight finishes, the checkpoint, the newest policy and the
fleet store are written, exit 0. Exit 2: bad config; 3: missing or unreadable credentials (experiments/cli.py).
README "Run your own fleet" walks through it on two terminals.
"""

from __future__ import annotations

from experiments.cli import config_main, stop_on_signals
from experiments.train import run
from lwd_jax import sharding as shd
from lwd_jax.learner.heap import configure_allocator


def main() -> None:
    configure_allocator()  # first: before any thread (learner/heap.py: a serving learner's arenas fragment)
    shd.maybe_initialize_distributed()
    stop = stop_on_signals()
    config_main("experiments/configs/serve.py", "learner config", lambda cfg: run(cfg, stop=stop))


if __name__ == "__main__":
    main()
