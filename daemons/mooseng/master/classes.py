"""Storage classes: how the chunks of a file are made redundant.

A class either keeps `copies` full replicas of every chunk or splits each chunk into `k` data and
`m` parity fragments (`ec=(k, m)`). Placement and under-goal accounting only need `goal`, the number
of pieces a healthy chunk has (copies, or k + m), so erasure coding plugs in without touching them.
"""

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class StorageClass:
    name: str
    copies: int | None = None
    ec: tuple[int, int] | None = None
    tier: str = "standard"

    def __post_init__(self):
        if (self.copies is None) == (self.ec is None):
            raise ValueError(f"storage class {self.name!r}: give exactly one of copies or ec")
        if self.copies is not None and (type(self.copies) is not int or self.copies < 1):
            raise ValueError(f"storage class {self.name!r}: copies must be a positive integer")
        if self.ec is not None:
            ec = self.ec
            if not isinstance(ec, (tuple, list)) or len(ec) != 2 or not all(type(x) is int and x >= 1 for x in ec):
                raise ValueError(f"storage class {self.name!r}: ec must be (k, m) with k, m >= 1")
            object.__setattr__(self, "ec", tuple(self.ec))

    @property
    def goal(self) -> int:
        """Pieces a healthy chunk has: full copies, or data + parity fragments."""
        return self.copies if self.ec is None else self.ec[0] + self.ec[1]

    @property
    def available(self) -> bool:
        """Erasure-coded classes need the EC data path, which has not landed yet."""
        return self.ec is None

    def describe(self) -> str:
        if self.ec is None:
            return f"{self.copies} {'copy' if self.copies == 1 else 'copies'}"
        return f"erasure coding {self.ec[0]}+{self.ec[1]}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "copies": self.copies,
            "ec": list(self.ec) if self.ec else None,
            "goal": self.goal,
            "tier": self.tier,
            "available": self.available,
            "description": self.describe(),
        }


DEFAULT = "default"

BUILTIN = (
    StorageClass(DEFAULT, copies=2, tier="standard"),
    StorageClass("fast", copies=3, tier="hot"),
    StorageClass("archive", ec=(8, 4), tier="cold"),
)

CLASSES = MappingProxyType({c.name: c for c in BUILTIN})
