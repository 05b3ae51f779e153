"""mooseng: look at and administer a MooseNG cluster (mfscli, mfsfileinfo, mfs[gs]etsclass, mfsscadmin in one).

PATH names a file in one of two ways:
  - a path inside a mounted MooseNG file system (found in /proc/mounts), e.g. /mnt/mooseng/dir/f;
  - a path inside the file system itself, `mfs:/dir/f`, which needs no mount.
Either way the CLI walks the path with the master's `lookup` op from the root inode, so the answer
is the master's view, not a client's cache. --master must name the cluster the mount belongs to.

Every command prints JSON instead of text with --json. Errors are one line on stderr and a
non-zero exit status (1; 2 for bad usage).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import posixpath
import re
import sys
from pathlib import Path

from mooseng import rpc, wire
from mooseng.client.masterclient import Cred, MasterClient
from mooseng.constants import ROOT_INODE
from mooseng.errors import FsError, QuietError

DEFAULT_MASTER = "127.0.0.1:9421"
MFS_PREFIX = "mfs:"
MOUNT_FSTYPE = "fuse.mooseng"  # mooseng-mount's subtype=mooseng


class Master:
    """The CLI's view of the master: `meta` calls as the invoking user, errors as one-line messages."""

    def __init__(self, endpoints: list[str], timeout_s: float):
        self.endpoints = endpoints
        self._client = MasterClient(endpoints, timeout_s=timeout_s)
        self._cred = Cred(os.getuid(), os.getgid(), tuple(os.getgroups()))

    def call(self, op: str, **args):
        """Run one op; FsError(errno) for file-system failures, QuietError if no master answers."""
        try:
            return self._client.call(op, args, self._cred)
        except FsError as exc:
            # MasterClient's way of saying that no endpoint answered within timeout_s.
            if exc.errno == errno.EIO and exc.message.startswith("master unreachable"):
                raise QuietError(f"master {','.join(self.endpoints)} unreachable") from None
            raise

    def close(self) -> None:
        self._client.close()


# --- paths ----------------------------------------------------------------------------------------


def fuse_mounts() -> list[tuple[str, Path, str]]:
    """(source, mount point, fstype) of every FUSE mount in /proc/mounts, octal escapes undone."""

    def unescape(text: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)

    mounts = []
    with open("/proc/mounts") as f:
        for line in f:
            source, target, fstype = line.split()[:3]
            if fstype == "fuse" or fstype.startswith("fuse."):
                mounts.append((unescape(source), Path(unescape(target)), fstype))
    return mounts


def fs_components(path: str) -> tuple[list[str], Path | None]:
    """The names leading from the file system's root to PATH, and PATH's real path if it is a
    mount path. A mount path follows symlinks, as the kernel does; in an mfs: path ".." is
    resolved by name, as a shell does, and a final symlink is the entry itself."""
    if path.startswith(MFS_PREFIX):
        inner = path[len(MFS_PREFIX):]
        if not inner.startswith("/"):
            raise QuietError(f"not an absolute file system path: {path} (write mfs:/dir/file)")
        return [p for p in posixpath.normpath("/" + inner.lstrip("/")).split("/") if p], None
    real = Path(os.path.realpath(path))
    mounts = [t for _, t, fstype in fuse_mounts() if fstype == MOUNT_FSTYPE and real.is_relative_to(t)]
    if not mounts:
        raise QuietError(f"not inside a MooseNG mount: {path} (name files in the file system as mfs:/dir/file)")
    return list(real.relative_to(max(mounts, key=lambda t: len(t.parts))).parts), real


