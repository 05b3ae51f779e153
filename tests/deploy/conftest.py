"""Fixtures for the deployment tests: a private Docker engine (see dockerlab.py)."""

from __future__ import annotations

import subprocess

import pytest
from dockerlab import ENGINE_NAME, ENGINE_SH, Engine, docker_missing, stop_engine


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The private engine `docker-test`, started for the module; the demo's containers, volumes
    and network are removed and the engine stopped afterwards, whatever the tests did."""
    reason = docker_missing()
    if reason:
        pytest.skip(reason)
    out = subprocess.run([str(ENGINE_SH), "start", ENGINE_NAME], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        stop_engine(ENGINE_NAME)
        pytest.fail(f"cannot start the private engine: {out.stderr.strip()}")
    eng = Engine(ENGINE_NAME, out.stdout.strip().split("=", 1)[1])
    try:
        yield eng
    finally:
        eng.run("docker-compose", "--profile", "grafana", "down", "-v", "--remove-orphans", timeout=300)
        stop_engine(ENGINE_NAME)
