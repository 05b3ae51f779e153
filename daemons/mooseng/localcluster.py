"""Run the seed topology (masters, chunkservers, FUSE clients) as local processes.

The demo script and the integration tests both use this, so a cluster started by one can be
inspected and stopped by the other: everything about a cluster lives under its root directory
(`cluster.json`, and per node `<root>/<node>/` with the TOML file, data, log and pid file).

Ports: `port_base=None` uses the seed's fixed ports (the demo); `port_base=0` finds a free block on
127.0.0.1 (tests, so they never collide with a running demo); `port_base=N` uses the block at N.

Optional services, off unless asked for (they cost a process each): the web dashboard (node
`dashboard`) and a Prometheus (node `prometheus`) scraping every daemon with the repository's rules,
both on 127.0.0.1 and started after the file system is up. Grafana is not installable here: Docker
mode has it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mooseng.cli.main import fuse_mounts, probe_master
from mooseng.client.masterclient import MasterClient
from mooseng.errors import FsError, QuietError

HOST = "127.0.0.1"
AUTO_PORTS = 0
KINDS = ("master", "chunkserver", "client")
SERVICES = ("dashboard", "prometheus")  # one of each at most, started after KINDS, named by kind
MODULES = {"master": "mooseng.master.main", "chunkserver": "mooseng.chunkserver.main", "client": "mooseng.client.mount",
           "dashboard": "mooseng.dashboard.server"}
# Prometheus reads the same rule files as in Compose and the Ansible role (repository checkout only).
RULES_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "rules"
SCRAPE_INTERVAL_S = 5  # Compose scrapes every 15 s; locally a fresher view is cheap
DISKS_PER_CHUNKSERVER = 4

# The seed README's ports, per node number (1-based). It defines three of each.
SEED_PORTS = {
    "master": [{"api": 9421 + 10 * i, "raft": 9422 + 10 * i, "metrics": 9423 + 10 * i} for i in range(3)],
    "chunkserver": [{"api": g, "metrics": g + 5} for g in (9420, 9450, 9460)],
    "client": [{"metrics": m} for m in (9427, 9437, 9447)],
    "dashboard": [{"http": 8080}],
    "prometheus": [{"http": 9090}],
}
PORT_NAMES = {"master": ("api", "raft", "metrics"), "chunkserver": ("api", "metrics"), "client": ("metrics",),
              "dashboard": ("http",), "prometheus": ("http",)}
# Auto blocks stay below the kernel's ephemeral range so outgoing connections cannot take them.
AUTO_RANGE = (20000, 32000)


class ClusterError(QuietError):
    """Starting, stopping or inspecting the local cluster failed; the message says what to do."""


@dataclass
class Node:
    """One daemon of the cluster and where its files live."""

    kind: str
    index: int
    ports: dict[str, int]
    root: Path
    pid: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.kind in SERVICES else f"{self.kind}-{self.index}"

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def config_path(self) -> Path:
        return self.dir / ("prometheus.yml" if self.kind == "prometheus" else f"{self.kind}.toml")

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def mountpoint(self) -> Path:
        return self.dir / "mnt"

    def addr(self, port: str) -> str:
        return f"{HOST}:{self.ports[port]}"

    @property
    def url(self) -> str:
        """Where a user looks at this node: a service's web page, a daemon's metrics."""
        return f"http://{self.addr('http')}/" if self.kind in SERVICES else f"http://{self.addr('metrics')}/metrics"


class LocalCluster:
    """The seed topology as local processes under `root` (see the module docstring for ports).

    Each daemon gets only its TOML file and `env_extra`: MOOSENG_* variables of the caller are not
    passed on, since one such as MOOSENG_LISTEN would give every daemon the same setting.
    """

    timeout_s = 60.0  # per start phase; a daemon that is slower than this is broken
    stop_timeout_s = 20.0  # SIGTERM grace before SIGKILL

    def __init__(
        self,
        root: Path,
        masters: int = 1,
        chunkservers: int = 3,
        clients: int = 3,
        port_base: int | None = None,
        python: str = sys.executable,
        env_extra: dict[str, str] | None = None,
        dashboard: bool = False,
        prometheus: bool = False,
    ):
        counts = {"master": masters, "chunkserver": chunkservers, "client": clients,
                  "dashboard": int(dashboard), "prometheus": int(prometheus)}
        if masters < 1 or chunkservers < 1 or clients < 0:
            raise ValueError("a cluster needs at least one master and one chunkserver")
        self.root = Path(root).resolve()
        self.python = python
        self.env_extra = dict(env_extra or {})
        if port_base == AUTO_PORTS:
            port_base = _find_free_block(sum(len(PORT_NAMES[k]) * n for k, n in counts.items()))
        self.port_base = port_base
        self.nodes: list[Node] = []
        next_port = self.port_base
        for kind in KINDS + SERVICES:
            for index in range(1, counts[kind] + 1):
                if self.port_base is None:
                    if index > len(SEED_PORTS[kind]):
                        raise ValueError(
                            f"the seed defines ports for {len(SEED_PORTS[kind])} {kind}s; pass port_base for more"
                        )
                    ports = dict(SEED_PORTS[kind][index - 1])
                else:
                    ports = {name: next_port + i for i, name in enumerate(PORT_NAMES[kind])}
                    next_port += len(ports)
                self.nodes.append(Node(kind, index, ports, self.root))
        for node in self.nodes:
            node.pid = _read_pid(node.pid_path)
        self._procs: dict[str, subprocess.Popen] = {}

    @classmethod
    def open(cls, root: Path) -> LocalCluster:
        """The cluster that `start` recorded under root (for stop/status from another process)."""
        try:
            layout = json.loads((Path(root) / "cluster.json").read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster under {root} (start one first)") from None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {root}/cluster.json: {exc}") from None
        return cls(root, layout["masters"], layout["chunkservers"], layout["clients"], layout["port_base"],
                   dashboard=layout.get("dashboard", False), prometheus=layout.get("prometheus", False))

    # --- public API --------------------------------------------------------------------------------

    @property
    def master_endpoints(self) -> list[str]:
        return [n.addr("api") for n in self._of("master")]

    def service_url(self, kind: str) -> str | None:
        """The dashboard's or Prometheus's URL, None if this cluster has none."""
        nodes = self._of(kind)
        return nodes[0].url.rstrip("/") if nodes else None

    def mountpoint(self, n: int) -> Path:
        return self.node(f"client-{n}").mountpoint

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ValueError(f"no node {name!r} in this cluster ({', '.join(n.name for n in self.nodes)})")

    def leader(self, timeout_s: float = 10.0) -> str:
        """The name of the master that leads now, as the running masters report it (waits for an
        election if need be; ClusterError after timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for node in self._of("master"):
                if self._alive(node) and probe_master(node.addr("api"), timeout_s=0.5)[0]["role"] == "leader":
                    return node.name
            if time.monotonic() > deadline:
                raise ClusterError(f"no master leads after {timeout_s:g} s")
            time.sleep(0.05)

    def start(self) -> None:
        """Start masters, then chunkservers, then clients, each phase waiting until it is usable.

        On any failure, stop whatever was started and raise with the failing node's log tail.
        """
        running = [n.name for n in self.nodes if self._alive(n)]
        if running:
            raise ClusterError(f"a cluster is already running under {self.root} ({', '.join(running)}): stop it first")
        if self._of("prometheus"):
            _check_prometheus_available()
        self._check_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        layout = ({k + "s": len(self._of(k)) for k in KINDS} | {k: bool(self._of(k)) for k in SERVICES}
                  | {"port_base": self.port_base})
        _write_atomic(self.root / "cluster.json", json.dumps(layout, indent=2) + "\n")
        for node in self.nodes:
            self._prepare(node)
        try:
            for kind in KINDS + SERVICES:
                nodes = self._of(kind)
                if not nodes:  # clients=0: tests that use the client library only
                    continue
                for node in nodes:
                    self._spawn(node)
                self._wait_ready(nodes)
        except BaseException as exc:
            try:
                self.stop()
            except ClusterError as stop_exc:
                raise ClusterError(f"{exc}\nstopping the nodes already started failed too: {stop_exc}") from exc
            raise

    def stop(self) -> None:
        """Stop the services, then clients (SIGTERM: they flush and unmount), chunkservers, masters.

        A node that cannot be stopped does not keep the others running: they are stopped first,
        then the error is raised.
        """
        errors = []
        for kind in reversed(KINDS + SERVICES):
            nodes = self._of(kind)
            try:
                self._terminate(nodes)
                for node in nodes:
                    if kind == "client" and _mounted(node.mountpoint):
                        _unmount(node.mountpoint)
            except ClusterError as exc:
                errors.append(str(exc))
        if errors:
            raise ClusterError("; ".join(errors))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to a node; after SIGKILL, SIGTERM or SIGINT wait until it is gone.

        A client killed with SIGKILL leaves its mount behind, dead, as a real crash does; restart()
        and stop() detach it.
        """
        node = self.node(name)
        if not self._alive(node):
            raise ClusterError(f"{name} is not running")
        os.kill(node.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT) and self._wait_dead([node], self.stop_timeout_s):
            raise ClusterError(f"{name} is still running {self.stop_timeout_s:.0f} s after signal {sig}")

    def restart(self, name: str) -> None:
        """Stop one node (if it runs) and start it again with the same configuration and data."""
        node = self.node(name)
        self._terminate([node])
        if node.kind == "client" and _mounted(node.mountpoint):
            _unmount(node.mountpoint)
        self._spawn(node)
        self._wait_ready([node])

    def status(self) -> dict:
        """Process-level state of every node (the file system's own view is `mooseng status`)."""
        nodes = []
        for node in self.nodes:
            entry = {
                "name": node.name,
                "kind": node.kind,
                "pid": node.pid,
                "alive": self._alive(node),
                "ports": node.ports,
                "log": str(node.log_path),
                "url" if node.kind in SERVICES else "metrics_url": node.url,
            }
            if node.kind == "client":
                entry["mountpoint"] = str(node.mountpoint)
                entry["mounted"] = _mounted(node.mountpoint)
            nodes.append(entry)
        return {"root": str(self.root), "master_endpoints": self.master_endpoints, "nodes": nodes}

    # --- internals ----------------------------------------------------------------------------------

    def _of(self, kind: str) -> list[Node]:
        return [n for n in self.nodes if n.kind == kind]

    def _check_ports(self) -> None:
        for node in self.nodes:
            for name, port in node.ports.items():
                if not _port_free(port):
                    raise ClusterError(
                        f"port {port} ({node.name} {name}) on {HOST} is already in use: "
                        f"find the process with `lsof -i :{port}` and stop it (or `./demo-unified-cluster.sh stop`)"
                    )

    def _prepare(self, node: Node) -> None:
        """Create the node's directories and write its TOML file (the only source of its settings)."""
        node.dir.mkdir(parents=True, exist_ok=True)
        if node.kind == "master":
            data = node.dir / "data"
            data.mkdir(exist_ok=True)
            masters = self._of("master")
            peers = ",".join(f"{m.name}={m.addr('raft')}" for m in masters) if len(masters) > 1 else ""
            table = {
                "node_id": node.name,
                "listen": node.addr("api"),
                "raft_listen": node.addr("raft"),
                "metrics_listen": node.addr("metrics"),
                "raft_peers": peers,
                "data_dir": str(data),
            }
        elif node.kind == "prometheus":
            (node.dir / "tsdb").mkdir(exist_ok=True)
            _write_atomic(node.config_path, self._prometheus_config())
            return
        elif node.kind == "dashboard":
            masters = self._of("master")
            table = {
                "listen": node.addr("http"),
                "master_endpoints": self.master_endpoints,
                "master_metrics": [m.addr("metrics") for m in masters],
                "prometheus_url": self.service_url("prometheus") or "",
            }
        elif node.kind == "chunkserver":
            disks = [node.dir / f"disk{i}" for i in range(1, DISKS_PER_CHUNKSERVER + 1)]
            for disk in disks:
                disk.mkdir(exist_ok=True)
            table = {
                "server_id": node.index,
                "master_addrs": self.master_endpoints,
                "listen": node.addr("api"),
                "metrics_listen": node.addr("metrics"),
                "data_dirs": [str(d) for d in disks],
            }
        else:
            node.mountpoint.mkdir(exist_ok=True)
            table = {
                "master_endpoints": self.master_endpoints,
                "mount_point": str(node.mountpoint),
                "metrics_listen": node.addr("metrics"),
            }
        _write_atomic(node.config_path, _toml(node.kind, table))

    def _prometheus_config(self) -> str:
        """The Compose scrape config (same jobs, `node` labels and rules) for this cluster's addresses.

        JSON is YAML, so no YAML library is needed to write it.
        """
        jobs = {kind: [{"targets": [n.addr("metrics")], "labels": {"node": n.name}} for n in self._of(kind)]
                for kind in KINDS if self._of(kind)}
        jobs["prometheus"] = [{"targets": [self._of("prometheus")[0].addr("http")], "labels": {"node": "prometheus"}}]
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                       "external_labels": {"cluster": "mooseng"}},
            "rule_files": [str(RULES_DIR / "*.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": targets} for job, targets in jobs.items()],
        }
        return "# Written by mooseng.localcluster; rewritten on every start.\n" + json.dumps(config, indent=2) + "\n"

    def _command(self, node: Node) -> list[str]:
        """The daemon's command line; it names the config file, which is how _pid_is knows the process."""
        if node.kind == "prometheus":
            return [shutil.which("prometheus") or "prometheus", "--config.file", str(node.config_path),
                    f"--storage.tsdb.path={node.dir / 'tsdb'}", f"--web.listen-address={node.addr('http')}"]
        return [self.python, "-m", MODULES[node.kind], "-c", str(node.config_path)]

    def _env(self) -> dict[str, str]:
        """The caller's environment without MOOSENG_*, plus env_extra, plus the import path this
        module came from (so daemons run the same code as the caller, installed or not)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOOSENG_")}
        env.update(self.env_extra)
        package_parent = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, node: Node) -> None:
        """Start one daemon detached (own session), output appended to its log, pid file written."""
        if node.kind == "client" and _mounted(node.mountpoint):  # left behind by a crashed client
            _unmount(node.mountpoint)
        cmd = self._command(node)
        with open(node.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} localcluster: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env(), cwd=node.dir, start_new_session=True,
            )
        self._procs[node.name] = proc
        node.pid = proc.pid
        _write_atomic(node.pid_path, f"{proc.pid}\n")

    def _wait_ready(self, nodes: list[Node]) -> None:
        """Wait until the nodes are usable: masters answer `status`, chunkservers listen, clients have a
        live mount; after masters or chunkservers (re)start, until the master counts every running
        chunkserver alive (a restarted master serves no data before they register again)."""
        if not nodes:
            return
        for node in nodes:
            self._wait(nodes, node, *_readiness(node))
        running = [n for n in self._of("chunkserver") if self._alive(n)]
        if running and nodes[0].kind in ("master", "chunkserver"):
            watch = nodes + [n for n in running if n not in nodes]
            self._wait(watch, nodes[-1], lambda: self._alive_chunkservers() >= len(running),
                       f"the master to count {len(running)} chunkservers alive")

    def _wait(self, nodes: list[Node], subject: Node, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready()` until it holds; fail early if one of `nodes` exits, with that node's log tail."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            for node in nodes:
                if not self._alive(node):
                    code = self._procs[node.name].poll() if node.name in self._procs else None
                    how = f" with status {code}" if code is not None else ""
                    raise ClusterError(f"{node.name} exited{how} while waiting for {what}\n{_log_tail(node)}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {self.timeout_s:.0f} s waiting for {what}\n{_log_tail(subject)}")
            time.sleep(0.1)

    def _alive_chunkservers(self) -> int:
        """How many chunkservers the master counts alive (0 while it does not answer)."""
        client = MasterClient(self.master_endpoints, timeout_s=2.0)
        try:
            status = client.call("status")
        except FsError:
            return 0
        finally:
            client.close()
        return sum(1 for cs in status["chunkservers"] if cs["state"] == "alive")

    def _alive(self, node: Node) -> bool:
        """True if the node's recorded pid is running and is that node's daemon (not a reused pid)."""
        proc = self._procs.get(node.name)
        if proc is not None and proc.pid == node.pid:
            return proc.poll() is None
        return node.pid is not None and _pid_is(node.pid, node.config_path)

    def _terminate(self, nodes: list[Node]) -> None:
        """SIGTERM the nodes, SIGKILL those still running after stop_timeout_s, remove pid files."""
        running = [n for n in nodes if self._alive(n)]
        for node in running:
            _signal(node.pid, signal.SIGTERM)
        survivors = self._wait_dead(running, self.stop_timeout_s)
        for node in survivors:
            _signal(node.pid, signal.SIGKILL)
        if self._wait_dead(survivors, 10):
            raise ClusterError(f"could not stop {', '.join(n.name for n in survivors)}")
        for node in nodes:
            node.pid_path.unlink(missing_ok=True)
            self._procs.pop(node.name, None)

    def _wait_dead(self, nodes: list[Node], timeout: float) -> list[Node]:
        deadline = time.monotonic() + timeout
        alive = [n for n in nodes if self._alive(n)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [n for n in alive if self._alive(n)]
        return alive


def _readiness(node: Node) -> tuple[Callable[[], bool], str]:
    """How to tell that a node is up, and how to name what is awaited."""
    if node.kind == "master":
        answers = lambda: probe_master(node.addr("api"))[0]["role"] != "unreachable"  # noqa: E731
        return answers, f"{node.name} to answer on {node.addr('api')}"
    if node.kind == "chunkserver":
        return (lambda: _port_open(node.ports["api"])), f"{node.name} to listen on {node.addr('api')}"
    if node.kind == "dashboard":
        return (lambda: _http_ok(f"{node.url}api/status")), f"the dashboard to answer on {node.url}api/status"
    if node.kind == "prometheus":
        return (lambda: _http_ok(f"{node.url}-/ready")), f"Prometheus to be ready on {node.url}"
    return (lambda: _mount_live(node.mountpoint)), f"{node.name} to mount {node.mountpoint}"


# --- processes, ports, mounts, files ----------------------------------------------------------------


def _pid_is(pid: int, config_path: Path) -> bool:
    """Is `pid` a live (not zombie) process started with this config file?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and os.fsencode(config_path) in cmdline


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, sig)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _port_free(port: int) -> bool:
    """Can a daemon listen on HOST:port? SO_REUSEADDR as servers use it, so TIME_WAIT is no conflict."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except (OSError, ValueError):  # refused, timed out, HTTP error (URLError and HTTPError are OSErrors)
        return False


def _check_prometheus_available() -> None:
    if not shutil.which("prometheus"):
        raise ClusterError("the prometheus binary is missing: apt-get install -y prometheus (or start without it)")
    if not RULES_DIR.is_dir():
        raise ClusterError(f"no Prometheus rules at {RULES_DIR}: run from a repository checkout")


def _find_free_block(size: int) -> int:
    """A random run of `size` free ports; random so that concurrent test sessions rarely collide."""
    for _ in range(200):
        base = random.randrange(AUTO_RANGE[0], AUTO_RANGE[1] - size)
        if all(_port_free(p) for p in range(base, base + size)):
            return base
    raise ClusterError(f"no block of {size} free ports on {HOST} in {AUTO_RANGE[0]}-{AUTO_RANGE[1]}")


def _mounted(mountpoint: Path) -> bool:
    return any(target == mountpoint for _, target, _ in fuse_mounts())


def _mount_live(mountpoint: Path, timeout: float = 5.0) -> bool:
    """Mounted and answering: stat runs in a thread because a stuck FUSE daemon blocks it forever."""
    if not _mounted(mountpoint):
        return False
    result = []
    probe = threading.Thread(target=lambda: result.append(_stat_ok(mountpoint)), daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result and result[0])


def _stat_ok(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def _unmount(mountpoint: Path) -> None:
    """Lazily detach a FUSE mount whose daemon is gone (or would not unmount it)."""
    for cmd in (["fusermount", "-u", "-z"], ["fusermount3", "-u", "-z"], ["umount", "-l"]):
        if shutil.which(cmd[0]):
            subprocess.run(cmd + [str(mountpoint)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if not _mounted(mountpoint):
                return
    raise ClusterError(f"cannot unmount {mountpoint}: try `fusermount -u -z {mountpoint}` as root")


def _log_tail(node: Node, lines: int = 30) -> str:
    try:
        text = node.log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {node.log_path})"
    return f"--- last lines of {node.log_path} ---\n" + "\n".join(text)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a pid or config file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _toml(table: str, values: dict) -> str:
    """Serialize one flat table (str, int, list of str): all our configs need; JSON strings are TOML."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        return "[" + ", ".join(value(x) for x in v) + "]"

    body = "".join(f"{k} = {value(v)}\n" for k, v in values.items())
    return f"# Written by mooseng.localcluster; rewritten on every start.\n[{table}]\n{body}"