def resolve(master: Master, path: str) -> int:
    """The inode of PATH, walked with `lookup` from the root inode.

    For a mount path the mount must show the same inode: otherwise the mount belongs to another
    cluster than --master, and acting on the master's file of that name (setclass -r!) would be wrong.
    """
    names, real = fs_components(path)
    if real is not None:
        try:
            mount_ino = os.stat(real).st_ino
        except FileNotFoundError:
            raise QuietError(f"no such file: {path}") from None
        except OSError as exc:
            raise QuietError(f"{path}: {exc.strerror}") from None
    ino = ROOT_INODE
    for name in names:
        try:
            ino = master.call("lookup", parent=ino, name=os.fsencode(name))["ino"]
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                raise QuietError(f"no such file: {path}") from None
            if exc.errno == errno.ENOTDIR:
                raise QuietError(f"not a directory on the way to: {path}") from None
            raise QuietError(f"{path}: {exc.message}") from None
    if real is not None and ino != mount_ino:
        raise QuietError(
            f"{path} is inode {mount_ino} in its mount but inode {ino} on master {','.join(master.endpoints)}: "
            "is that mount from another cluster? (pass its --master)"
        )
    return ino


# --- commands: each returns (JSON-able result, text lines) ----------------------------------------


def cmd_status(master: Master, args) -> tuple[dict, list[str]]:
    probes = [probe_master(ep) for ep in master.endpoints]
    masters = [summary for summary, _ in probes]
    # The leader's answer if a probe reached it; else MasterClient finds it (or says none answers).
    status = next((s for _, s in probes if s is not None), None) or master.call("status")
    result = {"masters": masters, **status}
    # Lag: how far each master's applied index is behind the highest commit index any reports.
    commit = max((m["commit"] for m in masters if "commit" in m), default=0)
    for m in masters:
        if "applied" in m:
            m["lag"] = max(0, commit - m["applied"])
    lines = ["masters:", f"  {'ENDPOINT':<21} {'NODE':<12} {'ROLE':<10} {'TERM':>6} {'APPLIED':>9} {'LAG':>6}"]
    for m in masters:
        if m["role"] == "unreachable":
            lines.append(f"  {m['endpoint']:<21} {'-':<12} unreachable")
            continue
        lines.append(
            f"  {m['endpoint']:<21} {m['node_id']:<12} {m['role']:<10} {m['term']:>6} {m['applied']:>9} {m['lag']:>6}"
        )
    servers = status["chunkservers"]
    alive = sum(1 for s in servers if s["state"] == "alive")
    lines.append(f"chunkservers: {alive} alive, {len(servers) - alive} down")
    lines.append(
        f"  {'ID':>4}  {'ADDRESS':<21} {'STATE':<6} {'CHUNKS':>7}  {'USED':>11} / {'TOTAL':<11} LAST HEARTBEAT"
    )
    for s in servers:
        used = sum(d["used_bytes"] for d in s["disks"])
        total = sum(d["total_bytes"] for d in s["disks"])
        lines.append(
            f"  {s['server_id']:>4}  {s['address']:<21} {s['state']:<6} {s['chunks']:>7}  "
            f"{human(used):>11} / {human(total):<11} {s['last_heartbeat_s']:.1f} s ago"
        )
        for d in s["disks"]:
            lines.append(
                f"        disk {d['index']}: {d['path']}  {d['state']}  {d['chunks']} chunks  "
                f"{human(d['used_bytes'])} / {human(d['total_bytes'])}"
            )
    lines += chunk_matrix(status["chunks"])
    space = status["space"]
    lines.append(
        f"space: {human(space['used_bytes'])} used, {human(space['free_bytes'])} free "
        f"of {human(space['total_bytes'])}; {status['inodes']} inodes"
    )
    return result, lines


# The chunk matrix's columns: (state in the master's status, heading), worst first as mfscli.
MATRIX = (("missing", "MISSING"), ("endangered", "ENDANGERED"), ("undergoal", "UNDERGOAL"),
          ("stable", "STABLE"), ("overgoal", "OVERGOAL"), ("deleting", "DELETING"))


