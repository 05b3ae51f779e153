"""Type stubs for cext/ec.pyx: Reed-Solomon erasure coding over GF(2^8) with ISA-L."""

from collections.abc import Iterable, Sequence
from typing import SupportsIndex

from _typeshed import ReadableBuffer, WriteableBuffer

class NotEnoughFragments(Exception):
    available: int
    needed: int
    def __init__(self, available: int, needed: int) -> None: ...

class Codec:
    @property
    def k(self) -> int: ...
    @property
    def m(self) -> int: ...
    def __init__(self, k: int, m: int, *, decode_cache_size: int = 64) -> None: ...
    def encode(self, data_frags: Iterable[ReadableBuffer], parity_frags: Iterable[WriteableBuffer]) -> None: ...
    def encode_striped(
        self,
        block: int,
        base: int,
        pieces: Iterable[tuple[SupportsIndex, ReadableBuffer]],
        parts: Iterable[WriteableBuffer],
        stop: int = -1,
    ) -> None: ...
    def decode(
        self,
        frags: Sequence[ReadableBuffer | None],
        want: Iterable[SupportsIndex],
        out: Iterable[WriteableBuffer],
    ) -> None: ...
