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
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uintptr_t
from libc.string cimport memcpy, memset

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


cdef class _Pieces:
    """The (chunk offset, buffer) pieces of one encode_striped call, held for as long as it runs."""

    cdef Py_buffer *views
    cdef Py_ssize_t *offsets
    cdef Py_ssize_t count

    def __cinit__(self, Py_ssize_t n):
        self.count = 0
        self.views = <Py_buffer *>PyMem_Malloc(max(n, 1) * sizeof(Py_buffer))
        self.offsets = <Py_ssize_t *>PyMem_Malloc(max(n, 1) * sizeof(Py_ssize_t))
        if self.views == NULL or self.offsets == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.count):
            PyBuffer_Release(&self.views[i])
        PyMem_Free(self.views)
        PyMem_Free(self.offsets)

    cdef int add(self, Py_ssize_t offset, obj) except -1:
        """Take a contiguous view of a piece; pieces must come sorted and disjoint."""
        cdef Py_ssize_t i = self.count
        if offset < 0:
            raise ValueError(f"piece {i} is at offset {offset}, before the chunk")
        try:
            PyObject_GetBuffer(obj, &self.views[i], PyBUF_SIMPLE)
        except (TypeError, BufferError) as e:
            raise TypeError(f"piece {i}: need a contiguous buffer: {e}") from None
        self.offsets[i] = offset
        self.count += 1
        if i and offset < self.offsets[i - 1] + self.views[i - 1].len:
            raise ValueError(f"piece {i} at offset {offset} overlaps or precedes piece {i - 1} "
                             f"(offset {self.offsets[i - 1]}, {self.views[i - 1].len} bytes)")
        return 0


cdef void _fill(unsigned char *dst, Py_ssize_t a, Py_ssize_t n, Py_ssize_t stop, _Pieces pieces,
                Py_ssize_t *cursor) noexcept nogil:
    """dst[0:n] = chunk bytes [a, a+n): the pieces' bytes, zeros where none is or from stop on.
    *cursor is the first piece that may still matter; callers go forward through the chunk."""
    cdef Py_ssize_t end = min(a + n, max(stop, a)), start, size, take
    cdef Py_ssize_t j = cursor[0]
    cdef unsigned char *out = dst
    while a < end:
        while j < pieces.count and pieces.offsets[j] + pieces.views[j].len <= a:
            j += 1
        if j == pieces.count or pieces.offsets[j] >= end:
            break
        start, size = pieces.offsets[j], pieces.views[j].len
        if start > a:
            memset(out, 0, start - a)
            out += start - a
            a = start
        take = min(end, start + size) - a
        memcpy(out, <unsigned char *>pieces.views[j].buf + (a - start), take)
        out += take
        a += take
    cursor[0] = j
    memset(out, 0, n - (out - dst))


cdef int _check_apart(_Views parts, _Pieces pieces) except -1:
    """Refuse a piece that overlaps a part buffer: laying it out would overwrite its own source."""
    cdef Py_ssize_t i, j
    cdef uintptr_t a, b, n
    if parts.length == 0:
        return 0
    for j in range(pieces.count):
        b, n = <uintptr_t>pieces.views[j].buf, <uintptr_t>pieces.views[j].len
        for i in range(parts.count):
            a = <uintptr_t>parts.ptrs[i]
            if n and a < b + n and b < a + <uintptr_t>parts.length:
                raise ValueError(f"piece {j} overlaps part {i}")
    return 0


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

    def encode_striped(self, Py_ssize_t block, Py_ssize_t base, pieces, parts, Py_ssize_t stop=-1):
        """Lay chunk bytes out in the striped layout and encode them, all in one call.

        parts: k+m writable buffers of one length, a whole number of rows of `block` bytes. Row r
        of data part i gets chunk bytes [base + (r*k + i) * block, ... + block) from `pieces`,
        (chunk offset, buffer) pairs sorted and disjoint; bytes no piece covers, or from chunk
        offset `stop` on (if >= 0), are zeros. Each row's parity is computed right after its data
        is laid out, while it is still in the CPU's cache, with the GIL released throughout.
        """
        cdef int k = self.k, m = self.m, i
        cdef Py_ssize_t rows, r, cursor = 0, a
        if not 1 <= block <= MAX_SLICE or base < 0:
            raise ValueError(f"encode_striped: block {block} must be 1..{MAX_SLICE} and base {base} >= 0")
        parts = tuple(parts)
        if len(parts) != k + m:
            raise ValueError(f"encode_striped needs {k + m} part buffers, got {len(parts)}")
        cdef _Views views = _Views(lambda i: f"part {i}")
        for part in parts:
            views.add(part, True)
        views.check_outputs(0)
        if views.length % block:
            raise ValueError(f"part buffers of {views.length} bytes are not whole rows of {block} bytes")
        pieces = [(index(offset), data) for offset, data in pieces]
        cdef _Pieces held = _Pieces(len(pieces))
        for offset, data in pieces:
            held.add(offset, data)
        _check_apart(views, held)
        rows = views.length // block
        if stop < 0:
            stop = base + rows * k * block
        cdef unsigned char *d[MAX_FRAGMENTS]
        with nogil:
            for r in range(rows):
                for i in range(k + m):
                    d[i] = views.ptrs[i] + r * block
                a = base + r * k * block
                for i in range(k):
                    _fill(d[i], a + i * block, block, stop, held, &cursor)
                ec_encode_data(<int>block, k, m, self.encode_tables, d, &d[k])

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
