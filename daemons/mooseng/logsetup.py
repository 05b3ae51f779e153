"""One line per event, with the node id, so `docker-compose logs | grep -i error` finds real problems.

A line is `<UTC time> <LEVEL> node=<id> <logger>: <message>`. A traceback or a message with line
breaks stays on its line (breaks become " | "), so grep, `tail -F` and log shippers see the whole
event, and the level and node id of the event are on every line that mentions it.
"""

import logging
import sys
import time


class OneLineFormatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(part for part in super().format(record).splitlines() if part.strip())


def formatter(node: str) -> logging.Formatter:
    return OneLineFormatter(
        f"%(asctime)s.%(msecs)03dZ %(levelname)s node={node} %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )


def setup(node: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
