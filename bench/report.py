"""Render the results as the core section of BENCHMARKS.md (between the markers, rest kept)."""

from __future__ import annotations

from pathlib import Path

from bench.targets import TARGETS
from bench.workloads import Metric

START = "<!-- bench:core:start -->"
END = "<!-- bench:core:end -->"
MAX_CELL = 60  # longer failure reasons are cut in the table and given in full below it


def fmt_value(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def one_line(text: str) -> str:
    """The first line of a message (a multi-line one, such as a log tail, is in the JSON)."""
    lines = text.strip().splitlines()
    return lines[0] + (" […]" if len(lines) > 1 else "") if lines else ""


def cell(target: dict | None, m: Metric, workloads: list[str] | None) -> str:
    if target is None or (workloads is not None and m.workload not in workloads):
        return "not run"
    if m.workload in target.get("not_applicable", ()):
        return "n/a"
    if m.key in target["metrics"]:
        return fmt_value(target["metrics"][m.key], m.unit)
    reason = one_line(target.get("error") or target["errors"].get(m.workload, "no result"))
    return "failed: " + (reason if len(reason) <= MAX_CELL else reason[:MAX_CELL - 1] + "…")


def ratio(results: dict, key: str, base: str) -> str:
    try:
        num, den = results["mooseng"]["metrics"][key], results[base]["metrics"][key]
    except KeyError:
        return "–"
    return f"{num / den:.2f}x" if den else "–"


def render(results: dict, metrics: list[Metric], meta: dict) -> str:
    lines = [
        START,
        "## Core benchmark: local disk vs MooseFS CE vs MooseNG",
        "",
        "Measured by `bench/run.py`; regenerate with the command below (this section is rewritten, "
        "the rest of the file is kept). Higher is better everywhere; a ratio above 1.00x means "
        "MooseNG is faster. MB = 10^6 bytes.",
        "",
        "| workload | " + " | ".join(t.title for t in TARGETS.values()) + " | MooseNG/local | MooseNG/MooseFS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    targets = meta["targets"]
    for m in metrics:
        row = [m.label] + [cell(results.get(t), m, meta.get("workloads")) for t in TARGETS]
        row += [ratio(results, m.key, "local"), ratio(results, m.key, "moosefs")]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; whole run {meta['seconds']:.0f} s "
        + "(" + ", ".join(f"{t} {results[t]['seconds']:.0f} s" for t in targets if t in results) + ")",
        f"- Machine: {meta['machine']}",
    ]
    for t in targets:
        if t in results and results[t].get("description"):
            lines.append(f"- {TARGETS[t].title}: {results[t]['description']}")
    lines.append(f"- Method: {meta['method']}")
    problems = [f"  - {TARGETS[t].title}: {one_line(text)}" for t in targets if t in results
                for text in [results[t]["error"] or ""] + [f"{wl}: {err}" for wl, err in results[t]["errors"].items()]
                + results[t]["notes"] if text]
    if problems:
        lines += ["- Failures and notes:", *problems]
    lines.append(END)
    return "\n".join(lines) + "\n"


def update(path: Path, section: str) -> None:
    """Replace the marked section of `path` (or append it; or create the file)."""
    if not path.exists():
        path.write_text("# MooseNG benchmarks\n\n" + section)
        return
    text = path.read_text()
    start, end = text.find(START), text.find(END)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
