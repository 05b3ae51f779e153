"""Erasure-coding throughput of mooseng._ec against the ISA-L figures of ENVIRONMENT.md (the
measured facts of the build machines).

    PYTHONPATH=daemons .venv/bin/python bench/ec_bench.py [--reps 21] [--mib 64] [--unaligned]

For 8+4 and 4+2: 64 MiB of random data in k fragments, every buffer allocated and touched once
and reused; encode, then decode with m data fragments lost (4 for 8+4, 2 for 4+2), one call over
all of it. A figure is the median over the repetitions of data bytes / seconds, in GB/s (10**9
bytes per second), by the wall clock and by the thread's CPU time (steadier on a shared machine).
The machines are shared and noisy, so every repetition also times ISA-L called directly (ctypes,
GIL released, the same buffers, the same tables) right after the binding: "binding / direct" is
the binding's own overhead, and the direct column against ENVIRONMENT.md shows how busy the
machine was. Buffers are page-aligned (mooseng.ec.aligned_buffer, as the client's write buffers
are); --unaligned uses bytearrays instead, which start 16 bytes past a cache line. --placement
times only the binding's 8+4 encode in three kinds of buffers, interleaved in the same repetitions:
bytearrays, page-aligned ones, and page-aligned ones used from 16 bytes in.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import time

from mooseng.ec import Codec, aligned_buffer

# ENVIRONMENT.md, one core, 64 MiB of data: (encode, decode with m data fragments lost), GB/s.
REFERENCE = {(8, 4): (11.7, 9.5), (4, 2): (19.4, 17.8)}


class DirectIsal:
    """ISA-L through ctypes, the same calls as the binding without it: the same-run ceiling."""

    def __init__(self, k: int, m: int):
        path = ctypes.util.find_library("isal")
        if path is None:
            sys.exit("ec_bench: libisal not found: apt-get install -y libisal-dev")
        self.lib = ctypes.CDLL(path)
        self.lib.ec_encode_data.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 3
        self.k = k
        self.matrix = (ctypes.c_ubyte * ((k + m) * k))()
        self.lib.gf_gen_cauchy1_matrix(self.matrix, k + m, k)

    def _tables(self, coefficients: list[int]) -> ctypes.Array:
        """ISA-L tables for a matrix of k columns, given row after row."""
        matrix = (ctypes.c_ubyte * len(coefficients))(*coefficients)
        tables = (ctypes.c_ubyte * (32 * len(coefficients)))()
        self.lib.ec_init_tables(self.k, len(coefficients) // self.k, matrix, tables)
        return tables

    def encode_tables(self) -> ctypes.Array:
        return self._tables(list(self.matrix[self.k * self.k :]))

    def decode_tables(self, survivors: list[int], lost_data: list[int]) -> ctypes.Array:
        """Rows of the inverse of the survivors' rows: enough for lost data fragments."""
        k = self.k
        sub = (ctypes.c_ubyte * (k * k))(*[self.matrix[s * k + j] for s in survivors for j in range(k)])
        inverse = (ctypes.c_ubyte * (k * k))()
        if self.lib.gf_invert_matrix(sub, inverse, k) != 0:
            sys.exit("ec_bench: gf_invert_matrix failed")
        return self._tables([inverse[w * k + j] for w in lost_data for j in range(k)])

    def runner(self, tables: ctypes.Array, sources: list, outputs: list):
        src, dst = _pointers(sources), _pointers(outputs)
        args = (len(sources[0]), self.k, len(outputs), tables, src, dst)
        return lambda: self.lib.ec_encode_data(*args)


