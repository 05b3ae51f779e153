"""A linearizability checker for recorded concurrent histories, and a model of one directory.

A history is a list of `Operation`s: who called what, when the call started and returned, and
what it returned. An operation whose outcome is unknown (it timed out, or its client saw an
error during a leader kill) has `response=None`: it may have taken effect at any time after its
invocation, or never. The checker answers whether some total order of the operations respects
real time (an operation that returned before another was invoked comes first) and, applied to a
sequential model, gives every completed operation the result it observed.

The search is Wing & Gong's, with Lowe's memoization of (set of linearized operations, model
state), the approach of Porcupine (github.com/anishathalye/porcupine). A pending operation gets
an infinite response time and may return anything, so "never took effect" is the same as "took
effect after everything else"; the memo treats a configuration as no better than one with the
same completed operations and state but fewer pending ones, and the model settles what it can
before the search (Model.reduce), which keeps unknown outcomes from multiplying the work. The
history is first split by the names the operations touch (a rename couples two names), and
each part is checked on its own: linearizability is local.
A search that runs out of its time or step budget answers UNKNOWN instead of hanging.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Protocol, Sequence

OK = "ok"
EEXIST = "EEXIST"
ENOENT = "ENOENT"

LINEARIZABLE = "linearizable"
ILLEGAL = "illegal"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Operation:
    """One call as a client saw it. Times are any comparable numbers (the recorder uses
    time.monotonic_ns()); `response=None` means the outcome is unknown and `result` is ignored."""

    client: Hashable
    op: str
    args: tuple
    invoke: int
    response: int | None
    result: Any = None

    def __post_init__(self):
        object.__setattr__(self, "args", tuple(self.args))

    @property
    def pending(self) -> bool:
        return self.response is None

    def __str__(self) -> str:
        args = ", ".join(repr(a) for a in self.args)
        outcome = "unknown outcome" if self.pending else repr(self.result)
        end = "..." if self.pending else self.response
        return f"client {self.client}: {self.op}({args}) -> {outcome} [{self.invoke}, {end}]"


class Model(Protocol):
    """A deterministic sequential specification, as pure functions of a hashable state."""

    def init(self) -> Hashable:
        """The state before any operation."""

    def apply(self, state: Hashable, op: str, args: tuple) -> tuple[Any, Hashable]:
        """(the result `op` returns in `state`, the state after it)."""

    def keys(self, op: str, args: tuple) -> tuple:
        """The objects `op` reads or changes: operations with no key in common, directly or
        through others, never interact, so they are checked apart. Return one constant key to
        keep the history whole."""

    def validate(self, op: str, args: tuple) -> None:
        """Raise ValueError naming the problem if `op(*args)` is not an operation of the model."""

    def describe(self, state: Hashable) -> str:
        """A state for a person to read."""

    def reduce(self, history: list[Operation]) -> list[Operation]:
        """An equivalent history that is cheaper to check (or `history` itself)."""


class FileSystemModel:
    """The files of one directory: names, contents, and the handles clients hold open on them.

    create(name) -> ok | EEXIST (exclusive create; the new file holds `empty`)
    unlink(name) -> ok | ENOENT
    rename(src, dst) -> ok | ENOENT (POSIX: an existing dst is replaced; src == dst does nothing)
    write(name, value) -> ok | ENOENT (the file's whole content becomes value)
    read(name) -> the content | ENOENT
    lookup(name) -> ok | ENOENT
    open(name, handle) -> ok | ENOENT (`handle`, any value unique in the history, now stands
        for this file, wherever renames take it)
    write_close(handle, value) -> ok | ENOENT, read_close(handle) -> the content | ENOENT: on
        the file `handle` stands for, ENOENT once it is unlinked (or replaced by a rename); the
        handle is closed after.

    A real write or read looks a name up, then works on the inode (and a rename may move it in
    between): recorded as open + write_close/read_close, it is checked as what it is. As in
    MooseNG (not POSIX), an unlinked file is gone even while open: its data cannot be read or
    written any more. Contents move with their file on rename, so the model needs no inode
    numbers: there are no hard links. A state is a frozenset of files (name, content, frozenset
    of the handles open on it); an unlinked file is forgotten with its handles, so that closing
    them changes nothing and costs the search nothing.
    """

    ARITY = {"create": 1, "unlink": 1, "rename": 2, "write": 2, "read": 1, "lookup": 1, "open": 2,
             "write_close": 2, "read_close": 1}

    def __init__(self, initial: Mapping[Hashable, Any] | None = None, empty: Any = b""):
        self.initial = frozenset((name, content, frozenset()) for name, content in (initial or {}).items())
        self.empty = empty

    def init(self) -> frozenset:
        return self.initial

    def apply(self, state: frozenset, op: str, args: tuple) -> tuple[Any, frozenset]:
        if op in ("write_close", "read_close"):
            handle = args[0]
            held = next((f for f in state if handle in f[2]), None)
            if held is None:
                return ENOENT, state
            name, content, handles = held
            if op == "read_close":
                return content, _swap(state, held, (name, content, handles - {handle}))
            return OK, _swap(state, held, (name, args[1], handles - {handle}))
        name = args[0]
        file = next((f for f in state if f[0] == name), None)
        if op == "create":
            if file is not None:
                return EEXIST, state
            return OK, state | {(name, self.empty, frozenset())}
        if file is None:
            return ENOENT, state
        _, content, handles = file
        if op == "read":
            return content, state
        if op == "lookup":
            return OK, state
        if op == "unlink":
            return OK, state - {file}
        if op == "write":
            return OK, _swap(state, file, (name, args[1], handles))
        if op == "open":
            return OK, _swap(state, file, (name, content, handles | {args[1]}))
        if op == "rename":
            dst = args[1]
            if dst == name:
                return OK, state
            replaced = next((f for f in state if f[0] == dst), None)
            if replaced is not None:
                state = state - {replaced}
            return OK, _swap(state, file, (dst, content, handles))
        raise ValueError(f"unknown file system operation {op!r}")

    def keys(self, op: str, args: tuple) -> tuple:
        return tuple(args) if op in ("rename", "open") else (args[0],)

    def validate(self, op: str, args: tuple) -> None:
        if op not in self.ARITY:
            raise ValueError(f"unknown file system operation {op!r} (known: {', '.join(self.ARITY)})")
        if len(args) != self.ARITY[op]:
            raise ValueError(f"{op} takes {self.ARITY[op]} argument(s), got {len(args)}: {args!r}")

    def reduce(self, history: list[Operation]) -> list[Operation]:
        """Settle pending writes of values written only once (as etcd's robustness tests do):
        one that no read returned is dropped (had it happened, nothing saw it before its file
        changed again), one that a read returned took effect before that read returned. Pending
        writes are what makes a search expensive: each may come anywhere after its call."""
        writes = [op for op in history if op.op in ("write", "write_close")]
        count: dict = {}
        for op in writes:
            count[op.args[1]] = count.get(op.args[1], 0) + 1
        for _, content, _ in self.initial:
            count[content] = 2
        count[self.empty] = 2
        seen: dict = {}
        for op in history:
            if op.op in ("read", "read_close") and not op.pending and op.result != ENOENT:
                seen[op.result] = min(seen.get(op.result, op.response), op.response)
        reduced = []
        for op in history:
            value = op.args[1] if op.op in ("write", "write_close") else None
            if not op.pending or count.get(value, 0) != 1:
                reduced.append(op)
            elif value in seen:
                reduced.append(Operation(op.client, op.op, op.args, op.invoke, max(op.invoke, seen[value]), OK))
        return reduced

    def describe(self, state: frozenset) -> str:
        def one(file):
            name, content, handles = file
            opened = f" (open as {', '.join(sorted(map(repr, handles)))})" if handles else ""
            return f"{name!r}: {content!r}{opened}"
        return "{" + ", ".join(sorted(map(one, state))) + "}"


def _swap(state: frozenset, old: tuple, new: tuple) -> frozenset:
    return state - {old} | {new}


@dataclass
class CheckResult:
    """The verdict; for ILLEGAL, the part of the history that failed explained: the longest
    prefix the search could linearize, the state it leads to, and the operation that cannot be
    placed after it (with the result the model gives it there)."""

    verdict: str
    explanation: str
    steps: int
    partitions: int
    prefix: list[Operation] = field(default_factory=list)
    state: Any = None
    blocked: Operation | None = None
    expected: Any = None

    @property
    def ok(self) -> bool:
        return self.verdict == LINEARIZABLE


def check(history: Sequence[Operation], model: Model | None = None, *, timeout_s: float = 10.0,
          max_steps: int | None = None) -> CheckResult:
    """Is `history` linearizable with respect to `model` (a FileSystemModel() by default)?

    The budget (`timeout_s` of wall time, `max_steps` search steps) covers the whole history; when
    it runs out before an answer, the verdict is UNKNOWN. Raises ValueError for a malformed
    history (an unknown operation, a response before its invocation).
    """
    model = model if model is not None else FileSystemModel()
    for i, op in enumerate(history):
        try:
            model.validate(op.op, op.args)
            if op.response is not None and op.response < op.invoke:
                raise ValueError(f"response time {op.response} is before invocation time {op.invoke}")
        except ValueError as exc:
            raise ValueError(f"history[{i}] ({op}): {exc}") from None
    budget = _Budget(time.monotonic() + timeout_s, max_steps)
    parts = partition(model.reduce(list(history)), model)
    unknown = None
    for number, part in enumerate(parts, 1):
        search = _Search(part, model, budget)
        verdict = search.run()
        where = f"part {number} of {len(parts)} ({len(part)} ops on {_names(part, model)})"
        if verdict == ILLEGAL:
            return search.illegal(where, budget.steps, len(parts))
        if verdict == UNKNOWN and unknown is None:
            unknown = f"gave up in {where} after {budget.steps} steps: {budget.why}"
    if unknown:
        return CheckResult(UNKNOWN, unknown, budget.steps, len(parts))
    return CheckResult(LINEARIZABLE, f"{len(history)} ops in {len(parts)} part(s) are linearizable",
                       budget.steps, len(parts))


def partition(history: Sequence[Operation], model: Model) -> list[list[Operation]]:
    """The history split into groups of operations that share keys, directly or transitively."""
    parent: dict = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for op in history:
        first, *rest = model.keys(op.op, op.args)
        for key in rest:
            parent[root(key)] = root(first)
    groups: dict = {}
    for op in history:
        groups.setdefault(root(model.keys(op.op, op.args)[0]), []).append(op)
    return list(groups.values())


def _names(part: list[Operation], model: Model, most: int = 8) -> str:
    keys = sorted({repr(key) for op in part for key in model.keys(op.op, op.args)}, key=lambda k: (len(k), k))
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


class _Budget:
    def __init__(self, deadline: float, max_steps: int | None):
        self.deadline = deadline
        self.max_steps = max_steps
        self.steps = 0
        self.why = ""

    def spent(self) -> bool:
        self.steps += 1
        if self.max_steps is not None and self.steps > self.max_steps:
            self.why = f"step budget of {self.max_steps} spent"
            return True
        if time.monotonic() > self.deadline:
            self.why = "time budget spent"
            return True
        return False


class _Search:
    """Wing & Gong's search with Lowe's memoization over one part of a history.

    A configuration is (the set of operations placed, the model state). Its children place one
    more completed operation: any not yet placed that was invoked before the earliest response
    of those not yet placed (it could come next without breaking real time). Pending
    operations are placed only on the way to such a child: from a configuration, a
    breadth-first closure applies available pending operations that change the state, smallest
    sets first, so that the memo (see _dominated) cuts every larger set leading to a state
    already reached. A configuration with nothing left to place fails at that earliest
    response: the operation that cannot be placed.
    """

    def __init__(self, ops: list[Operation], model: Model, budget: _Budget):
        self.ops = ops
        self.model = model
        self.budget = budget
        done = [i for i, op in enumerate(ops) if not op.pending]
        self.by_response = sorted(done, key=lambda i: (ops[i].response, i))
        self.by_invoke = sorted(done, key=lambda i: (ops[i].invoke, i))
        self.pending = sorted((i for i, op in enumerate(ops) if op.pending), key=lambda i: (ops[i].invoke, i))
        self.pending_mask = sum(1 << i for i in self.pending)
        self.seen: dict[tuple[int, Hashable], list[int]] = {}  # (completed set, state) -> pending sets
        self.best: tuple[tuple, Any, int] | None = None  # (path, state, blocked) of the deepest failure

    def run(self) -> str:
        root = (0, self.model.init(), None, 0, 0)
        if not self.by_response:
            return LINEARIZABLE
        stack = [self._children(*root)]
        while stack:
            if self.budget.spent():
                return UNKNOWN
            child = next(stack[-1], None)
            if child is None:
                if self.budget.why:  # the generator stopped for the budget, not for a dead end
                    return UNKNOWN
                stack.pop()
            elif (child[0] & ~self.pending_mask).bit_count() == len(self.by_response):
                return LINEARIZABLE
            else:
                stack.append(self._children(*child))
        return ILLEGAL

    def _children(self, placed: int, state: Hashable, path, first: int, low: int):
        """The configurations one completed operation further; `first` and `low` are where the
        earliest-returning and the earliest-invoked unplaced completed operations may be in
        by_response and by_invoke (they only move forward along a path)."""
        ops, model = self.ops, self.model
        by_response, by_invoke = self.by_response, self.by_invoke
        while placed >> by_response[first] & 1:
            first += 1
        while placed >> by_invoke[low] & 1:
            low += 1
        deadline = ops[by_response[first]].response
        candidates = []
        for k in range(low, len(by_invoke)):
            i = by_invoke[k]
            if ops[i].invoke > deadline:
                break
            if not placed >> i & 1:
                candidates.append(i)
        closure = [(placed, state, path)]
        for base, base_state, base_path in closure:  # grows while it is walked: breadth first
            for i in candidates:
                op = ops[i]
                result, after = model.apply(base_state, op.op, op.args)
                if result == op.result and not self._dominated(base | 1 << i, after):
                    yield base | 1 << i, after, _step(i, base_path), first, low
            for i in self.pending:
                if ops[i].invoke > deadline:
                    break
                if base >> i & 1:
                    continue
                if self.budget.spent():
                    return
                after = model.apply(base_state, ops[i].op, ops[i].args)[1]
                if after != base_state and not self._dominated(base | 1 << i, after):
                    closure.append((base | 1 << i, after, _step(i, base_path)))
        # Nothing fits before the earliest response: remember the deepest such dead end.
        if self.best is None or _length(path) > _length(self.best[0]):
            self.best = (path, state, by_response[first])

    def _dominated(self, placed: int, state: Hashable) -> bool:
        """Lowe's memo, extended for pending operations: a configuration is no better than one
        already reached with the same completed operations, the same state and a subset of its
        pending ones (those may still be placed later, or never). Records it otherwise."""
        pending = placed & self.pending_mask
        reached = self.seen.setdefault((placed & ~self.pending_mask, state), [])
        if any(earlier & ~pending == 0 for earlier in reached):
            return True
        reached.append(pending)
        return False

    def illegal(self, where: str, steps: int, partitions: int) -> CheckResult:
        path, state, blocked_id = self.best
        prefix = [self.ops[i] for i in _unwind(path)]
        blocked = self.ops[blocked_id]
        expected = self.model.apply(state, blocked.op, blocked.args)[0]
        lines = [f"not linearizable: {where}",
                 f"longest linearizable prefix ({len(prefix)} ops):"]
        lines += [f"  {op}" for op in prefix]
        lines.append(f"state after it: {self.model.describe(state)}")
        if expected == blocked.result:
            lines.append(f"cannot place next: {blocked} (it fits here, but no order of the rest does)")
        else:
            lines.append(f"cannot place next: {blocked}; here the model says {expected!r}")
        return CheckResult(ILLEGAL, "\n".join(lines), steps, partitions, prefix, state, blocked, expected)


def _step(index: int, path) -> tuple:
    """The path `path` (None for the empty one) one operation longer."""
    return index, path, _length(path) + 1


def _length(path) -> int:
    return 0 if path is None else path[2]


def _unwind(path) -> list[int]:
    """A path (last, previous path, length) as the list of operation indices in order."""
    order = []
    while path is not None:
        order.append(path[0])
        path = path[1]
    return order[::-1]
