"""render-config DAEMON TEMPLATE OUTPUT: write TEMPLATE with every value the MOOSENG_* variables set.

The entrypoints call this so that the file in the container is the configuration the daemon
runs with (`docker exec mooseng-master-1 cat /etc/mooseng/master.toml` shows it). Values are
validated by the daemon's own schema first: a bad variable stops the container with the daemon's
one-line "config error: key = value: ..." and exit code 2, before anything starts.
Template lines keep their comments; keys the template lacks but the environment sets are appended.
"""

import json
import os
import re
import sys

from mooseng import config
from mooseng.errors import ConfigError

LINE = re.compile(r"^(?P<key>[a-z_]+)(?P<eq>\s*=\s*)(?P<value>.*?)(?P<comment>\s*#.*)?$")


def toml_value(value) -> str:
    """A TOML literal for a config value (str, int, float, bool or list of str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def render(daemon: str, template_path: str, env: dict) -> str:
    """The template's text with each key's value replaced by the effective (validated) one."""
    effective = vars(config.load(daemon, template_path, env=env))
    defaults = {key.name: key.default for key in config.SCHEMAS[daemon]}
    with open(template_path, encoding="utf-8") as f:
        template = f.read()
    out, seen = [], set()
    for line in template.splitlines():
        m = LINE.match(line)
        if m and m["key"] in effective:
            seen.add(m["key"])
            line = f"{m['key']}{m['eq']}{toml_value(effective[m['key']])}{m['comment'] or ''}"
        out.append(line)
    out += [f"{key} = {toml_value(v)}" for key, v in effective.items() if key not in seen and v != defaults[key]]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: render-config DAEMON TEMPLATE OUTPUT", file=sys.stderr)
        return 2
    daemon, template_path, output = argv
    if daemon not in config.SCHEMAS:
        print(f"render-config: this mooseng has no {daemon!r} daemon (it has: {', '.join(config.SCHEMAS)})", file=sys.stderr)
        return 2
    try:
        text = render(daemon, template_path, dict(os.environ))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
