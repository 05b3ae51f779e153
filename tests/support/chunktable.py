"""A stand-in for the Namespace calls Registry.follow() makes, over a chunk table a test sets."""


class TableNamespace:
    """(chunk_id, version, class name) rows that a test changes at will. take_chunk_changes()
    always answers None (nothing recorded), so the registry counts the whole table afresh."""

    def __init__(self, rows):
        self._rows = rows

    def take_chunk_changes(self):
        return None

    def iter_chunks(self):
        return iter(self._rows)
