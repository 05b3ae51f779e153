"""mooseng-dashboard as a process, on bad input: masters that do not answer, unknown parameters,
wrong methods, garbage requests, a taken port, bad configuration. It answers one-line JSON errors,
never a stack trace, keeps running, and binds exactly the configured address."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mooseng.dashboard.server import make_server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_dashboard(tmp_path: Path, table: str) -> subprocess.Popen:
    config = tmp_path / "dashboard.toml"
    config.write_text("[dashboard]\n" + table)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOSENG_")}
    return subprocess.Popen([sys.executable, "-m", "mooseng.dashboard.server", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def request(url: str, method: str = "GET") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def one_line_error(status: int, ctype: str, body: str) -> str:
    assert ctype == "application/json", (status, body)
    assert "\n" not in body and "Traceback" not in body
    return json.loads(body)["error"]


@pytest.fixture
def garbage_metrics():
    """host:port of a 'metrics endpoint' that answers every connection with something not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:  # the timeout, to look at `stop`
                continue
            with conn:
                conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture
def lonely_dashboard(tmp_path, garbage_metrics):
    """A dashboard whose master address has nothing listening and whose metrics address answers garbage."""
    port, dead = free_port(), free_port()
    proc = run_dashboard(tmp_path, f'listen = "127.0.0.1:{port}"\nmaster_endpoints = ["127.0.0.1:{dead}"]\n'
                                   f'master_metrics = ["{garbage_metrics}"]\nsample_interval_s = 0.5\n')  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "dashboard did not listen"
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def test_unreachable_masters_are_reported_not_raised(lonely_dashboard):
    url, _ = lonely_dashboard
    status, ctype, body = request(url + "/api/status")
    assert status == 200 and ctype == "application/json"
    st = json.loads(body)
    assert st["cluster"]["available"] is False and "unreachable" in st["cluster"]["reason"]
    assert [m["role"] for m in st["masters"]] == ["unreachable"]
    assert st["masters"][0]["raft"]["available"] is False
    assert st["rates"]["available"] is False and "no master metrics endpoint answered" in st["rates"]["reason"]
    assert st["classes"]["available"] is False
    assert request(url + "/")[0] == 200


def test_bad_requests_get_one_line_json_errors_and_the_server_survives(lonely_dashboard):
    url, _ = lonely_dashboard
    assert one_line_error(*request(url + "/api/status?debug=1")) == \
        "unknown parameter 'debug' for /api/status (it takes none)"
    assert request(url + "/api/status?debug=1")[0] == 400
    assert request(url + "/api/history?points=abc")[0] == 400
    assert one_line_error(*request(url + "/api/status", method="POST")) == "method not allowed: use GET"
    assert request(url + "/api/status", method="DELETE")[0] == 405
    assert request(url + "/static/../collector.py")[0] == 404
    assert request(url + "/?x=1")[0] == 404
    host, port = url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # not HTTP at all
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        chunks = []
        while chunk := s.recv(4096):  # the server closes the connection after the error
            chunks.append(chunk)
        reply = b"".join(chunks).decode(errors="replace")
    assert reply.startswith("HTTP/1.") and " 400 " in reply.splitlines()[0]
    assert "Traceback" not in reply and reply.rstrip().endswith("}")
    assert request(url + "/api/status")[0] == 200


def test_binds_only_the_configured_address(tmp_path):
    port = free_port("127.0.0.2")
    proc = run_dashboard(tmp_path, f'listen = "127.0.0.2:{port}"\nmaster_endpoints = ["127.0.0.1:1"]\n'
                                   'master_metrics = ["127.0.0.1:1"]\n')  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while request_ok(f"http://127.0.0.2:{port}/api/status") is False:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def request_ok(url: str) -> bool:
    try:
        return request(url)[0] == 200
    except OSError:
        return False


def test_configuration_errors_exit_2_with_one_line(tmp_path):
    proc = run_dashboard(tmp_path, 'listen = "127.0.0.1:8080"\nprometheus_url = "localhost:9090"\n')
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err == "config error: prometheus_url = 'localhost:9090': expected an http:// or https:// URL\n"
    proc = run_dashboard(tmp_path, 'listen = "127.0.0.1:8080"\ncolour = "blue"\n')
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and err == "config error: colour = 'blue': unknown key in [dashboard]\n"


def test_a_taken_port_exits_1_with_one_error_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_dashboard(tmp_path, f'listen = "127.0.0.1:{port}"\nmaster_endpoints = ["127.0.0.1:1"]\n')
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.splitlines()
    assert len(lines) == 1 and " ERROR node=dashboard " in lines[0] and f"cannot listen on 127.0.0.1:{port}" in lines[0]


class ExplodingSampler:
    interval_s = 1.0
    history_size = 10

    def latest(self):
        raise RuntimeError("a bug\nspanning lines")


def test_a_bug_in_a_handler_is_a_500_without_traceback(caplog):
    httpd = make_server(f"127.0.0.1:{free_port()}", ExplodingSampler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.ERROR, logger="mooseng.dashboard"):
            status, ctype, body = request(f"http://127.0.0.1:{httpd.server_address[1]}/api/status")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert status == 500
    assert one_line_error(status, ctype, body) == "internal error (see the dashboard's log)"
    assert any("GET /api/status failed" in r.getMessage() and r.exc_info for r in caplog.records)
