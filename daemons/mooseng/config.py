"""Daemon configuration: a TOML file, then MOOSENG_* environment variables, validated at start.

Every error names the key and the offending value on one line, so an operator can fix it
without reading a traceback.
"""

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from mooseng.errors import ConfigError
from mooseng.wire import parse_addr


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # str | int | float | bool | addr | addrs | path | paths | choice
    default: Any = None  # None: required
    env: str | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    help: str = ""


def _addr(value):
    parse_addr(value)
    return value


def _list(value):
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError("expected a list of strings or a comma-separated string")


def _bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError("expected true or false")


def _number(cast: Callable):
    def convert(value):
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, str):
            value = value.strip()
        result = cast(value)
        if cast is int and isinstance(value, float) and value != result:
            raise ValueError("expected an integer")
        return result

    return convert


def _str(value):
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _addrs(value):
    addrs = [_addr(a) for a in _list(value)]
    if not addrs:
        raise ValueError("expected at least one host:port")
    return addrs


def _url(value):
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError("expected an http:// or https:// URL")
    return value


def _paths(value):
    paths = [str(Path(p)) for p in _list(value)]
    if not paths:
        raise ValueError("expected at least one path")
    return paths


_CONVERT: dict[str, Callable] = {
    "str": _str,
    "int": _number(int),
    "float": _number(float),
    "bool": _bool,
    "addr": _addr,
    "addrs": _addrs,
    "path": lambda v: str(Path(_str(v))),
    "paths": _paths,
    "choice": _str,
    "url": _url,
}

_COMMON = [
    Key("cluster_id", "str", "mooseng", "MOOSENG_CLUSTER_ID", help="cluster identity; peers with another id are refused"),
    Key("log_level", "choice", "info", "MOOSENG_LOG_LEVEL", choices=("debug", "info", "warning", "error")),
]

