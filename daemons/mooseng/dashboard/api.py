"""The dashboard's JSON API: request path and query in, (HTTP status, JSON-able body) out.

Every refusal is one line naming the problem ({"error": ...}); the handler never lets an
exception (and so a stack trace) reach the client.
"""

from __future__ import annotations

from urllib.parse import parse_qs

# path -> the query parameters it takes
ENDPOINTS = {"/api/status": (), "/api/history": ("points",)}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def handle(path: str, query: str, sampler) -> tuple[int, dict]:
    """Answer GET path?query from `sampler` (latest(), history(n), history_size)."""
    try:
        return 200, _answer(path, _params(path, query), sampler)
    except ApiError as exc:
        return exc.status, {"error": str(exc)}


def _params(path: str, query: str) -> dict[str, str]:
    if path not in ENDPOINTS:
        raise ApiError(404, f"no such endpoint: {path} (endpoints: {', '.join(ENDPOINTS)})")
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=20)
    except ValueError as exc:
        raise ApiError(400, f"malformed query string: {exc}") from None
    allowed = ENDPOINTS[path]
    for name, values in parsed.items():
        if name not in allowed:
            hint = f"allowed: {', '.join(allowed)}" if allowed else "it takes none"
            raise ApiError(400, f"unknown parameter {name!r} for {path} ({hint})")
        if len(values) > 1:
            raise ApiError(400, f"parameter {name!r} given {len(values)} times")
    return {name: values[0] for name, values in parsed.items()}


def _answer(path: str, params: dict[str, str], sampler) -> dict:
    if path == "/api/status":
        latest = sampler.latest()
        if latest is None:
            raise ApiError(503, "no sample of the cluster yet")
        return latest
    size = sampler.history_size
    raw = params.get("points", str(size))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= size:
        raise ApiError(400, f"points = {raw!r}: expected an integer from 1 to {size}")
    return {"interval_s": sampler.interval_s, "points": sampler.history(int(raw))}
