"""Repository-wide test rules and the local-cluster fixtures.

Rule: under CI=true a skipped test is a failure. A skip there means the machine lacks something
the suite must exercise (FUSE, root, a package), which CI has to notice instead of passing green.

Fixtures: `cluster` is one LocalCluster (1 master, 3 chunkservers, 3 FUSE clients) shared by the
session, for tests that only read and write files; a test that kills, restarts or reconfigures
nodes takes its own from `cluster_factory`. Both use free ports found on 127.0.0.1 (never the
seed's, so a running demo cannot collide) and are always stopped, whatever the tests did.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from mooseng.localcluster import AUTO_PORTS, LocalCluster

CI = os.environ.get("CI") == "true"


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"pytest got {signal.Signals(signum).name}")


def pytest_configure(config):
    """A run stopped by SIGTERM or SIGHUP (a CI timeout, a closed terminal) ends as Ctrl-C does:
    pytest then still tears down every fixture, so the daemons, mounts and namespaces the tests
    started are stopped instead of outliving the run."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


def _fail_skip_under_ci(report) -> None:
    """Turn a skip (not an xfail) into a failure that still shows the skip's reason."""
    if not CI or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


def fuse_missing() -> str | None:
    """Why FUSE mounts cannot work here, or None."""
    if os.geteuid() != 0:
        return "FUSE mounts need root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not shutil.which("fusermount") and not shutil.which("fusermount3"):
        return "fusermount is missing (apt-get install -y fuse3)"
    return None


class _Clusters:
    """Starts clusters in fresh directories and stops every one it started, even half-started ones."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._started: list[LocalCluster] = []

    def make(self, **kwargs) -> LocalCluster:
        reason = fuse_missing()
        if reason:
            pytest.skip(reason)
        cluster = LocalCluster(self._tmp.mktemp("cluster"), port_base=AUTO_PORTS, **kwargs)
        self._started.append(cluster)
        cluster.start()
        return cluster

    def stop_all(self) -> None:
        for cluster in self._started:
            cluster.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> LocalCluster:
    clusters = _Clusters(tmp_path_factory)
    try:
        yield clusters.make()
    finally:
        clusters.stop_all()


@pytest.fixture
def cluster_factory(tmp_path_factory):
    """make(**LocalCluster kwargs) -> a started cluster of the test's own, stopped after the test."""
    clusters = _Clusters(tmp_path_factory)
    try:
        yield clusters.make
    finally:
        clusters.stop_all()


@pytest.fixture(scope="module")
def module_cluster_factory(tmp_path_factory):
    """Like cluster_factory, for a module whose tests share clusters (and may break them in order)."""
    clusters = _Clusters(tmp_path_factory)
    try:
        yield clusters.make
    finally:
        clusters.stop_all()


@pytest.fixture
def workdir(cluster, request) -> Path:
    """A directory of its own for the test, seen through client-1's mount."""
    path = cluster.mountpoint(1) / request.node.name
    path.mkdir()
    return path
