"""Block I/O and CRC32 for chunk files (cext/chunkio.pyx); the GIL is released around C calls.

CRC tables are bytes-like objects of little-endian u32, one entry per 64 KiB block.
"""

from _typeshed import ReadableBuffer, WriteableBuffer

BLOCK_SIZE: int
ZERO_BLOCK_CRC: int

class CrcMismatch(Exception):
    block: int
    def __init__(self, block: int) -> None: ...

def crc32(data: ReadableBuffer, start: int = 0) -> int: ...
def crc32_blocks(data: ReadableBuffer, table: WriteableBuffer) -> int: ...
def pread_verify(
    fd: int, out: WriteableBuffer, data_start: int, offset: int, data_length: int, table: ReadableBuffer
) -> None: ...
def pwrite_update(
    fd: int, data: ReadableBuffer, data_start: int, offset: int, data_length: int, table: WriteableBuffer
) -> None: ...
def start_writeback(fd: int, offset: int, length: int) -> None: ...
