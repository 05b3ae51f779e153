"""mooseng-dashboard: serve the web monitor and its JSON API (stdlib threaded HTTP server).

Exit codes: 0 after SIGTERM/SIGINT, 1 when it cannot listen, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from mooseng import daemon, wire
from mooseng.dashboard import api
from mooseng.dashboard.collector import Collector, Sampler

log = logging.getLogger("mooseng.dashboard")

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def load_static() -> dict[str, tuple[bytes, str]]:
    """URL path -> (body, content type) of every file shipped in static/; nothing else is served."""
    files = {}
    for entry in resources.files("mooseng.dashboard").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), STATIC_TYPES[suffix])
    files["/"] = files["/static/index.html"]
    return files


class Handler(BaseHTTPRequestHandler):
    server_version = "mooseng-dashboard"
    default_request_version = "HTTP/1.0"  # so that even a garbage request line gets a status line
    sys_version = ""
    sampler: Sampler  # set on the subclass that serve() makes
    static: dict[str, tuple[bytes, str]]

    def do_GET(self) -> None:
        try:
            url = urlsplit(self.path)
            if url.path.startswith("/api/"):
                status, body = api.handle(url.path, url.query, self.sampler)
                self._send(status, json.dumps(body).encode(), "application/json")
            elif url.path in self.static and not url.query:
                self._send(200, *self.static[url.path])
            else:
                self._error(404, f"no such page: {url.path}")
        except Exception:  # never a stack trace to the client; one log line for the operator
            log.exception("GET %.200s failed", self.path)
            self._error(500, "internal error (see the dashboard's log)")

    def do_HEAD(self) -> None:
        self._error(405, "method not allowed: use GET")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (malformed request line, headers too long) as one-line JSON."""
        self.close_connection = True
        self._error(code, message or self.responses.get(code, ("error",))[0])

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)


def make_server(listen: str, sampler) -> ThreadingHTTPServer:
    """An HTTP server on `listen` (host:port) answering from `sampler`; not yet serving."""
    host, port = wire.parse_addr(listen)
    handler = type("BoundHandler", (Handler,), {"sampler": sampler, "static": load_static()})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd


def serve(cfg) -> tuple[ThreadingHTTPServer, Sampler]:
    """Bind, take the first sample, and serve in a thread; the caller stops both."""
    sampler = Sampler(Collector(cfg), cfg.sample_interval_s, cfg.history_points)
    httpd = make_server(cfg.listen, sampler)
    sampler.start()
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    return httpd, sampler


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mooseng-dashboard", description="MooseNG web dashboard")
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML file with a [dashboard] table")
    opts = parser.parse_args(argv)
    return daemon.run("dashboard", opts.config, lambda cfg: "dashboard", run)


def run(cfg) -> int:
    """Serve until SIGTERM/SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        httpd, sampler = serve(cfg)
    except OSError as exc:
        log.error("cannot listen on %s: %s", cfg.listen, exc.strerror or exc)
        return 1
    log.info("dashboard on http://%s/ for masters %s", cfg.listen, ",".join(cfg.master_endpoints))
    stop.wait()
    log.info("stopping")
    httpd.shutdown()
    httpd.server_close()
    sampler.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
