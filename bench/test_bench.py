"""Checks of the benchmark machinery itself (no root, no cluster): `pytest bench/`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import report
from bench.common import BenchError
from bench.targets import LocalTarget
from bench.workloads import WORKLOADS, Params, metrics_table

TINY = Params(size_mib=4, writer_mib=1, rand_runtime_s=1, meta_files=20, meta_dirs=5, small_files=10,
              fio_limit_s=30, phase_limit_s=10)
META = {"command": "python bench/run.py", "date": "today", "seconds": 1.0, "targets": ["local", "moosefs", "mooseng"],
        "machine": "test", "method": "test"}


def target(metrics=None, error=None, errors=None) -> dict:
    return {"error": error, "description": "", "metrics": metrics or {}, "errors": errors or {}, "notes": [],
            "seconds": 1.0}


def test_render_values_ratios_and_failures():
    results = {
        "local": target({"seq_write": 1000.0}),
        "moosefs": target(error="setup: mfsmaster exited with 1\nlog tail"),
        "mooseng": target({"seq_write": 250.0}, errors={"seq_read": "EIO (Input/output error) on /x"}),
    }
    text = report.render(results, metrics_table(TINY), META)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    write = rows["sequential write 4 MiB (fio bs=1M, incl. end_fsync)"]
    assert "| 1,000 MB/s | failed: setup: mfsmaster exited with 1 […] | 250 MB/s | 0.25x | – |" in write
    read = rows["sequential read 4 MiB, cold (fio bs=1M)"]
    assert "failed: EIO (Input/output error) on /x" in read
    assert "log tail" not in text  # multi-line reasons keep their first line only


def test_render_marks_targets_not_run():
    text = report.render({"local": target({"stat": 5.0})}, metrics_table(TINY), META | {"targets": ["local"]})
    assert "| stat 20 files | 5 ops/s | not run | not run | – | – |" in text


def test_update_keeps_the_rest_of_the_file(tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    report.update(out, f"{report.START}\nold\n{report.END}\n")
    out.write_text("# Title\n\nintro\n\n" + out.read_text().split("\n\n", 1)[1] + "\n## Other\nkept\n")
    report.update(out, f"{report.START}\nnew\n{report.END}\n")
    text = out.read_text()
    assert "new" in text and "old" not in text
    assert text.startswith("# Title\n\nintro\n") and text.endswith("## Other\nkept\n")


def test_update_appends_when_markers_are_missing(tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Mine\n")
    report.update(out, f"{report.START}\nx\n{report.END}\n")
    assert out.read_text() == f"# Mine\n\n{report.START}\nx\n{report.END}\n"


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_every_workload_runs_on_a_local_directory(tmp_path: Path):
    metrics = {}
    for name, workload in WORKLOADS:
        if getattr(workload, "needs_target", False):  # storage classes: a cluster's (bench/targets.py)
            with pytest.raises(BenchError, match="has no storage class 'default'"):
                workload(tmp_path, TINY, lambda: None, target=LocalTarget(tmp_path))
            continue
        metrics.update(workload(tmp_path, TINY, lambda: None).metrics)
    assert set(metrics) == {m.key for m in metrics_table(TINY) if m.workload != "classes"}
    assert all(value > 0 for value in metrics.values())


def test_render_marks_workloads_a_target_cannot_run():
    local = target({"stat": 5.0}) | {"not_applicable": ["classes"]}
    text = report.render({"local": local}, metrics_table(TINY), META | {"targets": ["local"]})
    row = next(line for line in text.splitlines() if line.startswith("| class archive (EC 8+4): sequential write"))
    assert "| n/a |" in row


def test_render_marks_workloads_not_selected():
    meta = META | {"targets": ["mooseng"], "workloads": ["metadata"]}
    text = report.render({"mooseng": target({"stat": 5.0})}, metrics_table(TINY), meta)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| not run | not run | not run |" in rows["sequential write 4 MiB (fio bs=1M, incl. end_fsync)"]
    assert "| 5 ops/s |" in rows["stat 20 files"]


def test_the_instruction_count_harness_runs_every_op_on_a_lone_master():
    from bench import meta_instructions

    meta_instructions.run_ops(list(meta_instructions.OPS), 3)  # raises if any op fails
    with pytest.raises(SystemExit):
        meta_instructions.main(["--ops", "unlink"])  # unlink needs the renamed files
