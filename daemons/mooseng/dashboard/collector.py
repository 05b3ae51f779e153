"""Samples the cluster for the dashboard: the masters' `status` (as `mooseng status --json` shows
it), their `raft_status`, the storage classes, and rates from the leader's /metrics counters.

Whatever cannot be read becomes an `available: false` entry with the reason, never an exception:
the page shows what is known and says what is not.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from mooseng import rpc
from mooseng.cli.main import Master, cmd_status
from mooseng.dashboard.rates import CounterRates, History
from mooseng.errors import FsError, QuietError

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("bytes_read_per_s", "bytes_written_per_s", "ops_per_s")
# Fields of a raft_status reply copied onto the master's entry.
RAFT_FIELDS = ("term", "commit", "applied", "leader_id", "log_entries", "snapshot_index")


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def parse_counters(text: str) -> tuple[bool, dict[str, float]]:
    """(is this master the leader, its counters) from a master's /metrics text.

    Counters: bytes_read, bytes_written, ops (every meta op) and op:<name> per op.
    """
    leader = False
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mooseng_raft_leader":
                leader = s.value == 1
            elif s.name in ("mooseng_bytes_read_total", "mooseng_bytes_written_total"):
                counters[s.name[len("mooseng_"):-len("_total")]] = s.value
            elif s.name == "mooseng_client_operations_total":
                counters["ops"] = counters.get("ops", 0.0) + s.value
                counters["op:" + s.labels.get("op", "")] = s.value
    return leader, counters


def rates_view(rates: dict[str, float] | None, source: str) -> dict:
    """The `rates` entry of /api/status from CounterRates output."""
    if rates is None:
        return unavailable("first sample of this source: rates need two") | {"source": source}
    return {
        "available": True,
        "source": source,
        "bytes_read_per_s": rates.get("bytes_read"),
        "bytes_written_per_s": rates.get("bytes_written"),
        "ops_per_s": rates.get("ops"),
        "ops_by_op": {k[3:]: v for k, v in sorted(rates.items()) if k.startswith("op:") and v > 0},
    }


def merge_raft(masters: list[dict], raft: dict[str, dict]) -> list[dict]:
    """Each master's summary with its Raft term, commit and applied index and lag (the highest
    commit index of the group minus what this master applied); `raft` maps endpoint -> the
    raft_status reply with available=True, or unavailable(...)."""
    commits = [r["commit"] for r in raft.values() if r.get("available") and isinstance(r.get("commit"), int)]
    merged = []
    for m in masters:
        r = raft.get(m["endpoint"], unavailable("not asked"))
        entry = dict(m, raft=r)
        if r.get("available"):
            entry.update({k: r[k] for k in RAFT_FIELDS if k in r})
            applied = r.get("applied")
            entry["lag"] = max(commits) - applied if commits and isinstance(applied, int) else None
        merged.append(entry)
    return merged


class Collector:
    """One sample of the cluster per call to sample(); keeps the previous counters for the rates."""

    def __init__(self, cfg, clock: Callable[[], float] = time.time, timeout_s: float = 2.0):
        self._endpoints = cfg.master_endpoints
        self._metrics = cfg.master_metrics
        self._timeout_s = timeout_s
        self._master = Master(cfg.master_endpoints, timeout_s)
        self._clock = clock
        self._rates = CounterRates()
        self._source: str | None = None
        self.links = {"prometheus": cfg.prometheus_url or None, "grafana": cfg.grafana_url or None}

    def close(self) -> None:
        self._master.close()

    def sample(self) -> dict:
        now = self._clock()
        snapshot = {"sampled_at": now, "links": self.links}
        try:
            status, _ = cmd_status(self._master, None)
            snapshot["cluster"] = {"available": True}
        except (QuietError, FsError) as exc:
            status = {"masters": [{"endpoint": e, "role": "unreachable"} for e in self._endpoints],
                      "chunkservers": [], "chunks": {"total": 0, "by_class": {}}}
            snapshot["cluster"] = unavailable(str(exc))
        raft = {e: self._raft_status(e) for e in self._endpoints}
        status["masters"] = merge_raft(status["masters"], raft)
        snapshot.update(status)
        snapshot["classes"] = self._classes() if snapshot["cluster"]["available"] else snapshot["cluster"]
        snapshot["rates"] = self._sample_rates(now)
        return snapshot

    def _raft_status(self, endpoint: str) -> dict:
        client = rpc.Client(endpoint, timeout_s=self._timeout_s, connect_timeout_s=self._timeout_s)
        try:
            reply, _ = client.call("raft_status", {})
        except rpc.RpcError as exc:
            return unavailable(f"raft_status: {exc}")
        finally:
            client.close()
        if not isinstance(reply, dict):
            return unavailable(f"raft_status: unexpected reply {reply!r:.80}")
        return {"available": True, **reply}

    def _classes(self) -> list | dict:
        try:
            return self._master.call("classes")
        except (QuietError, FsError) as exc:
            return unavailable(f"classes: {exc}")

    def _sample_rates(self, now: float) -> dict:
        """Rates from the leader's counters; from the first master that answers if none says leader."""
        answers = []
        for addr in self._metrics:
            try:
                with urllib.request.urlopen(f"http://{addr}/metrics", timeout=self._timeout_s) as reply:
                    leader, counters = parse_counters(reply.read().decode())
            except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
                log.debug("metrics of %s unreadable: %s", addr, exc)
                continue
            answers.append((not leader, addr, counters))
        if not answers:
            self._rates.reset()
            self._source = None
            return unavailable(f"no master metrics endpoint answered ({', '.join(self._metrics)})")
        _, source, counters = min(answers, key=lambda a: a[0])
        if source != self._source:
            self._rates.reset()
            self._source = source
        return rates_view(self._rates.update(now, counters), source)


class Sampler:
    """Runs the collector every interval in a thread; the HTTP handlers read `latest`."""

    def __init__(self, collector: Collector, interval_s: float, history_points: int):
        self.collector = collector
        self.interval_s = interval_s
        self._history = History(history_points)
        self._lock = threading.Lock()
        self._latest: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._sample()  # the page has data from its first request on
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)  # a sample waiting on dead masters may take that long
        self.collector.close()

    def latest(self) -> dict:
        with self._lock:
            return self._latest

    def history(self, n: int) -> list[dict]:
        with self._lock:
            return self._history.last(n)

    @property
    def history_size(self) -> int:
        return self._history.size

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            snapshot = self.collector.sample()
        except Exception:  # a bug must not stop the sampling, and the log gets it on one line
            log.exception("sampling the cluster failed")
            return
        rates = snapshot["rates"]
        with self._lock:
            self._latest = snapshot
            if rates["available"]:
                self._history.add({"t": snapshot["sampled_at"]} | {k: rates[k] for k in HISTORY_FIELDS})
