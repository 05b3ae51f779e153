# cython: language_level=3
"""Block I/O and CRC32 for chunk files, with the GIL released around every system and ISA-L call.

A chunk is a run of 64 KiB blocks, each protected by a CRC32 (ISA-L crc32_gzip_refl, the zlib.crc32
function) taken over the whole block with zeros past the end of the data. The CRC table is passed as
a writable bytes-like object holding little-endian u32, exactly as it sits in the chunk file header,
so the store writes it to disk without conversion.

`data_start` is the file offset of chunk byte 0, `data_length` the number of data bytes the chunk
holds: bytes at and past it read as zeros whatever the file contains.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.errno cimport EINTR, EIO, errno
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.types cimport off_t
from posix.unistd cimport pread, pwrite

from isal_crc cimport crc32_gzip_refl
from linux_fcntl cimport SYNC_FILE_RANGE_WRITE, sync_file_range

import os

cdef enum:
    _BLOCK = 65536
    # Below this many bytes, releasing the GIL costs more than the CRC itself.
    _NOGIL_MIN = 4096

# Static storage: zero-initialised, never written.
cdef unsigned char _zeros[_BLOCK]
cdef uint32_t _zero_crc = crc32_gzip_refl(0, _zeros, _BLOCK)

BLOCK_SIZE = _BLOCK
ZERO_BLOCK_CRC = _zero_crc


class CrcMismatch(Exception):
    """A block's content does not match its CRC table entry."""

    def __init__(self, block):
        super().__init__(f"CRC mismatch in block {block}")
        self.block = block


cdef inline uint32_t _get_le32(const unsigned char *p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline void _put_le32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)
    p[2] = <unsigned char>(v >> 16)
    p[3] = <unsigned char>(v >> 24)


cdef int _read_full(int fd, unsigned char *buf, size_t n, uint64_t pos) noexcept nogil:
    """Read n bytes at pos, retrying short reads and EINTR; past EOF reads zeros. 0 or an errno."""
    cdef size_t done = 0
    cdef ssize_t r
    while done < n:
        r = pread(fd, buf + done, n - done, <off_t>(pos + done))
        if r > 0:
            done += <size_t>r
        elif r == 0:
            memset(buf + done, 0, n - done)
            return 0
        elif errno != EINTR:
            return errno
    return 0


cdef int _write_full(int fd, const unsigned char *buf, size_t n, uint64_t pos) noexcept nogil:
    """Write n bytes at pos, retrying short writes and EINTR. 0 or an errno."""
    cdef size_t done = 0
    cdef ssize_t r
    while done < n:
        r = pwrite(fd, buf + done, n - done, <off_t>(pos + done))
        if r > 0:
            done += <size_t>r
        elif r == 0:
            return EIO
        elif errno != EINTR:
            return errno
    return 0


cdef int _fill(int fd, unsigned char *dst, uint64_t data_start, uint64_t lo, uint64_t hi,
               uint64_t data_length) noexcept nogil:
    """dst <- chunk bytes [lo, hi): the file below data_length, zeros from there on."""
    cdef uint64_t stop = hi if hi < data_length else data_length
    cdef int err
    if stop > lo:
        err = _read_full(fd, dst, stop - lo, data_start + lo)
        if err:
            return err
    else:
        stop = lo
    memset(dst + (stop - lo), 0, hi - stop)
    return 0


cdef inline bint _block_ok(const unsigned char *block, uint64_t index, uint64_t data_length,
                           const unsigned char *table) noexcept nogil:
    """A block wholly past the data is zeros: compare with the known CRC instead of computing it."""
    cdef uint32_t want = _get_le32(table + 4 * index)
    if index * _BLOCK >= data_length:
        return want == _zero_crc
    return crc32_gzip_refl(0, block, _BLOCK) == want