def chunk_matrix(chunks: dict) -> list[str]:
    """Chunks by class and state (endangered: one valid copy left; deleting: in no file any
    more, copies not yet removed), then the replication counters."""
    lines = [f"chunks: {chunks['total']} total"]
    if chunks["by_class"]:
        lines.append(f"  {'CLASS':<10}" + "".join(f" {head:>10}" for _, head in MATRIX))
    for name, states in sorted(chunks["by_class"].items()):
        lines.append(f"  {name:<10}" + "".join(f" {states.get(state, 0):>10}" for state, _ in MATRIX))
    rep = chunks.get("replication")
    if rep:
        lines.append(f"replication: {rep['chunks']} chunks ({human(rep['bytes'])}) copied, {rep['failures']} failed, "
                     f"{rep['in_progress']} in progress")
        if rep.get("built") or rep.get("builds_in_progress") or rep.get("build_failures"):
            lines.append(f"erasure coding: {rep['built']} parts or copies ({human(rep['built_bytes'])}) built, "
                         f"{rep['build_failures']} failed, {rep['builds_in_progress']} in progress, "
                         f"{rep['conversions']} chunks converted")
    return lines


def layout(ec: list | None) -> str:
    return "copies" if ec is None else f"parts {ec[0]}+{ec[1]}"


def cmd_fileinfo(master: Master, args) -> tuple[dict, list[str]]:
    ino = resolve(master, args.path)
    info = master.call("fileinfo", ino=ino)
    attr, sclass = info["attr"], info["class"]
    result = {"path": args.path, "inode": ino, **info}
    lines = [f"{args.path}: inode {ino}, {attr['size']} bytes, class {sclass['name']} ({sclass['description']})"]
    progress = info.get("progress")
    if progress and progress["converted"] < progress["total"]:
        lines.append(f"\tconverting: {progress['converted']} of {progress['total']} chunks in the class's layout")
    for chunk in info["chunks"]:
        ec = chunk.get("ec")
        head = (f"\tchunk {chunk['index']}: {chunk['chunk_id']:016X}_{chunk['version']:08X} "
                f"(id:{chunk['chunk_id']} ver:{chunk['version']})")
        if ec is not None:
            head += f" {layout(ec)}, {chunk['state']}"
        if chunk.get("target", ec) != ec:
            head += f", converting to {layout(chunk['target'])}"
        lines.append(head)
        if not any(c["valid"] for c in chunk["copies"]):
            lines.append("\t\tno valid copies !!!")
        elif ec is not None and chunk["state"] == "missing":
            lines.append(f"\t\tfewer than {ec[0]} valid parts: unreadable !!!")
        copies = 0
        for piece in chunk["copies"]:
            disk = "?" if piece["disk"] is None else piece["disk"]
            why = piece.get("state", "invalid").upper()
            state = "VALID" if piece["valid"] else f"INVALID: {why} (version {piece['version']})"
            if piece.get("part", -1) < 0:
                copies += 1
                what = f"copy {copies}"
            else:
                what = f"part {piece['part']}"
            where = f"{piece['address']} (chunkserver {piece['server_id']}, disk {disk})"
            lines.append(f"\t\t{what}: {where}: {state}")
    if not info["chunks"]:
        lines.append("\tno chunks")
    return result, lines


def cmd_getclass(master: Master, args) -> tuple[dict, list[str]]:
    ino = resolve(master, args.path)
    sclass = master.call("getclass", ino=ino)
    return {"path": args.path, "inode": ino, "class": sclass}, [f"{args.path}: {sclass}"]


