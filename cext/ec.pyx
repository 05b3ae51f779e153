# cython: language_level=3
"""Reed-Solomon erasure coding over GF(2^8) with ISA-L, for the erasure-coded storage classes.

The code is systematic: fragments 0..k-1 are the data itself, k..k+m-1 the parity computed with
ISA-L's Cauchy matrix, so any k of the k+m fragments rebuild all others (a Cauchy matrix keeps
every k x k submatrix invertible, which the Vandermonde one does not guarantee for every k, m).
Encode and decode read and write the caller's buffers in place with the GIL released: a 64 MiB
chunk costs no copy, and the other threads of a daemon keep running meanwhile.
"""

from collections import OrderedDict
from operator import index

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uintptr_t
from libc.string cimport memcpy

from isal_erasure_code cimport ec_encode_data, ec_init_tables, gf_gen_cauchy1_matrix, gf_invert_matrix, gf_mul

cdef enum:
    # k + m; also bounds every per-call array below.
    MAX_FRAGMENTS = 32
    # ISA-L expands each matrix coefficient into 32 bytes of tables; k * rows <= k * m <= 16 * 16.
    MAX_TABLES = 32 * 16 * 16
    # ec_encode_data takes an int length: longer fragments go through in slices of this size.
    MAX_SLICE = 1 << 30


class NotEnoughFragments(Exception):
    """Fewer than k fragments survive, so nothing can be rebuilt (the storage layer answers EIO)."""

    def __init__(self, available, needed):
        super().__init__(available, needed)
        self.available = available
        self.needed = needed

    def __str__(self):
        return f"cannot rebuild: {self.available} fragments available, {self.needed} needed"


