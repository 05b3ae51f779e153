"""Storage classes, and the layout of a chunk under its class.

A class either keeps `copies` full replicas of every chunk or splits each chunk into `k` data and
`m` parity parts (`ec=(k, m)`, docs/DESIGN.md "Erasure coding"). The built-in classes are always
there; operators add their own (namespace ops class_create/class_delete), which the namespace
keeps in the replicated metadata.

A chunk's *layout* is what its pieces are now: None (full copies) or (k, m) (parts). It is set
from the file's class when the chunk is made and changes only when a conversion completes
(namespace op set_layout). `target()` is the layout the class asks for next: the class's own, except
that parts of another geometry become copies first, because part ids do not say their geometry
(part p of 8+4 and part p of 4+2 have the same id), so the two sets must never exist at one version.
"""

import re
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

MAX_COPIES = 9  # as MooseFS's goal
MAX_PARTS = 32  # k + m, what the ISA-L binding supports
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
CONVERSION_COPIES = 2  # full copies a chunk keeps while it converts from parts to another geometry


@dataclass(frozen=True)
class StorageClass:
    name: str
    copies: int | None = None
    ec: tuple[int, int] | None = None
    tier: str = "standard"
    builtin: bool = False

    def __post_init__(self):
        if type(self.name) is not str or not NAME_RE.fullmatch(self.name):
            raise ValueError(f"bad storage class name {self.name!r:.60}: 1 to 32 letters, digits, '_', '.', '-', "
                             "starting with a letter or digit")
        if (self.copies is None) == (self.ec is None):
            raise ValueError(f"storage class {self.name!r}: give exactly one of copies or ec")
        if self.copies is not None and (type(self.copies) is not int or not 1 <= self.copies <= MAX_COPIES):
            raise ValueError(f"storage class {self.name!r}: copies must be 1 to {MAX_COPIES}, got {self.copies!r}")
        if self.ec is not None:
            ec = self.ec
            if not isinstance(ec, (tuple, list)) or len(ec) != 2 or not all(type(x) is int and x >= 1 for x in ec):
                raise ValueError(f"storage class {self.name!r}: ec must be K+M with K, M >= 1, got {ec!r:.40}")
            if ec[0] + ec[1] > MAX_PARTS:
                raise ValueError(f"storage class {self.name!r}: ec {ec[0]}+{ec[1]} has more than {MAX_PARTS} parts")
            object.__setattr__(self, "ec", tuple(self.ec))

    @cached_property
    def goal(self) -> int:
        """Pieces a healthy chunk has: full copies, or data + parity parts."""
        return self.copies if self.ec is None else self.ec[0] + self.ec[1]

    @cached_property
    def keeps(self) -> int:
        """Full copies a chunk of this class keeps while (or once) it is in copies."""
        return goal(None, self)

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
            "builtin": self.builtin,
            "description": self.describe(),
        }


DEFAULT = "default"

BUILTIN = (
    StorageClass(DEFAULT, copies=2, tier="standard", builtin=True),
    StorageClass("fast", copies=3, tier="hot", builtin=True),
    StorageClass("archive", ec=(8, 4), tier="cold", builtin=True),
)

BUILTIN_CLASSES = MappingProxyType({c.name: c for c in BUILTIN})


# --- a chunk's layout under its class ---------------------------------------------------------------


def target(layout: tuple[int, int] | None, sclass: StorageClass) -> tuple[int, int] | None:
    """The layout a chunk of this layout converts to next (== layout when it needs none)."""
    if sclass.ec is None or layout is None or layout == sclass.ec:
        return sclass.ec
    return None  # parts of another geometry: copies first


def goal(layout: tuple[int, int] | None, sclass: StorageClass) -> int:
    """Pieces a healthy chunk of this layout has: k + m parts, or the class's copies (a chunk of
    an erasure-coded class still in copies keeps CONVERSION_COPIES until it is encoded)."""
    if layout is not None:
        return layout[0] + layout[1]
    return sclass.copies if sclass.ec is None else CONVERSION_COPIES


def pieces(layout: tuple[int, int] | None) -> range:
    """The part numbers of a layout: -1 (a full copy) for copies, 0..k+m-1 for parts."""
    return range(-1, 0) if layout is None else range(layout[0] + layout[1])


def wanted(part: int, layout: tuple[int, int] | None, sclass: StorageClass) -> bool:
    """Whether a piece (part -1: a full copy) belongs to the chunk's layout or to the one it
    converts to; any other piece is deleted."""
    return part in pieces(layout) or part in pieces(target(layout, sclass))
