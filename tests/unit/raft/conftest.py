"""Raft tests: the long simulation run (marked slow) runs only when asked for with -m slow.

It is deselected rather than skipped: under CI=true a skip counts as a failure (tests/conftest.py),
and a plain run of this directory must stay around a minute.
"""

from pathlib import Path

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    markexpr = config.option.markexpr or ""
    if "slow" in markexpr and "not slow" not in markexpr:
        return
    slow = {id(item) for item in items if item.get_closest_marker("slow") and HERE in item.path.parents}
    if slow:
        config.hook.pytest_deselected(items=[item for item in items if id(item) in slow])
        items[:] = [item for item in items if id(item) not in slow]
