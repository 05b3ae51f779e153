"""What every daemon's main() does around its own work: configuration, logging and exit codes.

A bad configuration is one line on stderr and exit 2, before any logging is set up; a
QuietError (a port in use, an unusable data dir) is one logged line and its exit code.
"""

import logging
import sys
from collections.abc import Callable
from types import SimpleNamespace

from mooseng import config, logsetup
from mooseng.errors import ConfigError, QuietError

log = logging.getLogger("mooseng")


def run(kind: str, config_file: str | None, node: Callable[[SimpleNamespace], str],
        serve: Callable[[SimpleNamespace], int | None]) -> int:
    """Load the `kind` configuration, log as node(cfg), run serve(cfg); the exit code."""
    try:
        cfg = config.load(kind, config_file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logsetup.setup(node(cfg), cfg.log_level)
    try:
        return serve(cfg) or 0
    except QuietError as exc:
        log.error("%s", exc)
        return exc.exitcode
