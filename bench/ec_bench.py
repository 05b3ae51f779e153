"""Erasure-coding throughput of mooseng._ec against the ISA-L figures of ENVIRONMENT.md (the
measured facts of the build machines).

    PYTHONPATH=daemons .venv/bin/python bench/ec_bench.py [--reps 21] [--mib 64]

For 8+4 and 4+2: 64 MiB of random data in k fragments, every buffer allocated and touched once
and reused; encode, then decode with m data fragments lost (4 for 8+4, 2 for 4+2). A figure is
the median over the repetitions of data bytes / seconds, in GB/s (10**9 bytes per second).
The machines are shared and noisy, so every repetition also times ISA-L called directly (ctypes,
GIL released, same buffers, same matrices) right after the binding: "binding / direct" is the
binding's own overhead, and the direct column against ENVIRONMENT.md shows how busy the machine was.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import time

from mooseng._ec import Codec

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

    def runner(self, tables: ctypes.Array, sources: list[bytearray], outputs: list[bytearray]):
        src, dst = _pointers(sources), _pointers(outputs)
        args = (len(sources[0]), self.k, len(outputs), tables, src, dst)
        return lambda: self.lib.ec_encode_data(*args)


def _pointers(buffers: list[bytearray]) -> ctypes.Array:
    return (ctypes.c_void_p * len(buffers))(*[ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b)) for b in buffers])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(k: int, m: int, total: int, reps: int) -> dict[str, tuple[float, float]]:
    """{operation: (binding GB/s, direct GB/s)}, medians over `reps` interleaved repetitions."""
    size = total // k
    data = [bytearray(os.urandom(size)) for _ in range(k)]
    parity = [bytearray(size) for _ in range(m)]
    codec = Codec(k, m)
    codec.encode(data, parity)

    lost = list(range(m))
    frags = [None] * m + data[m:] + parity
    out = [bytearray(size) for _ in lost]
    direct_parity = [bytearray(size) for _ in range(m)]
    direct_out = [bytearray(size) for _ in lost]
    direct = DirectIsal(k, m)
    survivors = [i for i, frag in enumerate(frags) if frag is not None][:k]
    ops = {
        "encode": (
            lambda: codec.encode(data, parity),
            direct.runner(direct.encode_tables(), data, direct_parity),
        ),
        f"decode, {m} data lost": (
            lambda: codec.decode(frags, lost, out),
            direct.runner(direct.decode_tables(survivors, lost), [frags[i] for i in survivors], direct_out),
        ),
    }
    results = {}
    for name, (binding, raw) in ops.items():
        binding(), raw()  # first touch of the outputs
        binding_times, raw_times = [], []
        for rep in range(reps):  # alternate which goes first, so that neither gets the quieter half
            for fn, times in ((binding, binding_times), (raw, raw_times))[:: 1 if rep % 2 else -1]:
                times.append(timed(fn))
        results[name] = (total / statistics.median(binding_times) / 1e9, total / statistics.median(raw_times) / 1e9)
    if out != data[:m] or direct_out != data[:m] or direct_parity != parity:
        sys.exit("ec_bench: the binding and ISA-L direct disagree, or decode did not rebuild the data")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=21, help="repetitions per figure (median)")
    ap.add_argument("--mib", type=int, default=64, help="MiB of data per operation")
    args = ap.parse_args(argv)
    total = args.mib << 20
    print(f"{args.mib} MiB of data, median of {args.reps}, one thread, load average {os.getloadavg()[0]:.2f}\n")
    print("| code | operation | binding GB/s | ISA-L direct GB/s | binding / direct | ENVIRONMENT.md GB/s | binding / ENVIRONMENT.md |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (k, m), reference in REFERENCE.items():
        for (name, (binding, raw)), ref in zip(measure(k, m, total, args.reps).items(), reference):
            print(f"| {k}+{m} | {name} | {binding:.1f} | {raw:.1f} | {binding / raw:.0%} | {ref} | {binding / ref:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