cdef class _Views:
    """The fragment buffers of one call, held (and released together) for as long as it runs."""

    cdef Py_buffer views[MAX_FRAGMENTS]
    cdef unsigned char *ptrs[MAX_FRAGMENTS]
    cdef int count
    cdef Py_ssize_t length
    cdef object name  # position -> "data fragment 3", called only to word an error

    def __cinit__(self, name):
        self.count = 0
        self.length = -1
        self.name = name

    def __dealloc__(self):
        cdef int i
        for i in range(self.count):
            PyBuffer_Release(&self.views[i])

    cdef int add(self, obj, bint writable) except -1:
        """Take a contiguous (and, for an output, writable) view; every view must have one length."""
        cdef Py_buffer *view = &self.views[self.count]
        try:
            PyObject_GetBuffer(obj, view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
        except (TypeError, BufferError) as e:
            need = "a writable contiguous buffer" if writable else "a contiguous buffer"
            raise TypeError(f"{self.name(self.count)}: need {need}: {e}") from None
        self.ptrs[self.count] = <unsigned char *>view.buf
        self.count += 1
        if self.length < 0:
            self.length = view.len
        elif view.len != self.length:
            raise ValueError(f"{self.name(self.count - 1)} has {view.len} bytes, the fragments before it {self.length}")
        return 0

    cdef int check_outputs(self, int first) except -1:
        """Refuse an output that overlaps any other buffer: ISA-L would read what it overwrites."""
        cdef int i, j
        cdef uintptr_t a, b
        if self.length == 0:
            return 0
        for i in range(first, self.count):
            a = <uintptr_t>self.ptrs[i]
            for j in range(self.count):
                b = <uintptr_t>self.ptrs[j]
                if j != i and a < b + <uintptr_t>self.length and b < a + <uintptr_t>self.length:
                    raise ValueError(f"{self.name(i)} overlaps {self.name(j)}")
        return 0


cdef void _run(int k, int rows, unsigned char *tables, unsigned char **src, unsigned char **dst,
               Py_ssize_t length) noexcept nogil:
    """ec_encode_data over the whole length, in slices that fit its int length."""
    cdef unsigned char *s[MAX_FRAGMENTS]
    cdef unsigned char *d[MAX_FRAGMENTS]
    cdef Py_ssize_t offset = 0, n
    cdef int i
    while offset < length:
        n = min(length - offset, <Py_ssize_t>MAX_SLICE)
        for i in range(k):
            s[i] = src[i] + offset
        for i in range(rows):
            d[i] = dst[i] + offset
        ec_encode_data(<int>n, k, rows, tables, s, d)
        offset += n


cdef class Codec:
    """A k+m Reed-Solomon code: encode tables built once, decode tables cached per erasure pattern.

    Degraded reads repeat the same erasure pattern (the same servers are down), so the decode tables
    (a k x k inversion and 32 * k * rows bytes of ISA-L tables) are kept in a small LRU. A Codec is
    safe to share between threads.
    """

    cdef readonly int k
    cdef readonly int m
    cdef unsigned char matrix[MAX_FRAGMENTS * MAX_FRAGMENTS]
    cdef unsigned char encode_tables[MAX_TABLES]
    cdef object decode_cache
    cdef Py_ssize_t decode_cache_size

    def __cinit__(self, int k, int m, *, Py_ssize_t decode_cache_size=64):
        if k < 1 or m < 1 or k + m > MAX_FRAGMENTS:
            raise ValueError(f"invalid erasure code k={k}, m={m}: need k >= 1, m >= 1 and k + m <= {MAX_FRAGMENTS}")
        if decode_cache_size < 0:
            raise ValueError(f"decode_cache_size={decode_cache_size}: must be >= 0")
        self.k = k
        self.m = m
        self.decode_cache = OrderedDict()
        self.decode_cache_size = decode_cache_size
        gf_gen_cauchy1_matrix(self.matrix, k + m, k)
        ec_init_tables(k, m, &self.matrix[k * k], self.encode_tables)

    def __repr__(self):
        return f"Codec(k={self.k}, m={self.m})"

    def encode(self, data_frags, parity_frags):
        """Write the m parity fragments of the k equal-length data fragments into parity_frags."""
        cdef int k = self.k
        data_frags = tuple(data_frags)
        parity_frags = tuple(parity_frags)
        if len(data_frags) != k or len(parity_frags) != self.m:
            raise ValueError(f"encode needs {k} data and {self.m} parity fragments, "
                             f"got {len(data_frags)} and {len(parity_frags)}")
        cdef _Views views = _Views(lambda i: f"data fragment {i}" if i < k else f"parity fragment {i - k}")
        for frag in data_frags:
            views.add(frag, False)
        for frag in parity_frags:
            views.add(frag, True)
        views.check_outputs(k)
        with nogil:
            _run(k, self.m, self.encode_tables, views.ptrs, &views.ptrs[k], views.length)

    def decode(self, frags, want, out):
        """Rebuild the fragments numbered in want into out (same order) from k of frags.

        frags has k+m entries, None for a lost fragment; the first k supplied ones are read (data
        before parity). Every wanted fragment must be None in frags: it is rebuilt, not copied.
        """
        cdef int k = self.k, n = self.k + self.m, i
        frags = tuple(frags)
        want = tuple([index(w) for w in want])
        out = tuple(out)
        if len(frags) != n:
            raise ValueError(f"decode needs {n} fragments (None for a lost one), got {len(frags)}")
        if len(out) != len(want):
            raise ValueError(f"decode got {len(want)} wanted fragments but {len(out)} output buffers")
        for w in want:
            if not 0 <= w < n:
                raise ValueError(f"wanted fragment {w} is out of range 0..{n - 1}")
            if frags[w] is not None:
                raise ValueError(f"wanted fragment {w} was supplied: pass None for each fragment to rebuild")
        if len(set(want)) != len(want):
            raise ValueError(f"wanted fragments {list(want)} repeat an index")
        survivors = tuple([i for i in range(n) if frags[i] is not None])
        if len(survivors) < k:
            raise NotEnoughFragments(len(survivors), k)
        if not want:
            return
        survivors = survivors[:k]
        tables = self._decode_tables(survivors, want)

        cdef _Views views = _Views(
            lambda i: f"fragment {survivors[i]}" if i < k else f"output {i - k} (fragment {want[i - k]})")
        for i in survivors:
            views.add(frags[i], False)
        for buf in out:
            views.add(buf, True)
        views.check_outputs(k)
        cdef unsigned char *table_ptr = <unsigned char *>(<char *>tables)
        cdef int rows = len(want)
        with nogil:
            _run(k, rows, table_ptr, views.ptrs, &views.ptrs[k], views.length)

    cdef bytes _decode_tables(self, tuple survivors, tuple want):
        """The ISA-L tables that map the survivors to the wanted fragments, through the LRU."""
        key = (survivors, want)
        tables = self.decode_cache.pop(key, None)
        if tables is None:
            tables = self._build_decode_tables(survivors, want)
        if self.decode_cache_size:
            self.decode_cache[key] = tables
            while len(self.decode_cache) > self.decode_cache_size:
                self.decode_cache.popitem(last=False)
        return tables

    cdef bytes _build_decode_tables(self, tuple survivors, tuple want):
        """Invert the survivors' rows; a lost data row is a row of the inverse, a lost parity row
        is its encode row times the inverse."""
        cdef int k = self.k, rows = len(want), i, j, r, w
        cdef unsigned char sub[MAX_FRAGMENTS * MAX_FRAGMENTS]
        cdef unsigned char inv[MAX_FRAGMENTS * MAX_FRAGMENTS]
        cdef unsigned char coef[MAX_FRAGMENTS * MAX_FRAGMENTS]
        cdef unsigned char tables[MAX_TABLES]
        cdef unsigned char acc
        for i in range(k):
            memcpy(&sub[i * k], &self.matrix[<int>survivors[i] * k], k)
        if gf_invert_matrix(sub, inv, k) != 0:
            # Unreachable with a Cauchy matrix; a failure here means a corrupted codec.
            raise ArithmeticError(f"gf_invert_matrix: rows {list(survivors)} of the {self!r} matrix are singular")
        for r in range(rows):
            w = want[r]
            if w < k:
                memcpy(&coef[r * k], &inv[w * k], k)
            else:
                for j in range(k):
                    acc = 0
                    for i in range(k):
                        acc ^= gf_mul(self.matrix[w * k + i], inv[i * k + j])
                    coef[r * k + j] = acc
        ec_init_tables(k, rows, coef, tables)
        return (<char *>tables)[:32 * k * rows]
