"""The test harness itself: a pytest run that is sent SIGTERM still stops what its fixtures started."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie our own child left is gone as far as we care
        return f.read().split(") ")[1][0] != "Z"


def test_sigterm_runs_fixture_teardown(tmp_path):
    """The inner run's fixture starts a process (as cluster fixtures start daemons) and stops it in
    its teardown; SIGTERM arrives while the test runs. Without the conftest's handler Python dies
    at once and the process outlives the run."""
    pidfile = tmp_path / "child.pid"
    test = tmp_path / "inner" / "test_inner.py"
    test.parent.mkdir()
    (test.parent / "conftest.py").write_text("from tests.conftest import pytest_configure  # noqa: F401\n")
    test.write_text(textwrap.dedent(f"""
        import subprocess, time, pytest

        @pytest.fixture
        def daemon():
            proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
            try:
                yield proc
            finally:
                proc.kill()
                proc.wait()

        def test_runs_long(daemon):
            open({str(pidfile)!r}, "w").write(str(daemon.pid))
            time.sleep(300)
    """))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'daemons'}"}
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(test.parent),
                            str(test)], cwd=test.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    child = None
    try:
        wait_for("the inner test to start its process", lambda: pidfile.exists() and pidfile.read_text(), timeout=60)
        child = int(pidfile.read_text())
        assert _alive(child)
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
        wait_for("the fixture's process to be stopped", lambda: not _alive(child), timeout=10)
        assert b"SIGTERM" in out, out.decode()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
