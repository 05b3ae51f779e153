"""The mooseng command's parsing and text output, against a stand-in master (the real one is in
tests/integration/test_cli.py)."""

import argparse

import pytest

from mooseng.cli import main as cli
from mooseng.errors import FsError, QuietError


class FakeMaster:
    """Answers `meta` ops from a dict; records the calls."""

    endpoints = ["127.0.0.1:1"]

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def call(self, op, **args):
        self.calls.append((op, args))
        answer = self.answers[op]
        if isinstance(answer, FsError):
            raise answer
        return answer(**args) if callable(answer) else answer


def args(**kw):
    return argparse.Namespace(**kw)


@pytest.mark.parametrize("text", ["8x4", "8+", "+4", "-1+4", "8+4+1", ""])
def test_ec_geometry_must_read_k_plus_m(text):
    with pytest.raises(QuietError) as info:
        cli.parse_ec(text)
    assert info.value.exitcode == 2 and f"got {text!r}" in str(info.value)
    assert cli.parse_ec("8+4") == [8, 4] and cli.parse_ec("0+4") == [0, 4]  # the master judges 0


def test_class_create_needs_exactly_one_redundancy():
    master = FakeMaster({})
    for copies, ec in ((None, None), (2, "8+4")):
        with pytest.raises(QuietError) as info:
            cli.cmd_class(master, args(action="create", name="x", copies=copies, ec=ec, tier="standard"))
        assert info.value.exitcode == 2
    assert master.calls == []


def test_class_errors_from_the_master_are_one_line_with_exit_1():
    master = FakeMaster({"class_create": FsError(22, "storage class 'z': ec 30+3 has more than 32 parts")})
    with pytest.raises(QuietError) as info:
        cli.cmd_class(master, args(action="create", name="z", copies=None, ec="30+3", tier="standard"))
    assert (str(info.value), info.value.exitcode) == (
        "class create z: storage class 'z': ec 30+3 has more than 32 parts", 1)
    assert master.calls == [("class_create", {"name": "z", "tier": "standard", "ec": [30, 3]})]


def test_fileinfo_lists_each_part_with_its_index_chunkserver_and_disk():
    def piece(part, sid, disk, valid=True, state="valid"):
        return {"part": part, "server_id": sid, "address": f"10.0.0.{sid}:9420", "disk": disk, "version": 3,
                "valid": valid, "state": state}

    copies = [piece(p, 1 + p % 3, p // 3) for p in range(12) if p != 4]
    copies.append(piece(4, 2, 1, False, "stale"))
    info = {
        "attr": {"size": 5000}, "class": {"name": "archive", "description": "erasure coding 8+4"},
        "progress": {"converted": 1, "total": 2},
        "chunks": [
            {"index": 0, "chunk_id": 7, "version": 3, "ec": [8, 4], "target": [8, 4], "state": "undergoal",
             "copies": copies},
            {"index": 1, "chunk_id": 9, "version": 1, "ec": None, "target": [8, 4], "state": "stable",
             "copies": [piece(-1, 1, 0), piece(-1, 2, 3)]},
        ],
    }  # fmt: skip
    master = FakeMaster({"lookup": {"ino": 5}, "fileinfo": info})
    _, lines = cli.cmd_fileinfo(master, args(path="mfs:/f"))
    assert lines[:3] == [
        "mfs:/f: inode 5, 5000 bytes, class archive (erasure coding 8+4)",
        "\tconverting: 1 of 2 chunks in the class's layout",
        "\tchunk 0: 0000000000000007_00000003 (id:7 ver:3) parts 8+4, undergoal",
    ]
    assert "\t\tpart 0: 10.0.0.1:9420 (chunkserver 1, disk 0): VALID" in lines
    assert "\t\tpart 11: 10.0.0.3:9420 (chunkserver 3, disk 3): VALID" in lines
    assert "\t\tpart 4: 10.0.0.2:9420 (chunkserver 2, disk 1): INVALID: STALE (version 3)" in lines
    assert "\tchunk 1: 0000000000000009_00000001 (id:9 ver:1), converting to parts 8+4" in lines
    assert lines[-2:] == ["\t\tcopy 1: 10.0.0.1:9420 (chunkserver 1, disk 0): VALID",
                          "\t\tcopy 2: 10.0.0.2:9420 (chunkserver 2, disk 3): VALID"]


def test_status_matrix_has_the_erasure_coding_line_once_something_was_built():
    chunks = {"total": 1, "by_class": {"archive": {"endangered": 1}}, "replication": {
        "chunks": 0, "bytes": 0, "failures": 0, "in_progress": 0, "built": 4, "built_bytes": 4 << 20,
        "build_failures": 1, "builds_in_progress": 2, "conversions": 3}}  # fmt: skip
    lines = cli.chunk_matrix(chunks)
    assert lines[-1] == ("erasure coding: 4 parts or copies (4.0 MiB) built, 1 failed, 2 in progress, "
                         "3 chunks converted")
    assert lines[2].split()[:3] == ["archive", "0", "1"]
    chunks["replication"].update(built=0, build_failures=0, builds_in_progress=0)
    assert not cli.chunk_matrix(chunks)[-1].startswith("erasure coding")
