# Declarations from <isa-l/crc.h>, ISA-L 2.30 (Debian libisal-dev).
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "<isa-l/crc.h>" nogil:
    # Reflected CRC32 IEEE (RFC 1952): the same values as zlib.crc32(buf, init_crc).
    uint32_t crc32_gzip_refl(uint32_t init_crc, const unsigned char *buf, uint64_t len)
