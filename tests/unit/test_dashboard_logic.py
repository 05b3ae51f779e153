"""The dashboard's pure parts: counter rates and history, the JSON API's parameter checks, parsing a
master's /metrics, merging Raft status, and its configuration keys."""

from __future__ import annotations

import pytest

from mooseng import config
from mooseng.dashboard import api
from mooseng.dashboard.collector import merge_raft, parse_counters, rates_view, unavailable
from mooseng.dashboard.rates import CounterRates, History
from mooseng.errors import ConfigError

# --- rates and history ----------------------------------------------------------------------------


def test_rates_need_two_samples_and_are_per_second():
    rates = CounterRates()
    assert rates.update(10.0, {"bytes_written": 100, "ops": 5}) is None
    assert rates.update(12.0, {"bytes_written": 300, "ops": 9}) == {"bytes_written": 100.0, "ops": 2.0}


def test_a_counter_that_went_down_has_no_rate_for_that_interval():
    rates = CounterRates()
    rates.update(0.0, {"a": 50, "b": 1})
    assert rates.update(1.0, {"a": 10, "b": 3}) == {"b": 2.0}  # a restarted: no negative rate
    assert rates.update(2.0, {"a": 20, "b": 3}) == {"a": 10.0, "b": 0.0}


def test_a_new_counter_or_a_clock_going_back_gives_no_rate():
    rates = CounterRates()
    rates.update(5.0, {"a": 1})
    assert rates.update(6.0, {"a": 2, "new": 7}) == {"a": 1.0}
    assert rates.update(6.0, {"a": 3}) is None
    rates.reset()
    assert rates.update(7.0, {"a": 4}) is None


def test_history_keeps_the_last_points_oldest_first():
    history = History(3)
    for i in range(5):
        history.add({"t": i})
    assert history.size == 3
    assert history.last(10) == [{"t": 2}, {"t": 3}, {"t": 4}]
    assert history.last(2) == [{"t": 3}, {"t": 4}]
    assert history.last(0) == []


def test_rates_view_names_the_source_and_lists_only_active_ops():
    view = rates_view({"bytes_read": 1.0, "bytes_written": 2.0, "ops": 3.0, "op:lookup": 3.0, "op:mkdir": 0.0}, "m:1")
    assert view == {"available": True, "source": "m:1", "bytes_read_per_s": 1.0, "bytes_written_per_s": 2.0,
                    "ops_per_s": 3.0, "ops_by_op": {"lookup": 3.0}}  # fmt: skip
    first = rates_view(None, "m:1")
    assert first["available"] is False and first["reason"] and first["source"] == "m:1"


# --- /metrics parsing and Raft merge ----------------------------------------------------------------

METRICS = """\
# TYPE mooseng_raft_leader gauge
mooseng_raft_leader 1.0
# TYPE mooseng_client_operations_total counter
mooseng_client_operations_total{op="lookup"} 7.0
mooseng_client_operations_total{op="mknod"} 2.0
# TYPE mooseng_bytes_read_total counter
mooseng_bytes_read_total 4096.0
# TYPE mooseng_bytes_written_total counter
mooseng_bytes_written_total 8192.0
# TYPE mooseng_chunks gauge
mooseng_chunks{state="stable"} 3.0
"""


def test_parse_counters_reads_the_leader_flag_bytes_and_ops():
    leader, counters = parse_counters(METRICS)
    assert leader is True
    assert counters == {"bytes_read": 4096.0, "bytes_written": 8192.0, "ops": 9.0, "op:lookup": 7.0, "op:mknod": 2.0}
    assert parse_counters(METRICS.replace("mooseng_raft_leader 1.0", "mooseng_raft_leader 0.0"))[0] is False


def test_merge_raft_adds_term_and_lag_and_says_when_raft_status_is_missing():
    masters = [{"endpoint": "a:1", "role": "leader"}, {"endpoint": "b:1", "role": "follower"},
               {"endpoint": "c:1", "role": "unreachable"}]  # fmt: skip
    raft = {
        "a:1": {"available": True, "role": "leader", "term": 4, "commit": 100, "applied": 100, "leader_id": "m1"},
        "b:1": {"available": True, "role": "follower", "term": 4, "commit": 90, "applied": 80, "leader_id": "m1"},
        "c:1": unavailable("raft_status: cannot connect"),
    }
    merged = merge_raft(masters, raft)
    assert [(m["role"], m.get("term"), m.get("applied"), m.get("lag")) for m in merged] == [
        ("leader", 4, 100, 0), ("follower", 4, 80, 20), ("unreachable", None, None, None),
    ]  # fmt: skip
    assert merged[1]["leader_id"] == "m1"
    assert merged[2]["raft"] == {"available": False, "reason": "raft_status: cannot connect"}


