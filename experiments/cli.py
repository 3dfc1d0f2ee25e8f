"""The entry points' shared command line: one `--config` file flag (ml_collections), absl's app runner.

Why flags are defined in `config_main`, not at import: tests import the entry modules side by side, and
absl refuses a flag defined twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags


def config_main(default_config: str, help_text: str, run: Callable[[Any], Any]) -> None:
    """Parses `--config=<file>[:variant]` (and `--config.<field>=...` overrides), then runs `run(config)`.

    absl logs at WARNING: orbax logs every checkpoint save and restore at INFO.
    """
    config = config_flags.DEFINE_config_file("config", default_config, help_text)

    def main_(_argv: list[str]) -> None:
        absl_logging.set_verbosity(absl_logging.WARNING)
        run(config.value)

    app.run(main_)
