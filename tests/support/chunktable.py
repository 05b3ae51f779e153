"""A stand-in for the Namespace calls Registry.follow() makes, over a chunk table a test sets."""

from mooseng.master.namespace import ChunkInfo


def info(version: int, sclass: str, goal: int, ec=None, target="same", copies=None, length=0) -> ChunkInfo:
    """A chunk of layout `ec` (None: copies) converting to `target` (default: none to do)."""
    target = ec if target == "same" else target
    return ChunkInfo(version, sclass, ec, target, goal, goal if copies is None else copies, length, 0)


class TableNamespace:
    """(chunk_id, version, class name, goal[, ec[, target]]) rows that a test changes at will.
    take_chunk_changes() always answers None (nothing recorded), so the registry counts the
    whole table afresh."""

    def __init__(self, rows):
        self._rows = rows

    def take_chunk_changes(self):
        return None

    def iter_chunks(self):
        for chunk_id, version, sclass, goal, *layout in self._rows:
            yield chunk_id, info(version, sclass, goal, *layout)