# --- the JSON API --------------------------------------------------------------------------------------


class FakeSampler:
    interval_s = 2.0
    history_size = 5

    def __init__(self, latest=None):
        self._latest = latest

    def latest(self):
        return self._latest

    def history(self, n):
        return [{"t": i} for i in range(self.history_size)][-n:]


def test_status_is_the_latest_sample():
    assert api.handle("/api/status", "", FakeSampler({"masters": []})) == (200, {"masters": []})


def test_status_before_the_first_sample_is_503():
    assert api.handle("/api/status", "", FakeSampler()) == (503, {"error": "no sample of the cluster yet"})


def test_history_takes_points_within_the_bound():
    assert api.handle("/api/history", "points=2", FakeSampler()) == (200, {"interval_s": 2.0, "points": [{"t": 3}, {"t": 4}]})
    assert len(api.handle("/api/history", "", FakeSampler())[1]["points"]) == 5


@pytest.mark.parametrize("path, query, status, message", [
    ("/api/status", "verbose=1", 400, "unknown parameter 'verbose' for /api/status (it takes none)"),
    ("/api/history", "point=3", 400, "unknown parameter 'point' for /api/history (allowed: points)"),
    ("/api/history", "points=0", 400, "points = '0': expected an integer from 1 to 5"),
    ("/api/history", "points=6", 400, "points = '6': expected an integer from 1 to 5"),
    ("/api/history", "points=-1", 400, "points = '-1': expected an integer from 1 to 5"),
    ("/api/history", "points=%C2%B2", 400, "points = '²': expected an integer from 1 to 5"),
    ("/api/history", "points=1&points=2", 400, "parameter 'points' given 2 times"),
    ("/api/history", "points", 400, "malformed query string: bad query field: 'points'"),
    ("/api/nodes", "", 404, "no such endpoint: /api/nodes (endpoints: /api/status, /api/history)"),
])  # fmt: skip
def test_bad_requests_get_one_line_errors(path, query, status, message):
    assert api.handle(path, query, FakeSampler({})) == (status, {"error": message})


# --- configuration -------------------------------------------------------------------------------------


def test_dashboard_defaults_bind_to_loopback():
    cfg = config.load("dashboard", env={})
    assert cfg.listen == "127.0.0.1:8080"
    assert cfg.master_endpoints == ["127.0.0.1:9421"] and cfg.master_metrics == ["127.0.0.1:9423"]
    assert cfg.prometheus_url == "" and cfg.grafana_url == ""


def test_dashboard_settings_from_the_environment():
    cfg = config.load("dashboard", env={"MOOSENG_LISTEN": "0.0.0.0:8080", "MOOSENG_MASTER_ENDPOINTS": "m1:9421,m2:9431",
                                        "MOOSENG_PROMETHEUS_URL": "http://localhost:9090"})  # fmt: skip
    assert cfg.listen == "0.0.0.0:8080"
    assert cfg.master_endpoints == ["m1:9421", "m2:9431"]
    assert cfg.prometheus_url == "http://localhost:9090"


@pytest.mark.parametrize("env, message", [
    ({"MOOSENG_LISTEN": "nowhere"}, "config error: listen = 'nowhere': "),
    ({"MOOSENG_GRAFANA_URL": "grafana:3000"}, "config error: grafana_url = 'grafana:3000': expected an http:// or https:// URL"),
    ({"MOOSENG_SAMPLE_INTERVAL_S": "0"}, "config error: sample_interval_s = '0': must be >= 0.2"),
])  # fmt: skip
def test_bad_dashboard_settings_name_key_and_value(env, message):
    with pytest.raises(ConfigError) as err:
        config.load("dashboard", env=env)
    assert str(err.value).startswith(message)
