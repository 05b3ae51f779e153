"""Encoding of op arguments (msgpack) and host:port parsing."""

import msgpack


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes):
    """Decode msgpack; raise ValueError on malformed input so servers answer INVALID_ARGUMENT."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ValueError(f"malformed msgpack: {exc}") from None


def parse_addr(addr: str, allow_any_port: bool = False) -> tuple[str, int]:
    """Split host:port; port 0 ("any free port") only where a listener asks for it."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if allow_any_port else 1) <= int(port) < 65536:
        raise ValueError(f"not host:port: {addr!r}")
    return host, int(port)
