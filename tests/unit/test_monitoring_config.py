"""The monitoring files as shipped: promtool accepts the Prometheus config and rules, the alert
rules behave as their unit tests say, every alert the issue names exists with a stated `for:`, and
the Grafana dashboards are what build_dashboards.py makes, wired to the provisioned datasource."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
PROM = MONITORING / "prometheus"
GRAFANA = MONITORING / "grafana"


def promtool(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("promtool"):
        pytest.skip("promtool is missing (apt-get install -y prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=PROM)


def alert_rules() -> dict[str, dict]:
    rules = {}
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[rule["alert"]] = rule
    return rules


def test_promtool_checks_the_config_and_its_rule_files():
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 rule files found" in proc.stdout + proc.stderr


def test_promtool_checks_the_rules():
    proc = promtool("check", "rules", *sorted(str(p) for p in (PROM / "rules").glob("*.yml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_pass_their_promtool_unit_tests():
    proc = promtool("test", "rules", "tests/alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_rule_is_caught(tmp_path):
    """The checks above can fail: promtool refuses a rule with a bad expression."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(\n        for: 1m\n")
    assert promtool("check", "rules", str(bad)).returncode != 0


def test_every_alert_the_issue_asks_for_exists_and_states_its_for():
    rules = alert_rules()
    for name in ("MooseNGNoLeader", "MooseNGLeaderChanges", "MooseNGChunkserverDown", "MooseNGChunksUndergoal",
                 "MooseNGChunksMissing", "MooseNGDiskDamaged", "MooseNGDiskSpaceLow", "MooseNGCrcErrors",
                 "MooseNGInvalidRequests", "MooseNGReplicationFailing"):  # fmt: skip
        assert name in rules, name
    for name, rule in rules.items():
        assert rule.get("for"), f"{name} states no for:"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


def test_compose_scrape_config_covers_the_seed_topology():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert targets["master"] == ["master-1:9423", "master-2:9433", "master-3:9443"]
    assert targets["chunkserver"] == ["chunkserver-1:9425", "chunkserver-2:9455", "chunkserver-3:9465"]
    assert targets["client"] == ["client-1:9427", "client-2:9437", "client-3:9447"]


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_json_is_what_the_builder_writes():
    builder = load_builder()
    assert sorted(builder.DASHBOARDS) == ["health", "performance", "storage"]
    for name in builder.DASHBOARDS:
        committed = (GRAFANA / "dashboards" / f"{name}.json").read_text()
        assert committed == builder.render(name), f"run python monitoring/grafana/build_dashboards.py ({name})"


def test_dashboards_use_the_provisioned_datasource_and_every_panel_has_queries():
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "mooseng.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    uids = set()
    for path in (GRAFANA / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        assert board["panels"], path.name
        for panel in board["panels"]:
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid
                assert target["expr"].strip()
    assert uids == {"mooseng-health", "mooseng-performance", "mooseng-storage"}
