"""Helpers shared by tests (not tests themselves): `from support.lincheck import check`.

Importable as `support` because pytest puts `tests/` on sys.path when it loads tests/conftest.py
(rootdir-relative "prepend" import mode; `tests/` has no __init__.py).
"""
