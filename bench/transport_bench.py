"""Round-trip cost of one small request: grpcio unary against mooseng.rpc, server in another process.

This is the measurement behind the choice of rpc.py for the latency-bound paths (docs/DESIGN.md,
"Transport"). grpcio is not a MooseNG dependency; install it into the venv to run the comparison:
    .venv/bin/pip install grpcio && .venv/bin/python bench/transport_bench.py
"""

import argparse
import os
import subprocess
import sys
import time

import msgpack

REQUEST = msgpack.packb({"op": "getattr", "args": {"ino": 12345}}, use_bin_type=True)
REPLY = msgpack.packb({"errno": 0, "result": {"ino": 12345, "mode": 0o100644, "size": 4096}}, use_bin_type=True)


def serve_grpc() -> None:
    from concurrent import futures

    import grpc

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(lambda req, ctx: REPLY)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(32))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    print(f"{time.process_time():.6f}", flush=True)


def serve_rpc() -> None:
    from mooseng import rpc

    server = rpc.Server("127.0.0.1:0", {"call": lambda params, data, peer: REPLY}).start()
    print(server.port, flush=True)
    sys.stdin.read()
    print(f"{time.process_time():.6f}", flush=True)


def measure(kind: str, calls: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        port = int(proc.stdout.readline())
        if kind == "grpc":
            import grpc

            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = channel.unary_unary("/bench.Echo/Call")
            call = lambda: stub(REQUEST)  # noqa: E731
        else:
            from mooseng import rpc

            client = rpc.Client(f"127.0.0.1:{port}")
            call = lambda: client.call("call", {"request": REQUEST})  # noqa: E731
        for _ in range(100):  # warm up connections and caches
            call()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            call()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        proc.stdin.close()
    server_cpu = float(proc.stdout.readline())
    proc.wait(timeout=10)
    return {"us_per_call": wall / calls * 1e6, "client_cpu_us": cpu / calls * 1e6,
            "server_cpu_us_incl_startup": server_cpu / calls * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--serve", choices=("grpc", "rpc"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        (serve_grpc if opts.serve == "grpc" else serve_rpc)()
        return 0
    print("| transport | time per call | client CPU per call | server CPU per call (incl. start-up) |")
    print("|---|---:|---:|---:|")
    for kind in ("grpc", "rpc"):
        try:
            r = measure(kind, opts.calls)
        except ImportError as exc:
            print(f"| {kind} | not measured: {exc} | | |")
            continue
        print(f"| {kind} | {r['us_per_call']:.0f} us | {r['client_cpu_us']:.0f} us | {r['server_cpu_us_incl_startup']:.0f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
