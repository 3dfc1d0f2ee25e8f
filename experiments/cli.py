"""The entry points' shared command line: one `--config` file flag (ml_collections), absl's app runner, and
exit codes a supervisor can act on.

Exit codes (systemd's `RestartPreventExitStatus=2 3` in our units: restarting will not fix either):
  0  done, or stopped on request (SIGTERM/SIGINT: the run checkpointed; the same command resumes)
  2  bad config: an unknown or ill-typed `--config.<field>`, a bad value, an unknown task, a missing dataset
     or run directory (one line on stderr naming it)
  3  missing or unreadable credentials (tokens file, TLS certificate or key)
  1  anything else (a traceback: that is a bug or an environment problem worth reading)

Why flags are defined in `config_main`, not at import: tests import the entry modules side by side, and
absl refuses a flag defined twice.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from lwd_jax.learner.auth import CredentialsError

EXIT_CONFIG, EXIT_CREDENTIALS = 2, 3


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key (exit 2 on the command line)."""


def _prog() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag (an unknown `--config.<field>`, a bad config file or variant) is one line
    on stderr and exit 2, not a usage dump."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections reports an unknown field as AttributeError/KeyError with a "did you mean" line.
        raw = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\'", "'")
        if "Traceback (most recent call last)" in raw:  # an error raised inside a config file's get_config
            raw = raw.split(": Error whilst", 1)[0] + ": " + raw.strip().splitlines()[-1]
        if len(raw) > 1 and raw[0] == raw[-1] == "'":
            raw = raw[1:-1]
        message = " ".join(raw.split())
        print(f"{_prog()}: bad command line: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT set the returned event: the learner finishes the update in flight, checkpoints,
    flushes the fleet store and exits 0. A second SIGINT interrupts at once (KeyboardInterrupt)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"{_prog()}: {signal.Signals(signum).name}: stopping after the current update "
              "(checkpoint, policy and fleet store are written first)", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def config_main(default_config: str, help_text: str, run: Callable[[Any], Any]) -> None:
    """Parses `--config=<file>[:variant]` (and `--config.<field>=...` overrides), then runs `run(config)`,
    mapping expected failures to the exit codes above.

    absl logs at WARNING: orbax logs every checkpoint save and restore at INFO.
    """
    config = config_flags.DEFINE_config_file("config", default_config, help_text)

    def main_(_argv: list[str]) -> None:
        absl_logging.set_verbosity(absl_logging.WARNING)
        path = flags.FLAGS["config"].config_filename.split(":", 1)[0]
        if not os.path.isfile(path):  # ml_collections defers this error to the first use of the config
            print(f"{_prog()}: --config: no config file {path!r}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        try:
            run(config.value)
        except ConfigError as e:
            print(f"{_prog()}: {e}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        except CredentialsError as e:
            print(f"{_prog()}: {e}", file=sys.stderr)
            sys.exit(EXIT_CREDENTIALS)

    app.run(main_, flags_parser=_parse_flags)
