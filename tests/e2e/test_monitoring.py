"""The monitoring stack against a live cluster: a real Prometheus (scraping the cluster with the
repository's rules) answers every Grafana panel's query under load, the web dashboard in headless
Chromium shows what `mooseng status --json` says, and a killed chunkserver fires the "chunkserver
down" and "under-goal chunks" alerts within their stated `for:` and leaves an ERROR line in the
master's log.

The tests share one cluster, Prometheus and dashboard and run in file order: the last one kills a
chunkserver.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import pytest
import yaml

from mooseng.localcluster import LocalCluster
from support.polling import wait_for

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "rules"
DASHBOARDS = REPO / "monitoring" / "grafana" / "dashboards"
HEARTBEAT_TIMEOUT_S = 2.0  # the cluster's chunkserver_timeout_s, short so the test is quick
SCRAPE_S = 1  # the test Prometheus scrapes and evaluates every second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


class Prometheus:
    """A real Prometheus on a free loopback port, scraping the cluster every second, with our rules."""

    def __init__(self, workdir: Path, cluster: LocalCluster):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        jobs = {}
        for node in cluster.nodes:
            jobs.setdefault(node.kind, []).append(
                {"targets": [node.addr("metrics")], "labels": {"node": node.name}}
            )  # fmt: skip
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s",
                       "scrape_timeout": f"{SCRAPE_S}s"},
            "rule_files": [str(RULES / "*.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": targets} for job, targets in jobs.items()],
        }))  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def query(self, expr: str) -> list[dict]:
        reply = get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Load:
    """Small file traffic through the mount in a thread: writes, reads, stats, under class `fast`
    (3 copies on 3 chunkservers, so losing one leaves chunks under goal that cannot be healed)."""

    def __init__(self, top: Path):
        self.top = top
        self.stop_event = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "load thread did not stop"
        if self.error:
            raise self.error

    def _run(self) -> None:
        deadline = time.monotonic() + 240  # bounded even if the test never stops it
        try:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                path = self.top / f"f{self.rounds % 6}"
                data = os.urandom(1 << 20)
                path.write_bytes(data)
                with open(path, "rb") as f:  # drop the cached pages, so the read reaches the chunkservers
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    assert f.read() == data
                os.listdir(self.top)
                self.rounds += 1
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc


def cli_status(master: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "mooseng.cli.main", "--master", master, "status", "--json"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- fixtures: one cluster, Prometheus and dashboard for the module ----------------------------------


@pytest.fixture(scope="module")
def cluster(module_cluster_factory):
    c = module_cluster_factory(masters=1, chunkservers=3, clients=1,
                               env_extra={"MOOSENG_CHUNKSERVER_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S)})
    top = c.mountpoint(1) / "load"
    top.mkdir()
    setclass = subprocess.run(
        [sys.executable, "-m", "mooseng.cli.main", "--master", c.master_endpoints[0], "setclass", "fast", str(top)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert setclass.returncode == 0, setclass.stderr
    (top / "first").write_bytes(os.urandom(1 << 20))  # each test can count on chunks in class fast
    return c


@pytest.fixture(scope="module")
def prometheus(cluster, tmp_path_factory):
    if not shutil.which("prometheus"):
        pytest.skip("prometheus is missing (apt-get install -y prometheus)")
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), cluster)
    try:
        wait_for("prometheus to be ready", prom.ready, 60)
        wait_for("every target to be scraped", lambda: len(prom.query("up == 1")) == len(cluster.nodes), 60)
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def dashboard(cluster, prometheus, tmp_path_factory):
    """mooseng-dashboard as its own process, configured by a TOML file, as Compose runs it."""
    workdir = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    master = cluster.node("master-1")
    config = workdir / "dashboard.toml"
    config.write_text(
        "[dashboard]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'master_endpoints = ["{master.addr("api")}"]\n'
        f'master_metrics = ["{master.addr("metrics")}"]\n'
        "sample_interval_s = 0.5\n"
        f'prometheus_url = "{prometheus.url}"\n'
        'grafana_url = "http://grafana.example:3000"\n'
    )
    log = workdir / "dashboard.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOSENG_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mooseng.dashboard.server", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, f"dashboard exited:\n{log.read_text()}"
        try:
            return urllib.request.urlopen(url + "/api/status", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for("the dashboard to answer", up, 60)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "Traceback" not in log.read_text()


# --- Grafana panels ---------------------------------------------------------------------------------


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, query with Grafana's variables substituted) for every target."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "30s").replace("$__interval", "5s")
                expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # "All" of a multi-value variable
                queries.append((path.stem, panel["title"], expr))
    return queries


def test_every_grafana_panel_query_returns_data_under_load(cluster, prometheus):
    queries = panel_queries()
    assert len(queries) >= 30
    with Load(cluster.mountpoint(1) / "load") as load:
        # Enough scrapes for 30 s rate windows to hold several samples of traffic.
        wait_for("load to run", lambda: load.rounds >= 10, 60)
        time.sleep(20)
        empty = []
        for dashboard, title, expr in queries:
            values = [float(r["value"][1]) for r in prometheus.query(expr)]
            if not any(v == v for v in values):  # no series, or only NaN (a quantile of nothing)
                empty.append((dashboard, title, expr))
    assert not empty, "panels without data:\n" + "\n".join(map(str, empty))
    # The load shows up: bytes written and read by the client, operations on every daemon.
    assert max(prometheus_value(prometheus, 'rate(mooseng_bytes_written_total{job="client"}[30s])')) > 0
    assert max(prometheus_value(prometheus, 'rate(mooseng_bytes_read_total{job="client"}[30s])')) > 0
    for job in ("master", "chunkserver", "client"):
        assert max(prometheus_value(prometheus, f'sum(rate(mooseng_operation_duration_seconds_count{{job="{job}"}}[30s]))')) > 0


def prometheus_value(prometheus: Prometheus, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in prometheus.query(expr)] or [0.0]


# --- web dashboard in headless Chromium ---------------------------------------------------------------


def png_is_blank(png: bytes) -> bool:
    """True if the screenshot is (nearly) one colour: the scanlines of a uniform image, filtered
    or not, hold only a few distinct byte values; a page with text, tables and charts holds most."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width = struct.unpack(">I", body[:4])[0]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width == 0 or len(set(raw)) < 32


def chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing (pip install selenium)")
    for tool in ("chromium", "chromedriver"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def page_view(driver) -> dict:
    """What the page shows, read from its DOM in one script run: the page redraws every poll, so
    element handles kept across several WebDriver calls can go stale between them."""
    return driver.execute_script(
        """
        const rows = (sel) => Array.from(document.querySelectorAll(sel));
        const text = (id) => document.getElementById(id).innerText.trim();
        const classes = {};
        for (const r of rows("#chunk-states tr.sclass")) {
            const cells = r.querySelectorAll("td");
            classes[r.dataset.sclass] = parseInt(cells[cells.length - 1].innerText, 10);
        }
        return {
            masters: rows("#masters tr.master").map((r) => [r.dataset.endpoint, r.dataset.role]),
            count_masters: text("count-masters"),
            alive: text("count-chunkservers-alive"),
            down: text("count-chunkservers-down"),
            chunks: text("count-chunks"),
            servers: rows("#chunkservers tr.server").map((r) => [r.dataset.serverId, r.dataset.state]),
            class_totals: classes,
        };
        """
    )


def expected_view(status: dict) -> dict:
    alive = sum(1 for s in status["chunkservers"] if s["state"] == "alive")
    return {
        "masters": [[m["endpoint"], m["role"]] for m in status["masters"]],
        "count_masters": str(len(status["masters"])),
        "alive": str(alive),
        "down": str(len(status["chunkservers"]) - alive),
        "chunks": str(status["chunks"]["total"]),
        "servers": [[str(s["server_id"]), s["state"]] for s in status["chunkservers"]],
        "class_totals": {name: sum(states.values()) for name, states in status["chunks"]["by_class"].items()},
    }


def test_dashboard_in_chromium_matches_mooseng_status(cluster, dashboard, tmp_path):
    from selenium.webdriver.common.by import By

    driver = chromium()
    try:
        driver.get(dashboard + "/")
        wait_for("the page to load data", lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"), 30)
        expected = expected_view(cli_status(cluster.master_endpoints[0]))
        assert int(expected["chunks"]) > 0 and expected["alive"] == "3"
        # The page redraws from samples taken every 0.5 s: it converges on what the CLI says.
        deadline = time.monotonic() + 20
        while (shown := page_view(driver)) != expected and time.monotonic() < deadline:
            time.sleep(0.5)
            expected = expected_view(cli_status(cluster.master_endpoints[0]))
        assert shown == expected
        links = {a: driver.find_element(By.ID, f"link-{a}").get_attribute("href") for a in ("prometheus", "grafana")}
        assert links["prometheus"].rstrip("/") == prometheus_url_of(dashboard)
        assert links["grafana"].startswith("http://grafana.example:3000")
        # Live: under traffic the page's rates and the charts' history show the writes.
        with Load(cluster.mountpoint(1) / "load"):
            wait_for("the page to show write traffic",
                     lambda: written_per_s(driver.find_element(By.ID, "rates").text) > 0, 30)  # fmt: skip
            time.sleep(3)
        points = get_json(dashboard + "/api/history")["points"]
        assert any(p["bytes_written_per_s"] > 0 for p in points) and any(p["ops_per_s"] > 0 for p in points)
        time.sleep(2.5)  # one more poll of the page, so the screenshot has the charts with the traffic
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert not png_is_blank(shot.read_bytes()), f"blank screenshot {shot}"
        print(f"screenshot: {shot}")
    finally:
        driver.quit()


def written_per_s(rates_text: str) -> float:
    """Bytes per second in the page's 'now: read X/s, written Y/s, ...' line (0 if absent)."""
    match = re.search(r"written ([\d.]+) (B|KiB|MiB|GiB)/s", rates_text)
    if not match:
        return 0.0
    return float(match[1]) * 1024 ** ("B", "KiB", "MiB", "GiB").index(match[2])


def prometheus_url_of(dashboard: str) -> str:
    return get_json(dashboard + "/api/status")["links"]["prometheus"].rstrip("/")


# --- a killed chunkserver: alerts and the master's log -------------------------------------------------


def rule_for_seconds(alert: str) -> float:
    """The `for:` an alert states in the rules file, in seconds."""
    for path in RULES.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == alert:
                    value = rule["for"]
                    return float(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]
    raise AssertionError(f"no alert {alert}")


def test_killed_chunkserver_fires_alerts_in_time_and_logs_an_error(cluster, prometheus, dashboard):
    # Chunks in class fast are on all three chunkservers (written by the load above).
    assert prometheus.query('mooseng_chunks{state="stable"} > 0'), "no stable chunks to lose a copy of"
    alerts = {"MooseNGChunkserverDown": None, "MooseNGChunksUndergoal": None}
    # Bound = its for: + the heartbeat timeout + a scrape and two rule evaluations (recording,
    # then alert) + 10 s for a loaded, shared machine.
    bounds = {a: rule_for_seconds(a) + HEARTBEAT_TIMEOUT_S + 3 * SCRAPE_S + 10 for a in alerts}
    cluster.kill("chunkserver-3")
    killed = time.monotonic()
    deadline = killed + max(bounds.values()) + 30  # look longer, to report how late a late alert was
    while None in alerts.values() and time.monotonic() < deadline:
        firing = {a["labels"]["alertname"] for a in get_json(f"{prometheus.url}/api/v1/alerts")["data"]["alerts"]
                  if a["state"] == "firing"}  # fmt: skip
        for name in alerts:
            if alerts[name] is None and name in firing:
                alerts[name] = time.monotonic() - killed
        time.sleep(0.5)
    print("alerts fired after (s):", alerts, "bounds (s):", bounds)
    for name, after in alerts.items():
        assert after is not None, f"{name} did not fire within {deadline - killed:.0f} s"
        assert rule_for_seconds(name) <= after <= bounds[name], (name, after, bounds[name])

    # The dashboard's API shows it too.
    status = get_json(dashboard + "/api/status")
    assert [s["state"] for s in status["chunkservers"]] == ["alive", "alive", "down"]

    # `grep -i error` on the master's log finds the event, one line, with the node id.
    master = cluster.node("master-1")
    grep = subprocess.run(["grep", "-i", "error", str(master.log_path)], capture_output=True, text=True)
    lines = [line for line in grep.stdout.splitlines() if "chunkserver 3" in line and "down" in line]
    assert len(lines) == 1, grep.stdout
    assert " ERROR node=master-1 " in lines[0]