# --- command line -----------------------------------------------------------------------------------


def _print_status(status: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    print(f"{'NODE':<15} {'PID':>8}  {'STATE':<8} PORTS")
    for n in status["nodes"]:
        ports = " ".join(f"{k}={v}" for k, v in n["ports"].items())
        if "mountpoint" in n:
            ports += f"  {n['mountpoint']} ({'mounted' if n['mounted'] else 'not mounted'})"
        print(f"{n['name']:<15} {n['pid'] or '-':>8}  {'running' if n['alive'] else 'DOWN':<8} {ports}")


def _print_urls(cluster: LocalCluster) -> None:
    print("Master endpoints (MOOSENG_MASTER_ENDPOINTS):")
    print("  " + ",".join(cluster.master_endpoints))
    print("Metrics:")
    for node in cluster.nodes:
        if node.kind in KINDS:
            print(f"  {node.name:<15} {node.url}")
    print("Mount points:")
    for node in cluster.nodes:
        if node.kind == "client":
            print(f"  {node.name:<15} {node.mountpoint}")
    print("Monitoring:")
    print(f"  {'dashboard':<15} {cluster.service_url('dashboard') or 'not started (start with --dashboard)'}")
    print(f"  {'prometheus':<15} {cluster.service_url('prometheus') or 'not started (start with --prometheus)'}")
    print(f"  {'grafana':<15} not in local mode (not installable here; Docker mode runs it on :3000)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mooseng.localcluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "status", "urls", "endpoints", "cleanup"))
    parser.add_argument("--root", type=Path, required=True, help="directory holding every node's files")
    parser.add_argument("--masters", type=int, default=1)
    parser.add_argument("--chunkservers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--dashboard", action="store_true", help="also start the web dashboard")
    parser.add_argument("--prometheus", action="store_true", help="also start Prometheus (needs the binary)")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            cluster = LocalCluster(args.root, args.masters, args.chunkservers, args.clients,
                                   dashboard=args.dashboard, prometheus=args.prometheus)
            cluster.start()
            _print_status(cluster.status(), args.json)
        elif args.command in ("stop", "cleanup"):
            if (args.root / "cluster.json").exists():
                LocalCluster.open(args.root).stop()
                print(f"stopped the cluster under {args.root}")
            elif args.command == "stop":
                print(f"no cluster under {args.root}: nothing to stop")
            if args.command == "cleanup" and args.root.exists():
                busy = [str(t) for _, t, _ in fuse_mounts() if t.is_relative_to(args.root.resolve())]
                if busy:  # never rmtree through a live mount: it would delete the file system's files
                    raise ClusterError(f"still mounted, not removing {args.root}: {', '.join(busy)}")
                shutil.rmtree(args.root)
        elif args.command == "status":
            status = LocalCluster.open(args.root).status()
            _print_status(status, args.json)
            if not all(n["alive"] for n in status["nodes"]):
                return 1
        elif args.command == "urls":
            _print_urls(LocalCluster.open(args.root))
        else:
            print(",".join(LocalCluster.open(args.root).master_endpoints))
    except QuietError as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return exc.exitcode
    except ValueError as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
