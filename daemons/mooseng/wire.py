"""Encoding of op arguments and the gRPC options every channel and server shares."""

import msgpack

from mooseng.constants import GRPC_MAX_MESSAGE

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
    # Many small metadata RPCs: do not wait to coalesce writes on loopback.
    ("grpc.so_reuseport", 0),
]


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
