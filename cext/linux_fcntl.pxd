# Declarations from <fcntl.h> that Cython's posix/fcntl.pxd lacks: Linux-only (glibc, _GNU_SOURCE,
# which Python.h defines).
from posix.types cimport off_t


cdef extern from "<fcntl.h>" nogil:
    enum: SYNC_FILE_RANGE_WRITE
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
