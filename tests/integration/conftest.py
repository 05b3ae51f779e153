"""Fixtures shared by the integration tests."""

import contextlib
import os
import signal

import pytest

from mooseng.localcluster import AUTO_PORTS, LocalCluster


@pytest.fixture
def masters(tmp_path):
    """Three masters (and the one chunkserver a cluster needs), stopped whatever happens."""
    cluster = LocalCluster(tmp_path / "c", masters=3, chunkservers=1, clients=0, port_base=AUTO_PORTS)
    try:
        cluster.start()
        yield cluster
    finally:
        for node in cluster.nodes:  # a test that failed between SIGSTOP and SIGCONT
            if node.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(node.pid, signal.SIGCONT)
        cluster.stop()
