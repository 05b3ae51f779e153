"""Writes the three Grafana dashboards (dashboards/*.json) from the panel lists below.

Run it after changing a panel: `python monitoring/grafana/build_dashboards.py`. The JSON files are
committed because Grafana provisions them as they are; tests/unit/test_monitoring_config.py checks
that they match this script, and tests/e2e/test_monitoring.py runs every panel's query against a
real Prometheus scraping a live cluster.

Queries use the job names of prometheus/prometheus.yml (master, chunkserver, client). A
cluster-wide number is the leader's: `and on (instance) (mooseng_raft_leader == 1)` drops the
followers' series, whose chunkserver registry is empty.
"""

import json
import sys
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "mooseng-prometheus"}
LEADER = 'and on (instance) (mooseng_raft_leader{job="master"} == 1)'
RATE = "$__rate_interval"


def target(expr: str, legend: str = "", ref: str = "A") -> dict:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(kind: str, title: str, targets: list[dict], unit: str = "short", description: str = "") -> dict:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
    }


def variable(name: str, query: str, label: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "vars"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard(uid: str, title: str, panels: list[dict], variables: list[dict]) -> dict:
    laid_out = []
    for i, p in enumerate(panels):  # two columns of 12 x 8
        laid_out.append(dict(p, id=i + 1, gridPos={"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}))
    return {
        "uid": uid,
        "title": title,
        "tags": ["mooseng"],
        "timezone": "browser",
        "schemaVersion": 38,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {"title": t, "type": "link", "url": f"/d/{u}"}
            for u, t in (("mooseng-health", "Health"), ("mooseng-performance", "Performance"), ("mooseng-storage", "Storage"))
            if u != uid
        ],
        "panels": laid_out,
    }


def health() -> dict:
    return dashboard("mooseng-health", "MooseNG Health", [
        panel("stat", "Raft leader", [target('mooseng_raft_leader{job="master"} == 1', "{{instance}}")],
              description="The master that reports itself leader (none: no leader)"),
        panel("stat", "Masters up", [target('sum(up{job="master"})', "up"),
                                     target('count(up{job="master"})', "configured")]),
        panel("timeseries", "Raft term", [target('mooseng_raft_term{job="master"}', "{{instance}}")]),
        panel("timeseries", "Raft commit and applied index", [
            target('mooseng_raft_commit_index{job="master"}', "commit {{instance}}"),
            target('mooseng_raft_applied_index{job="master"}', "applied {{instance}}"),
        ]),
        panel("timeseries", "Raft elections and leader changes", [
            target(f'increase(mooseng_raft_elections_total{{job="master"}}[{RATE}])', "elections {{instance}}"),
            target(f'increase(mooseng_raft_leader_changes_total{{job="master"}}[{RATE}])', "leader changes {{instance}}"),
        ]),
        panel("timeseries", "Metadata log index", [target('mooseng_metadata_log_index{job="master"}', "{{instance}}")]),
        panel("stat", "Chunkservers (leader's view)", [
            target(f'sum by (state) (mooseng_chunkservers{{job="master"}} {LEADER})', "{{state}}"),
        ]),
        panel("timeseries", "Daemons answering scrapes", [target("sum by (job) (up)", "{{job}}")]),
        panel("timeseries", "Chunk states per class", [
            target(f'sum by (sclass, state) (mooseng_chunks{{job="master", sclass=~"$sclass"}} {LEADER})',
                   "{{sclass}} {{state}}"),
        ]),
        panel("stat", "Chunks", [target(f'sum(mooseng_chunks_total{{job="master"}} {LEADER})', "chunks")]),
        panel("stat", "Disks by state (leader's view)", [
            target(f'sum by (state) (mooseng_disks{{job="master"}} {LEADER})', "{{state}}"),
        ]),
        panel("stat", "Damaged disks", [target('sum(mooseng_disk_damaged{job="chunkserver"})', "damaged")]),
        panel("timeseries", "Replication", [
            target(f'rate(mooseng_replication_chunks_total{{job="master"}}[{RATE}])', "chunks/s"),
            target(f'rate(mooseng_replication_failures_total{{job="master"}}[{RATE}])', "failures/s"),
        ]),
        panel("timeseries", "Replication bytes", [
            target(f'rate(mooseng_replication_bytes_total{{job="master"}}[{RATE}])', "{{instance}}"),
        ], unit="Bps"),
        panel("timeseries", "Scrubbing", [
            target(f'rate(mooseng_scrub_bytes_total{{job="chunkserver"}}[{RATE}])', "{{instance}}"),
        ], unit="Bps"),
        panel("timeseries", "Integrity errors", [
            target(f'increase(mooseng_crc_errors_total{{job="chunkserver"}}[{RATE}])', "CRC {{instance}}"),
            target(f'increase(mooseng_scrub_errors_total{{job="chunkserver"}}[{RATE}])', "scrub {{instance}}"),
        ]),
    ], [variable("sclass", "label_values(mooseng_chunks, sclass)", "Storage class")])


def performance() -> dict:
    sel = 'job=~"$job", instance=~"$instance"'
    panels = [
        panel("timeseries", "Bytes written per daemon", [
            target(f'rate(mooseng_bytes_written_total{{job=~"chunkserver|client", instance=~"$instance"}}[{RATE}])',
                   "{{job}} {{instance}}"),
        ], unit="Bps"),
        panel("timeseries", "Bytes read per daemon", [
            target(f'rate(mooseng_bytes_read_total{{job=~"chunkserver|client", instance=~"$instance"}}[{RATE}])',
                   "{{job}} {{instance}}"),
        ], unit="Bps"),
        panel("timeseries", "Cluster throughput (chunkserver heartbeats)", [
            target(f'sum(rate(mooseng_bytes_written_total{{job="master"}}[{RATE}]) {LEADER})', "written"),
            target(f'sum(rate(mooseng_bytes_read_total{{job="master"}}[{RATE}]) {LEADER})', "read"),
        ], unit="Bps"),
        panel("timeseries", "Operations per second per daemon", [
            target(f'sum by (job, instance) (rate(mooseng_operation_duration_seconds_count{{{sel}}}[{RATE}]))',
                   "{{job}} {{instance}}"),
        ], unit="ops"),
        panel("timeseries", "Client file-system operations by op", [
            target(f'sum by (op) (rate(mooseng_client_operations_total{{job="client", instance=~"$instance"}}[{RATE}])) > 0',
                   "{{op}}"),
        ], unit="ops"),
        panel("timeseries", "Master metadata operations by op", [
            target(f'sum by (op) (rate(mooseng_client_operations_total{{job="master", instance=~"$instance"}}[{RATE}])) > 0',
                   "{{op}}"),
        ], unit="ops"),
    ]
    for job in ("master", "chunkserver", "client"):
        panels.append(panel("timeseries", f"{job.capitalize()} latency p50 / p90 / p99", [
            target(f'histogram_quantile({q}, sum by (le) (rate(mooseng_operation_duration_seconds_bucket'
                   f'{{job="{job}", instance=~"$instance"}}[{RATE}])))', f"p{round(q * 100)}")
            for q in (0.5, 0.9, 0.99)
        ], unit="s"))
    panels += [
        panel("timeseries", "p99 latency by op", [
            target(f'histogram_quantile(0.99, sum by (job, op, le) (rate(mooseng_operation_duration_seconds_bucket{{{sel}}}[{RATE}])))',
                   "{{job}} {{op}}"),
        ], unit="s"),
        panel("timeseries", "CPU per daemon", [
            target(f'rate(process_cpu_seconds_total{{{sel}}}[{RATE}])', "{{job}} {{instance}}"),
        ], unit="percentunit"),
        panel("timeseries", "Resident memory per daemon", [
            target(f'process_resident_memory_bytes{{{sel}}}', "{{job}} {{instance}}"),
        ], unit="bytes"),
    ]
    job_var = {
        "name": "job", "label": "Daemon", "type": "custom", "query": "master,chunkserver,client",
        "includeAll": True, "allValue": ".*", "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
    }  # fmt: skip
    return dashboard("mooseng-performance", "MooseNG Performance", panels,
                     [job_var, variable("instance", 'label_values(up{job=~"$job"}, instance)', "Instance")])


def storage() -> dict:
    cs = 'job="chunkserver", instance=~"$instance"'
    return dashboard("mooseng-storage", "MooseNG Storage", [
        panel("stat", "Cluster space (leader's view)", [
            target(f'sum by (kind) (mooseng_disk_bytes{{job="master"}} {LEADER})', "{{kind}}"),
        ], unit="bytes"),
        panel("gauge", "Cluster space used", [
            target(f'1 - sum(mooseng_disk_bytes{{job="master", kind="free"}} {LEADER})'
                   f' / sum(mooseng_disk_bytes{{job="master", kind="total"}} {LEADER})', "used"),
        ], unit="percentunit"),
        panel("timeseries", "Chunk data per chunkserver", [
            target(f'sum by (instance) (mooseng_disk_bytes{{{cs}, kind="used"}})', "{{instance}}"),
        ], unit="bytes"),
        panel("bargauge", "Free space per chunkserver", [
            target(f'sum by (instance) (mooseng_disk_bytes{{{cs}, kind="free"}})'
                   f' / sum by (instance) (mooseng_disk_bytes{{{cs}, kind="total"}})', "{{instance}}"),
        ], unit="percentunit"),
        panel("table", "Disks: chunk data, free, total", [
            target(f'mooseng_disk_bytes{{{cs}}}', "{{instance}} {{disk}} {{kind}}"),
        ], unit="bytes"),
        panel("bargauge", "Free space per disk", [
            target(f'mooseng_disk_bytes{{{cs}, kind="free"}} / ignoring (kind) mooseng_disk_bytes{{{cs}, kind="total"}}',
                   "{{instance}} {{disk}}"),
        ], unit="percentunit"),
        panel("stat", "Damaged disks per chunkserver", [
            target(f'sum by (instance) (mooseng_disk_damaged{{{cs}}})', "{{instance}}"),
        ]),
        panel("timeseries", "Chunks per chunkserver", [
            target(f'mooseng_chunks_total{{{cs}}}', "{{instance}}"),
        ]),
        panel("timeseries", "Chunks per class", [
            target(f'sum by (sclass) (mooseng_chunks{{job="master", sclass=~"$sclass"}} {LEADER})', "{{sclass}}"),
        ]),
        panel("bargauge", "Chunks per class and state", [
            target(f'sum by (sclass, state) (mooseng_chunks{{job="master", sclass=~"$sclass"}} {LEADER})',
                   "{{sclass}} {{state}}"),
        ]),
    ], [
        variable("instance", 'label_values(mooseng_disk_bytes{job="chunkserver"}, instance)', "Chunkserver"),
        variable("sclass", "label_values(mooseng_chunks, sclass)", "Storage class"),
    ])


DASHBOARDS = {"health": health, "performance": performance, "storage": storage}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2) + "\n"


def main() -> int:
    out = Path(__file__).resolve().parent / "dashboards"
    for name in DASHBOARDS:
        (out / f"{name}.json").write_text(render(name))
        print(f"wrote {out / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