def cmd_setclass(master: Master, args) -> tuple[dict, list[str]]:
    ino = resolve(master, args.path)
    try:
        done = master.call("setclass", ino=ino, sclass=args.sclass, recursive=args.recursive)
    except FsError as exc:
        if exc.errno == errno.EINVAL:  # an unknown class, or a request the master refused
            names = [c["name"] for c in master.call("classes")]
            if args.sclass not in names:
                raise QuietError(f"no such storage class: {args.sclass} (classes: {', '.join(names)})") from None
        raise QuietError(f"cannot set class {args.sclass} on {args.path}: {exc.message}") from None
    result = {"path": args.path, "inode": ino, "class": args.sclass, "recursive": args.recursive, **done}
    line = f"{args.path}: {args.sclass} ({done['changed']} inode{'' if done['changed'] == 1 else 's'} changed"
    if done["skipped"]:
        line += f", {done['skipped']} skipped: not the owner"
    return result, [line + ")"]


def cmd_classes(master: Master, args) -> tuple[list, list[str]]:
    classes = master.call("classes")
    width = max([10, *(len(c["name"]) for c in classes)])
    lines = [f"{'NAME':<{width}} {'GOAL':>4}  {'REDUNDANCY':<22} {'TIER':<9} BUILT IN"]
    for c in classes:
        builtin = "yes" if c["builtin"] else "no"
        lines.append(f"{c['name']:<{width}} {c['goal']:>4}  {c['description']:<22} {c['tier']:<9} {builtin}")
    return classes, lines


def parse_ec(text: str) -> list[int]:
    """K+M as [k, m]; the master checks the geometry itself."""
    match = re.fullmatch(r"(\d+)\+(\d+)", text)
    if match is None:
        raise QuietError(f"class create: --ec: expected K+M (data+parity parts, e.g. 8+4), got {text!r}", 2)
    return [int(match.group(1)), int(match.group(2))]


def cmd_class(master: Master, args) -> tuple[dict, list[str]]:
    """class create NAME --copies N | --ec K+M [--tier T]; class delete NAME."""
    try:
        if args.action == "delete":
            master.call("class_delete", name=args.name)
            return {"action": "delete", "name": args.name}, [f"deleted storage class {args.name}"]
        if (args.copies is None) == (args.ec is None):
            raise QuietError("class create: give exactly one of --copies N or --ec K+M", 2)
        spec = {"copies": args.copies} if args.ec is None else {"ec": parse_ec(args.ec)}
        made = master.call("class_create", name=args.name, tier=args.tier, **spec)
    except FsError as exc:
        raise QuietError(f"class {args.action} {args.name}: {exc.message}") from None
    return made, [f"created storage class {made['name']}: {made['description']}, tier {made['tier']}"]


def cmd_master(master: Master, args) -> tuple[dict, list[str]]:
    """master add NAME=HOST:PORT | remove NAME | transfer-leader NAME: sent to the leader."""
    if args.action == "add":
        name, sep, address = args.node.partition("=")
        if not sep or not name:
            raise QuietError(f"master add: expected NAME=HOST:PORT (the new master's raft address), got {args.node!r}", 2)
    else:
        name, address = args.node, ""
    action = {"add": "add", "remove": "remove", "transfer-leader": "transfer"}[args.action]
    leader = next((s for s, _ in (probe_master(ep) for ep in master.endpoints) if s["role"] == "leader"), None)
    if leader is None:
        raise QuietError(f"no master among {','.join(master.endpoints)} leads right now; retry")
    client = rpc.Client(leader["endpoint"], timeout_s=max(args.timeout, 15.0))
    try:
        client.call("raft_admin", {"action": action, "node_id": name, "address": address})
    except rpc.RpcError as exc:
        raise QuietError(f"master {args.action} {args.node}: {exc.message}") from None
    finally:
        client.close()
    done = {"add": f"added {name} ({address})", "remove": f"removed {name}",
            "transfer-leader": f"{name} leads now"}[args.action]  # fmt: skip
    return {"action": args.action, "node_id": name, "address": address, "leader_was": leader["node_id"]}, [done]


COMMANDS = {
    "status": cmd_status,
    "master": cmd_master,
    "fileinfo": cmd_fileinfo,
    "getclass": cmd_getclass,
    "setclass": cmd_setclass,
    "classes": cmd_classes,
    "class": cmd_class,
}