SCHEMAS: dict[str, list[Key]] = {
    "master": _COMMON + [
        Key("node_id", "str", "master-1", "MOOSENG_NODE_ID"),
        Key("listen", "addr", "127.0.0.1:9421", "MOOSENG_LISTEN", help="client API for clients and chunkservers (rpc.py)"),
        Key("advertise", "str", "", "MOOSENG_ADVERTISE", help="client address given in redirects; empty: listen (or the raft_peers host)"),
        Key("raft_listen", "addr", "127.0.0.1:9422", "MOOSENG_RAFT_LISTEN"),
        Key("metrics_listen", "addr", "127.0.0.1:9423", "MOOSENG_METRICS_LISTEN"),
        Key("raft_peers", "str", "", "MOOSENG_RAFT_PEERS", help="id=host:port,... of the Raft group (empty: this node alone)"),
        Key("raft_join", "bool", False, "MOOSENG_RAFT_JOIN", help="start empty and wait to be added (mooseng master add)"),
        Key("data_dir", "path", None, "MOOSENG_DATA_DIR"),
        Key("cache_size_mb", "int", 1024, "MOOSENG_CACHE_SIZE_MB", min=1),
        Key("snapshot_every", "int", 100_000, "MOOSENG_SNAPSHOT_EVERY", min=1, help="applied Raft entries between snapshots"),
        Key("chunkserver_timeout_s", "float", 10.0, "MOOSENG_CHUNKSERVER_TIMEOUT_S", min=0.1, help="missed heartbeats before a chunkserver is down"),
        Key("client_session_timeout_s", "float", 86400.0, "MOOSENG_CLIENT_SESSION_TIMEOUT_S", min=1, help="a client silent this long loses the files it kept open after unlinking them"),
        Key("write_lease_s", "float", 20.0, "MOOSENG_WRITE_LEASE_S", min=1, max=3600, help="a chunk's write lease expires this long after it was granted if its writer never gives it back"),
        # Self-healing (master/healing.py): replication, over-goal deletion, rebalancing.
        Key("healing_interval_s", "float", 1.0, "MOOSENG_HEALING_INTERVAL_S", min=0.05, max=60, help="how often the leader plans replications"),
        Key("replication_max_per_server", "int", 32, "MOOSENG_REPLICATION_MAX_PER_SERVER", min=1, max=1000, help="replications ordered to or from a chunkserver and not yet done (it runs replication_workers of them at once)"),
        Key("replication_timeout_s", "float", 300.0, "MOOSENG_REPLICATION_TIMEOUT_S", min=1, help="a replication not reported by then failed"),
        Key("rebalance_max_per_server", "int", 1, "MOOSENG_REBALANCE_MAX_PER_SERVER", min=0, max=1000, help="rebalancing moves per chunkserver at once (0: no rebalancing)"),
        Key("rebalance_threshold_pct", "float", 5.0, "MOOSENG_REBALANCE_THRESHOLD_PCT", min=0.01, max=100, help="usage spread (percentage points) tolerated between chunkservers"),
    ],
    "chunkserver": _COMMON + [
        Key("server_id", "int", None, "MOOSENG_SERVER_ID", min=1, max=65535),
        Key("master_addrs", "addrs", None, "MOOSENG_MASTER_ADDRS"),
        Key("listen", "addr", "127.0.0.1:9420", "MOOSENG_LISTEN"),
        Key("advertise", "str", "", "MOOSENG_ADVERTISE", help="host:port given to clients; empty: listen"),
        Key("metrics_listen", "addr", "127.0.0.1:9425", "MOOSENG_METRICS_LISTEN"),
        Key("data_dirs", "paths", None, "MOOSENG_DATA_DIRS"),
        Key("heartbeat_interval_s", "float", 1.0, "MOOSENG_HEARTBEAT_INTERVAL_S", min=0.05, max=60),
        Key("leave_free_mb", "int", 256, "MOOSENG_LEAVE_FREE_MB", min=0, help="space kept free on each disk"),
        Key("replication_mb_s", "float", 100.0, "MOOSENG_REPLICATION_MB_S", min=0.1, help="bytes per second (MB) this server pulls for replication"),
        Key("replication_workers", "int", 4, "MOOSENG_REPLICATION_WORKERS", min=1, max=64, help="replications this server runs at once"),
        Key("scrub_mb_s", "float", 8.0, "MOOSENG_SCRUB_MB_S", min=0, help="background CRC check rate (MB/s; 0: off)"),
    ],
    "client": _COMMON + [
        Key("master_endpoints", "addrs", None, "MOOSENG_MASTER_ENDPOINTS"),
        Key("mount_point", "path", "/mnt/mooseng", "MOOSENG_MOUNT_POINT"),
        Key("cache_size_mb", "int", 256, "MOOSENG_CACHE_SIZE_MB", min=1, help="write-back and read-ahead buffer"),
        Key("metrics_listen", "addr", "127.0.0.1:9427", "MOOSENG_METRICS_LISTEN"),
        Key("attr_timeout_s", "float", 1.0, "MOOSENG_ATTR_TIMEOUT_S", min=0),
        Key("entry_timeout_s", "float", 1.0, "MOOSENG_ENTRY_TIMEOUT_S", min=0),
        Key("negative_timeout_s", "float", 1.0, "MOOSENG_NEGATIVE_TIMEOUT_S", min=0,
            help="how long a name found missing stays missing to this client; 0: always ask the master"),
        Key("readahead_mb", "int", 16, "MOOSENG_READAHEAD_MB", min=0),
        Key("write_mode", "choice", "fanout", "MOOSENG_WRITE_MODE", choices=("chain", "fanout")),
        Key("master_timeout_s", "float", 30.0, "MOOSENG_MASTER_TIMEOUT_S", min=0.1, help="give up on an unreachable master after this"),
    ],
    "dashboard": _COMMON + [
        Key("listen", "addr", "127.0.0.1:8080", "MOOSENG_LISTEN", help="HTTP address; loopback unless set (Compose: 0.0.0.0:8080)"),
        Key("master_endpoints", "addrs", ["127.0.0.1:9421"], "MOOSENG_MASTER_ENDPOINTS", help="masters' client API, for status and raft_status"),
        Key("master_metrics", "addrs", ["127.0.0.1:9423"], "MOOSENG_MASTER_METRICS", help="masters' /metrics, for throughput and op rates"),
        Key("sample_interval_s", "float", 5.0, "MOOSENG_SAMPLE_INTERVAL_S", min=0.2, max=60, help="how often the cluster is sampled (each sample: one status and one /metrics per master)"),
        Key("history_points", "int", 300, "MOOSENG_HISTORY_POINTS", min=10, max=100_000, help="samples kept for the charts"),
        Key("prometheus_url", "url", "", "MOOSENG_PROMETHEUS_URL", help="link shown on the page; empty: none"),
        Key("grafana_url", "url", "", "MOOSENG_GRAFANA_URL", help="link shown on the page; empty: none"),
    ],
}


def _check(key: Key, raw: Any) -> Any:
    if raw == "" and key.default == "":
        return ""  # optional key explicitly left empty
    try:
        value = _CONVERT[key.kind](raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config error: {key.name} = {raw!r}: {exc}") from None
    if key.choices and value not in key.choices:
        raise ConfigError(f"config error: {key.name} = {raw!r}: must be one of {', '.join(key.choices)}")
    if key.min is not None and value < key.min:
        raise ConfigError(f"config error: {key.name} = {raw!r}: must be >= {key.min:g}")
    if key.max is not None and value > key.max:
        raise ConfigError(f"config error: {key.name} = {raw!r}: must be <= {key.max:g}")
    return value


def load(daemon: str, path: str | os.PathLike | None = None, env: dict | None = None) -> SimpleNamespace:
    """Read [daemon] from the TOML file, apply MOOSENG_* overrides, validate every key."""
    schema = SCHEMAS[daemon]
    env = os.environ if env is None else env
    table: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error: {path}: invalid TOML: {exc}") from None
        table = doc.get(daemon, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config error: [{daemon}] in {path} must be a table")
        unknown = sorted(set(table) - {k.name for k in schema})
        if unknown:
            raise ConfigError(f"config error: {unknown[0]} = {table[unknown[0]]!r}: unknown key in [{daemon}]")
    values = {}
    for key in schema:
        if key.env and env.get(key.env, "") != "":
            raw = env[key.env]
        elif key.name in table:
            raw = table[key.name]
        elif key.default is None:
            where = f" (or {key.env})" if key.env else ""
            raise ConfigError(f"config error: {key.name}{where} is required")
        else:
            values[key.name] = key.default
            continue
        values[key.name] = _check(key, raw)
    return SimpleNamespace(**values)