cdef int64_t _read_verify(int fd, unsigned char *out, uint64_t n, uint64_t data_start, uint64_t offset,
                          uint64_t data_length, const unsigned char *table, int *err) noexcept nogil:
    """Fill out with chunk bytes [offset, offset+n) and check every block touched.

    Returns -1 when all blocks match, else the first bad block; -2 with *err set on an I/O error.
    Whole blocks are read straight into out in one pread; a partial first or last block is read
    whole into a scratch block, because its CRC covers all of it.
    """
    cdef uint64_t end = offset + n
    cdef uint64_t pos = offset
    cdef uint64_t bstart, run_end, hi, b
    cdef unsigned char *scratch = NULL
    cdef int64_t result = -1
    while pos < end:
        bstart = pos - pos % _BLOCK
        if pos == bstart and end - pos >= _BLOCK:
            run_end = end - (end - pos) % _BLOCK
            err[0] = _fill(fd, out + (pos - offset), data_start, pos, run_end, data_length)
            if err[0]:
                result = -2
                break
            b = pos
            while b < run_end:
                if not _block_ok(out + (b - offset), b // _BLOCK, data_length, table):
                    result = <int64_t>(b // _BLOCK)
                    break
                b += _BLOCK
            if result != -1:
                break
            pos = run_end
        else:
            if scratch == NULL:
                scratch = <unsigned char *>malloc(_BLOCK)
                if scratch == NULL:
                    err[0] = 12  # ENOMEM
                    result = -2
                    break
            err[0] = _fill(fd, scratch, data_start, bstart, bstart + _BLOCK, data_length)
            if err[0]:
                result = -2
                break
            if not _block_ok(scratch, bstart // _BLOCK, data_length, table):
                result = <int64_t>(bstart // _BLOCK)
                break
            hi = bstart + _BLOCK if bstart + _BLOCK < end else end
            memcpy(out + (pos - offset), scratch + (pos - bstart), hi - pos)
            pos = hi
    free(scratch)
    return result


cdef int64_t _write_update(int fd, const unsigned char *data, uint64_t n, uint64_t data_start,
                           uint64_t offset, uint64_t data_length, unsigned char *table,
                           int *err) noexcept nogil:
    """Write data at chunk offset and set the CRC of every block touched.

    A partially overwritten block keeps the rest of its old content, so that content is read and
    checked first: a bad block is reported (return value >= 0) before anything is written, rather
    than given a fresh CRC that would hide the damage. The table changes only after the data is
    written. Returns -1 on success, -2 with *err set on an I/O error.
    """
    cdef uint64_t end = offset + n
    cdef uint64_t first = offset // _BLOCK
    cdef uint64_t last = (end - 1) // _BLOCK
    cdef uint64_t b, bstart, lo, hi
    cdef uint32_t crcs[1024]
    cdef unsigned char *scratch = NULL
    cdef int64_t result = -1
    b = first
    while b <= last:
        bstart = b * _BLOCK
        lo = offset if offset > bstart else bstart
        hi = end if end < bstart + _BLOCK else bstart + _BLOCK
        if lo == bstart and hi == bstart + _BLOCK:
            crcs[b - first] = crc32_gzip_refl(0, data + (bstart - offset), _BLOCK)
        else:
            if scratch == NULL:
                scratch = <unsigned char *>malloc(_BLOCK)
                if scratch == NULL:
                    err[0] = 12  # ENOMEM
                    result = -2
                    break
            err[0] = _fill(fd, scratch, data_start, bstart, bstart + _BLOCK, data_length)
            if err[0]:
                result = -2
                break
            if not _block_ok(scratch, b, data_length, table):
                result = <int64_t>b
                break
            memcpy(scratch + (lo - bstart), data + (lo - offset), hi - lo)
            crcs[b - first] = crc32_gzip_refl(0, scratch, _BLOCK)
        b += 1
    free(scratch)
    if result != -1:
        return result
    err[0] = _write_full(fd, data, n, data_start + offset)
    if err[0]:
        return -2
    b = first
    while b <= last:
        _put_le32(table + 4 * b, crcs[b - first])
        b += 1
    return -1


cdef _check_span(uint64_t offset, uint64_t n, Py_ssize_t table_len):
    if table_len % 4:
        raise ValueError(f"CRC table of {table_len} bytes is not a whole number of u32")
    if offset + n > <uint64_t>(table_len // 4) * _BLOCK or offset + n < offset:
        raise ValueError(f"range {offset}+{n} is beyond the {table_len // 4} blocks of the CRC table")


cdef _raise_result(int64_t result, int err):
    if result == -2:
        raise OSError(err, os.strerror(err))
    if result >= 0:
        raise CrcMismatch(result)


def crc32(data, start=0):
    """CRC32 of any contiguous buffer, continuing from start: the value zlib.crc32 gives."""
    cdef Py_buffer view
    cdef uint32_t crc = <uint32_t>(start & 0xFFFFFFFF)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= _NOGIL_MIN:
            with nogil:
                crc = crc32_gzip_refl(crc, <const unsigned char *>view.buf, <uint64_t>view.len)
        else:
            crc = crc32_gzip_refl(crc, <const unsigned char *>view.buf, <uint64_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return crc


def crc32_blocks(data, table):
    """Write the CRC of each 64 KiB block of data into table (LE u32); returns the block count.

    A last partial block is taken with zeros up to 64 KiB, as the chunk format demands; the zeros
    come from a static block, so nothing is allocated or copied.
    """
    cdef Py_buffer src, dst
    cdef uint64_t n, nblocks, i, tail
    cdef uint32_t crc
    PyObject_GetBuffer(data, &src, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(table, &dst, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            n = <uint64_t>src.len
            nblocks = (n + _BLOCK - 1) // _BLOCK
            if <uint64_t>dst.len < 4 * nblocks:
                raise ValueError(f"CRC table of {dst.len} bytes cannot hold {nblocks} entries")
            with nogil:
                i = 0
                while i < nblocks:
                    tail = n - i * _BLOCK if n - i * _BLOCK < _BLOCK else _BLOCK
                    crc = crc32_gzip_refl(0, <const unsigned char *>src.buf + i * _BLOCK, tail)
                    if tail < _BLOCK:
                        crc = crc32_gzip_refl(crc, _zeros, _BLOCK - tail)
                    _put_le32(<unsigned char *>dst.buf + 4 * i, crc)
                    i += 1
        finally:
            PyBuffer_Release(&dst)
    finally:
        PyBuffer_Release(&src)
    return nblocks


def pread_verify(int fd, out, uint64_t data_start, uint64_t offset, uint64_t data_length, table):
    """Read chunk bytes [offset, offset+len(out)) into out, checking the CRC of every block touched.

    Raises CrcMismatch naming the first bad block (out then holds garbage), OSError on I/O errors.
    """
    cdef Py_buffer dst, tbl
    cdef int64_t result = -1
    cdef int err = 0
    PyObject_GetBuffer(out, &dst, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(table, &tbl, PyBUF_SIMPLE)
        try:
            _check_span(offset, <uint64_t>dst.len, tbl.len)
            if dst.len:
                with nogil:
                    result = _read_verify(fd, <unsigned char *>dst.buf, <uint64_t>dst.len, data_start,
                                          offset, data_length, <const unsigned char *>tbl.buf, &err)
        finally:
            PyBuffer_Release(&tbl)
    finally:
        PyBuffer_Release(&dst)
    _raise_result(result, err)


def pwrite_update(int fd, data, uint64_t data_start, uint64_t offset, uint64_t data_length, table):
    """Write data at chunk offset and update the CRC entries (LE u32 in table) of the blocks touched.

    Raises CrcMismatch, with nothing written, if a partially overwritten block was already bad;
    OSError on I/O errors (the table is then unchanged).
    """
    cdef Py_buffer src, tbl
    cdef int64_t result = -1
    cdef int err = 0
    PyObject_GetBuffer(data, &src, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(table, &tbl, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            _check_span(offset, <uint64_t>src.len, tbl.len)
            if src.len > 1024 * _BLOCK:
                raise ValueError(f"write of {src.len} bytes is larger than a chunk")
            if src.len:
                with nogil:
                    result = _write_update(fd, <const unsigned char *>src.buf, <uint64_t>src.len,
                                           data_start, offset, data_length, <unsigned char *>tbl.buf, &err)
        finally:
            PyBuffer_Release(&tbl)
    finally:
        PyBuffer_Release(&src)
    _raise_result(result, err)


def start_writeback(int fd, uint64_t offset, uint64_t length):
    """Start writing [offset, offset+length) of the file to disk without waiting for it.

    Streaming writes call this as they go, so that the fdatasync that commits them finds little
    left to flush instead of the whole chunk (Linux sync_file_range, SYNC_FILE_RANGE_WRITE).
    """
    cdef int rc
    cdef int err = 0
    with nogil:
        rc = sync_file_range(fd, <off_t>offset, <off_t>length, SYNC_FILE_RANGE_WRITE)
        if rc != 0:
            err = errno
    if rc != 0:
        raise OSError(err, os.strerror(err))