# --- helpers --------------------------------------------------------------------------------------


def probe_master(endpoint: str, timeout_s: float = 2.0) -> tuple[dict, dict | None]:
    """Ask one master directly, without following a redirect (MasterClient would, and hide the
    follower): ({endpoint, node_id, role: leader | follower | ... | unreachable, term, commit,
    applied, leader}, its `status` if it is the leader, else None)."""
    client = rpc.Client(endpoint, timeout_s=timeout_s, connect_timeout_s=timeout_s)
    try:
        raft, _ = client.call("raft_status", {})
        status = None
        if raft["role"] == "leader":
            reply, _ = client.call("meta", {"op": "status", "args": {}})
            status = reply["result"] if not reply["errno"] and not reply["leader"] else None
    except rpc.RpcError:
        return {"endpoint": endpoint, "role": "unreachable"}, None
    finally:
        client.close()
    summary = {"endpoint": endpoint, "node_id": raft["node_id"], "role": raft["role"], "term": raft["term"],
               "commit": raft["commit"], "applied": raft["applied"], "leader": raft["leader_id"]}
    return summary, status


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser = argparse.ArgumentParser(
        prog="mooseng", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--master", metavar="HOST:PORT[,HOST:PORT...]",
        default=os.environ.get("MOOSENG_MASTER_ENDPOINTS") or DEFAULT_MASTER,
        help=f"master endpoints (default: $MOOSENG_MASTER_ENDPOINTS or {DEFAULT_MASTER})",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="give up on the master after S seconds (default 5)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", parents=[common], help="masters, chunkservers and their disks, chunk states per class")
    p = sub.add_parser("fileinfo", parents=[common], help="chunks of a file and where each copy is")
    p.add_argument("path", metavar="PATH")
    p = sub.add_parser("getclass", parents=[common], help="storage class of a file or directory")
    p.add_argument("path", metavar="PATH")
    p = sub.add_parser("setclass", parents=[common], help="set the storage class (new children inherit it)")
    p.add_argument("-r", "--recursive", action="store_true", help="also everything below a directory")
    p.add_argument("sclass", metavar="CLASS")
    p.add_argument("path", metavar="PATH")
    sub.add_parser("classes", parents=[common], help="the storage classes")
    p = sub.add_parser("class", parents=[common], help="create or delete a storage class (as root)")
    p.add_argument("action", choices=("create", "delete"))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--copies", type=int, metavar="N", help="create: N full copies of every chunk")
    p.add_argument("--ec", metavar="K+M", help="create: K data + M parity parts (erasure coding), K+M <= 32")
    p.add_argument("--tier", default="standard", help="create: a label for the tier (default: standard)")
    p = sub.add_parser("master", parents=[common], help="change the Raft group: add/remove a master, move leadership")
    p.add_argument("action", choices=("add", "remove", "transfer-leader"))
    p.add_argument("node", metavar="NAME[=HOST:PORT]", help="master node id; for add, =its raft address")
    args = parser.parse_args(argv)
    endpoints = [e.strip() for e in args.master.split(",") if e.strip()]
    for endpoint in endpoints:
        try:
            wire.parse_addr(endpoint)
        except ValueError:
            parser.error(f"--master: not host:port: {endpoint!r}")
    if not endpoints:
        parser.error("--master: no endpoint given")
    args.endpoints = endpoints
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    master = Master(args.endpoints, args.timeout)
    try:
        result, lines = COMMANDS[args.command](master, args)
        print(json.dumps(result, indent=2) if args.json else "\n".join(lines))
    except QuietError as exc:
        print(f"mooseng: {exc}", file=sys.stderr)
        return exc.exitcode
    except FsError as exc:
        print(f"mooseng: {args.command}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mooseng status | head`: not an error; keep the exit-time flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        master.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