def _pointers(buffers: list) -> ctypes.Array:
    return (ctypes.c_void_p * len(buffers))(*[ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b)) for b in buffers])


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def measure(k: int, m: int, total: int, reps: int, aligned: bool) -> dict[str, list[float]]:
    """{operation: [binding GB/s, direct GB/s, binding CPU GB/s, direct CPU GB/s]}, medians over
    `reps` interleaved repetitions of the binding and ISA-L direct on the same buffers."""
    size = total // k

    def buffer(data: bytes = b""):
        buf = aligned_buffer(size) if aligned else bytearray(size)
        buf[:len(data)] = data
        return buf

    data = [buffer(os.urandom(size)) for _ in range(k)]
    parity = [buffer() for _ in range(m)]
    codec = Codec(k, m)
    direct = DirectIsal(k, m)
    lost = list(range(m))
    frags = [None] * m + data[m:] + parity
    out = [buffer() for _ in lost]
    survivors = [i for i, frag in enumerate(frags) if frag is not None][:k]
    ops = {
        "encode": (
            lambda: codec.encode(data, parity),
            direct.runner(direct.encode_tables(), data, parity),
        ),
        f"decode, {m} data lost": (
            lambda: codec.decode(frags, lost, out),
            direct.runner(direct.decode_tables(survivors, lost), [frags[i] for i in survivors], out),
        ),
    }
    for binding, raw in ops.values():  # both give the same bytes (checked apart, then timed alike)
        raw()
        expected = [bytes(b) for b in parity + out]
        binding()
        if [bytes(b) for b in parity + out] != expected:
            sys.exit("ec_bench: the binding and ISA-L direct disagree")
    if [bytes(b) for b in out] != [bytes(b) for b in data[:m]]:
        sys.exit("ec_bench: decode did not rebuild the data")
    results = {}
    for name, (binding, raw) in ops.items():
        times: dict[object, list[tuple[float, float]]] = {binding: [], raw: []}
        for rep in range(reps):  # alternate which goes first, so that neither gets the quieter half
            for fn in (binding, raw)[:: 1 if rep % 2 else -1]:
                times[fn].append(timed(fn))
        results[name] = [total / statistics.median(t[i] for t in times[fn]) / 1e9 for i in (0, 1) for fn in (binding, raw)]
    return results


def placement(total: int, reps: int) -> None:
    """The binding's 8+4 encode by thread CPU time in each kind of buffer, interleaved."""
    k, m, size = 8, 4, total // 8
    codec = Codec(k, m)
    kinds = {"bytearray": lambda: bytearray(size), "page-aligned": lambda: aligned_buffer(size),
             "page-aligned + 16 bytes": lambda: aligned_buffer(size + 16)[16:]}
    source = os.urandom(size)
    runs = {}
    for name, make in kinds.items():
        frags = [make() for _ in range(k + m)]
        for frag in frags[:k]:
            frag[:] = source
        runs[name] = lambda frags=frags: codec.encode(frags[:k], frags[k:])
        runs[name]()
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        for name, fn in list(runs.items())[:: 1 if rep % 2 else -1]:
            cpu[name].append(timed(fn)[1])
    print(f"8+4 encode, {total >> 20} MiB per call, median of {reps} by thread CPU time, "
          f"load average {os.getloadavg()[0]:.2f}")
    base = statistics.median(cpu["page-aligned"])
    for name, times in cpu.items():
        print(f"  {name:24s} {total / statistics.median(times) / 1e9:5.2f} GB/s  ({statistics.median(times) / base:.0%} of the time in page-aligned)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=21, help="repetitions per figure (median)")
    ap.add_argument("--mib", type=int, default=64, help="MiB of data per operation")
    ap.add_argument("--unaligned", action="store_true", help="bytearrays (16 bytes past a cache line), not page-aligned buffers")
    ap.add_argument("--placement", action="store_true", help="only the 8+4 encode in each kind of buffer, interleaved")
    args = ap.parse_args(argv)
    total = args.mib << 20
    if args.placement:
        placement(total, args.reps)
        return 0
    print(f"{args.mib} MiB of data per call, {'bytearray' if args.unaligned else 'page-aligned'} buffers, "
          f"median of {args.reps}, one thread, load average {os.getloadavg()[0]:.2f}\n")
    print("| code | operation | binding GB/s | ISA-L direct GB/s | binding / direct | by CPU time: binding, direct GB/s "
          "| ENVIRONMENT.md GB/s | binding / ENVIRONMENT.md |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (k, m), reference in REFERENCE.items():
        for (name, (binding, raw, binding_cpu, raw_cpu)), ref in zip(
                measure(k, m, total, args.reps, not args.unaligned).items(), reference):
            print(f"| {k}+{m} | {name} | {binding:.1f} | {raw:.1f} | {binding / raw:.0%} | {binding_cpu:.1f}, {raw_cpu:.1f} "
                  f"| {ref} | {binding / ref:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
