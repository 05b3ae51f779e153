"""The linearizability checker: hand-written histories, pending operations, the budget, and
random histories checked against a brute-force search over every order."""

import itertools
import random
import time

import pytest

from support.lincheck import (EEXIST, ENOENT, ILLEGAL, LINEARIZABLE, OK, UNKNOWN, FileSystemModel, Operation,
                              check, partition)

MODEL = FileSystemModel()


def op(client, call, invoke, response, result=OK):
    """An operation; `call` is (name, *args), `response` None for an unknown outcome."""
    return Operation(client, call[0], tuple(call[1:]), invoke, response, result)


def assert_linearizable(history):
    result = check(history)
    assert result.verdict == LINEARIZABLE, result.explanation
    return result


def assert_illegal(history):
    result = check(history)
    assert result.verdict == ILLEGAL, result.explanation
    return result


# --- the model ---------------------------------------------------------------------------------


def test_model_follows_posix_for_each_operation():
    s = MODEL.init()
    assert MODEL.apply(s, "read", ("a",))[0] == ENOENT
    r, s = MODEL.apply(s, "create", ("a",))
    assert r == OK and MODEL.apply(s, "create", ("a",))[0] == EEXIST
    assert MODEL.apply(s, "read", ("a",))[0] == b""
    r, s = MODEL.apply(s, "write", ("a", b"x"))
    assert MODEL.apply(s, "read", ("a",))[0] == b"x"
    _, s2 = MODEL.apply(s, "create", ("b",))
    r, s2 = MODEL.apply(s2, "rename", ("a", "b"))  # replaces b, content moves with the file
    assert r == OK and MODEL.apply(s2, "read", ("b",))[0] == b"x" and MODEL.apply(s2, "lookup", ("a",))[0] == ENOENT
    assert MODEL.apply(s, "rename", ("a", "a")) == (OK, s)
    assert MODEL.apply(s, "rename", ("z", "a"))[0] == ENOENT
    assert MODEL.apply(s, "write", ("z", b"y"))[0] == ENOENT
    r, s = MODEL.apply(s, "unlink", ("a",))
    assert r == OK and MODEL.apply(s, "unlink", ("a",))[0] == ENOENT and s == MODEL.init()


def test_malformed_history_is_a_clear_error():
    with pytest.raises(ValueError, match=r"history\[0\].*unknown file system operation 'mkdir'"):
        check([op(1, ("mkdir", "a"), 0, 1)])
    with pytest.raises(ValueError, match=r"history\[1\].*rename takes 2 argument"):
        check([op(1, ("lookup", "a"), 0, 1, ENOENT), op(1, ("rename", "a"), 2, 3)])
    with pytest.raises(ValueError, match=r"response time 1 is before invocation time 5"):
        check([op(1, ("create", "a"), 5, 1)])


# --- hand-written histories --------------------------------------------------------------------


def test_sequential_history_is_linearizable():
    assert_linearizable([
        op(1, ("create", "a"), 0, 1),
        op(1, ("write", "a", b"v1"), 2, 3),
        op(2, ("read", "a"), 4, 5, b"v1"),
        op(2, ("rename", "a", "b"), 6, 7),
        op(1, ("lookup", "a"), 8, 9, ENOENT),
        op(1, ("read", "b"), 10, 11, b"v1"),
        op(2, ("unlink", "b"), 12, 13),
        op(2, ("create", "b"), 14, 15),
        op(1, ("read", "b"), 16, 17, b""),
    ])


def test_stale_read_after_acknowledged_write_is_rejected_and_explained():
    history = [
        op(1, ("create", "a"), 0, 1),
        op(1, ("write", "a", b"v1"), 2, 3),
        op(2, ("write", "a", b"v2"), 4, 5),
        op(3, ("read", "a"), 6, 7, b"v1"),
    ]
    result = assert_illegal(history)
    assert result.prefix == history[:3]
    assert result.blocked == history[3] and result.expected == b"v2"
    assert "cannot place next: client 3: read('a') -> b'v1'" in result.explanation
    assert "here the model says b'v2'" in result.explanation
    assert "{'a': b'v2'}" in result.explanation


def test_lost_acknowledged_create_is_rejected():
    assert_illegal([
        op(1, ("create", "a"), 0, 1),
        op(2, ("lookup", "a"), 2, 3, ENOENT),
    ])


def test_double_applied_rename_is_rejected():
    # A retried rename applied twice moves the second "a" as well.
    assert_illegal([
        op(1, ("create", "a"), 0, 1),
        op(1, ("rename", "a", "b"), 2, 3),
        op(2, ("create", "a"), 4, 5),
        op(3, ("lookup", "a"), 6, 7, ENOENT),
    ])
    # A retried rename whose first attempt applied answers ENOENT: a rename that did happen.
    assert_illegal([
        op(1, ("create", "a"), 0, 1),
        op(1, ("rename", "a", "b"), 2, 3, ENOENT),
        op(2, ("lookup", "b"), 4, 5),
    ])


def test_read_of_a_value_never_written_is_rejected():
    assert_illegal([
        op(1, ("create", "a"), 0, 1),
        op(2, ("write", "a", b"v1"), 2, 10),
        op(3, ("read", "a"), 3, 4, b"v9"),
    ])


def test_concurrent_operations_fine_in_one_order_only():
    # The create of "a" succeeds only after the rename took "a" away, and the lookup of "b"
    # fails only before it: the one order is lookup(b), rename, create.
    base = [op(1, ("create", "a"), 0, 1), op(1, ("rename", "a", "b"), 2, 10), op(2, ("create", "a"), 3, 5)]
    assert_linearizable(base + [op(3, ("lookup", "b"), 4, 6, ENOENT)])
    # Invoked after the create returned, the lookup cannot come before the rename any more.
    result = assert_illegal(base + [op(3, ("lookup", "b"), 6, 7, ENOENT)])
    assert result.blocked.op == "lookup"
    # Two concurrent writes, then two reads in real-time order: only one order of the writes fits.
    writes = [op(1, ("create", "a"), 0, 1), op(1, ("write", "a", b"v1"), 2, 10), op(2, ("write", "a", b"v2"), 2, 10)]
    assert_linearizable(writes + [op(3, ("read", "a"), 11, 12, b"v1"), op(3, ("read", "a"), 13, 14, b"v1")])
    assert_illegal(writes + [op(3, ("read", "a"), 11, 12, b"v1"), op(3, ("read", "a"), 13, 14, b"v2")])
    # Reads during the writes may see them in either order, but all clients the same one.
    assert_linearizable(writes + [op(3, ("read", "a"), 3, 4, b"v2"), op(3, ("read", "a"), 5, 6, b"v1")])
    assert_illegal(writes + [op(3, ("read", "a"), 3, 4, b"v2"), op(3, ("read", "a"), 5, 6, b"v1"),
                             op(4, ("read", "a"), 3, 4, b"v1"), op(4, ("read", "a"), 7, 8, b"v2")])


def test_touching_intervals_count_as_concurrent():
    assert_linearizable([op(1, ("create", "a"), 0, 5), op(2, ("lookup", "a"), 5, 5, ENOENT)])
    assert_illegal([op(1, ("create", "a"), 0, 5), op(2, ("lookup", "a"), 6, 6, ENOENT)])


def test_write_through_a_handle_follows_the_file_across_a_rename():
    # The anomaly a real write shows: it finds "d", a rename moves the file to "a", a reader of
    # "a" still sees the old content, then the write's data lands in "a".
    history = [
        op(1, ("create", "d"), 0, 1),
        op(1, ("open", "d", "h1"), 2, 3),
        op(2, ("rename", "d", "a"), 4, 5),
        op(3, ("read", "a"), 6, 7, b""),
        op(1, ("write_close", "h1", b"v"), 4, 8),
        op(3, ("read", "a"), 9, 10, b"v"),
    ]
    assert_linearizable(history)
    # As one atomic write of "d" the same observations are impossible.
    atomic = [o for o in history if o.op not in ("open", "write_close")] + [op(1, ("write", "d", b"v"), 2, 8)]
    assert_illegal(atomic)
    opened = [op(1, ("create", "a"), 0, 1), op(1, ("open", "a", "h"), 2, 3), op(2, ("read_close", "h"), 6, 7, b"")]
    assert_linearizable(opened + [op(2, ("rename", "a", "b"), 4, 5)])
    assert_illegal(opened + [op(2, ("rename", "a", "b"), 4, 5), op(3, ("open", "b", "h2"), 8, 9),
                             op(3, ("read_close", "h2"), 10, 11, b"x")])


def test_file_unlinked_while_open_cannot_be_written_or_read():
    base = [op(1, ("create", "a"), 0, 1), op(1, ("open", "a", "h"), 2, 3), op(2, ("unlink", "a"), 4, 5)]
    assert_linearizable(base + [op(1, ("write_close", "h", b"v"), 6, 7, ENOENT)])
    assert_illegal(base + [op(1, ("write_close", "h", b"v"), 6, 7, OK)])
    assert_illegal(base + [op(1, ("read_close", "h"), 6, 7, b"")])
    # Concurrent with the unlink, either answer fits.
    assert_linearizable(base + [op(1, ("write_close", "h", b"v"), 4, 5, OK)])
    # A rename that replaces the file counts as its unlink.
    replaced = [op(1, ("create", "a"), 0, 1), op(1, ("create", "b"), 0, 1), op(1, ("open", "a", "h"), 2, 3),
                op(2, ("rename", "b", "a"), 4, 5)]
    assert_linearizable(replaced + [op(1, ("read_close", "h"), 6, 7, ENOENT)])
    assert_illegal(replaced + [op(1, ("read_close", "h"), 6, 7, b"")])


# --- pending operations ------------------------------------------------------------------------


def test_pending_create_that_took_effect():
    assert_linearizable([op(1, ("create", "a"), 0, None), op(2, ("lookup", "a"), 5, 6)])


def test_pending_create_that_did_not_take_effect():
    assert_linearizable([op(1, ("create", "a"), 0, None), op(2, ("lookup", "a"), 5, 6, ENOENT)])
    assert_linearizable([op(1, ("create", "a"), 0, None), op(2, ("create", "a"), 5, 6)])


def test_pending_operation_may_take_effect_long_after_its_call():
    assert_linearizable([
        op(1, ("create", "a"), 0, None),
        op(2, ("lookup", "a"), 5, 6, ENOENT),
        op(2, ("lookup", "a"), 100, 101),
    ])


def test_pending_operation_takes_effect_at_most_once():
    assert_illegal([
        op(1, ("create", "a"), 0, None),
        op(2, ("lookup", "a"), 5, 6),
        op(2, ("lookup", "a"), 7, 8, ENOENT),
    ])
    assert_illegal([
        op(9, ("create", "a"), 0, 1),
        op(1, ("rename", "a", "b"), 2, None),
        op(2, ("lookup", "b"), 3, 4),
        op(9, ("create", "a"), 5, 6),
        op(2, ("lookup", "a"), 7, 8, ENOENT),
    ])


def test_pending_operation_cannot_take_effect_before_its_call():
    assert_illegal([op(2, ("lookup", "a"), 0, 1), op(1, ("create", "a"), 2, None)])


def test_pending_write_is_seen_all_or_nothing():
    base = [op(1, ("create", "a"), 0, 1), op(1, ("write", "a", b"v1"), 2, None)]
    assert_linearizable(base + [op(2, ("read", "a"), 3, 4, b""), op(2, ("read", "a"), 5, 6, b"v1")])
    assert_illegal(base + [op(2, ("read", "a"), 3, 4, b"v1"), op(2, ("read", "a"), 5, 6, b"")])


def test_pending_writes_of_unique_values_are_settled_before_the_search():
    history = [
        op(1, ("create", "a"), 0, 1),
        op(1, ("write", "a", b"seen"), 2, None),
        op(2, ("write", "a", b"unseen"), 2, None),
        op(3, ("write", "a", b""), 2, None),  # the empty content is not unique: stays pending
        op(4, ("read", "a"), 10, 11, b"seen"),
    ]
    reduced = MODEL.reduce(history)
    assert [(o.args, o.response, o.result) for o in reduced[1:]] == [
        (("a", b"seen"), 11, OK), (("a", b""), None, OK), (("a",), 11, b"seen")]
    assert_linearizable(history)
    # A value read before its write was even invoked is still caught.
    assert_illegal([op(1, ("create", "a"), 0, 1), op(4, ("read", "a"), 2, 3, b"v"), op(1, ("write", "a", b"v"), 5, None)])


def test_result_of_a_pending_operation_is_ignored():
    assert_linearizable([op(1, ("create", "a"), 0, None, "garbage"), op(2, ("lookup", "a"), 1, 2, ENOENT)])


# --- partitions and the budget -----------------------------------------------------------------


def test_history_is_split_by_the_names_renames_couple():
    history = [
        op(1, ("create", "a"), 0, 1),
        op(1, ("create", "b"), 0, 1),
        op(2, ("rename", "b", "c"), 2, 3),
        op(2, ("create", "d"), 2, 3),
        op(3, ("rename", "d", "d"), 4, 5),
    ]
    parts = partition(history, MODEL)
    assert sorted(sorted(o.args[0] for o in p) for p in parts) == [["a"], ["b", "b"], ["d", "d"]]
    result = check(history + [op(3, ("lookup", "c"), 6, 7, ENOENT)])
    assert result.verdict == ILLEGAL and result.partitions == 3
    assert "'b', 'c'" in result.explanation and "'a'" not in result.explanation


def test_search_that_runs_out_of_budget_says_unknown():
    rng = random.Random(5)
    history = corrupt(rng, random_history(rng, 300, 5, NAMES, pending=0.03))
    full = check(history)
    assert full.verdict == ILLEGAL and full.steps > 1000, (full.verdict, full.steps)
    result = check(history, max_steps=full.steps // 2)
    assert result.verdict == UNKNOWN and f"step budget of {full.steps // 2} spent" in result.explanation
    started = time.monotonic()
    result = check(history, timeout_s=0.0)
    assert result.verdict == UNKNOWN and "time budget spent" in result.explanation
    assert time.monotonic() - started < 0.5


# --- random histories against a brute-force reference ------------------------------------------


def brute_force(history, model=MODEL) -> bool:
    """Is there an order of the completed operations plus any subset of the pending ones that
    respects real time and gives every completed operation its result?"""
    done = [o for o in history if not o.pending]
    pending = [o for o in history if o.pending]
    for k in range(len(pending) + 1):
        for chosen in itertools.combinations(pending, k):
            ops = done + list(chosen)
            for order in itertools.permutations(ops):
                if _respects_real_time(order) and _legal(order, model):
                    return True
    return False


def _respects_real_time(order) -> bool:
    return not any(b.response is not None and b.response < a.invoke
                   for i, a in enumerate(order) for b in order[i + 1:])


def _legal(order, model) -> bool:
    state = model.init()
    for o in order:
        result, state = model.apply(state, o.op, o.args)
        if not o.pending and result != o.result:
            return False
    return True


NAMES = ("a", "b", "c", "d")


def random_history(rng, n_ops, n_clients, names, pending=0.0):
    """Operations of clients that call one at a time, each taking effect at a random point of
    its interval (pending ones there or never): linearizable by construction. An open is
    followed by the same client's write_close or read_close of its handle."""
    cursor = [0] * n_clients
    planned = []

    def plan(client, kind, args):
        invoke = cursor[client] + rng.randrange(3)
        point = invoke + rng.randrange(6)
        response = point + rng.randrange(6)
        cursor[client] = response + 1
        lost = rng.random() < pending
        planned.append((point, len(planned), client, kind, args, invoke, None if lost else response,
                        lost and rng.random() < 0.5))

    while len(planned) < n_ops:
        client = rng.randrange(n_clients)
        kind = rng.choice(("create", "create", "unlink", "rename", "write", "read", "read", "lookup", "open"))
        name, n = rng.choice(names), len(planned)
        if kind == "open" and len(planned) + 2 <= n_ops:
            plan(client, "open", (name, n))
            if rng.random() < 0.5:
                plan(client, "write_close", (n, b"v%d" % n))
            else:
                plan(client, "read_close", (n,))
        elif kind == "rename":
            plan(client, kind, (name, rng.choice(names)))
        elif kind == "write":
            plan(client, kind, (name, b"v%d" % n))
        elif kind != "open":
            plan(client, kind, (name,))
    state, history = MODEL.init(), []
    for point, _, client, kind, args, invoke, response, skipped in sorted(planned):
        result = None
        if not skipped:
            result, state = MODEL.apply(state, kind, args)
        history.append(Operation(client, kind, args, invoke, response, None if response is None else result))
    rng.shuffle(history)
    return history


def corrupt(rng, history):
    """The history with one completed operation's result changed to another plausible one."""
    done = [i for i, o in enumerate(history) if not o.pending]
    if not done:
        return None
    i = rng.choice(done)
    o = history[i]
    if o.op == "create":
        wrong = EEXIST if o.result == OK else OK
    elif o.op not in ("read", "read_close"):
        wrong = ENOENT if o.result == OK else OK
    else:
        written = [w.args[1] for w in history if w.op in ("write", "write_close")] + [b"", b"never"]
        wrong = rng.choice([v for v in written + [ENOENT] if v != o.result])
    history = list(history)
    history[i] = Operation(o.client, o.op, o.args, o.invoke, o.response, wrong)
    return history


def test_random_histories_are_linearizable():
    rng = random.Random(1)
    for _ in range(300):
        history = random_history(rng, rng.randrange(1, 40), rng.randrange(1, 5), NAMES[:3], pending=0.15)
        assert_linearizable(history)


def test_small_random_histories_agree_with_brute_force():
    rng = random.Random(2)
    verdicts = {True: 0, False: 0}
    for trial in range(400):
        history = random_history(rng, rng.randrange(2, 8), rng.randrange(2, 4), NAMES[:2], pending=0.2)
        if trial % 4:
            history = corrupt(rng, history) or history
        expected = brute_force(history)
        result = check(history)
        assert result.verdict == (LINEARIZABLE if expected else ILLEGAL), (history, result.explanation)
        verdicts[expected] += 1
    assert verdicts[True] > 100 and verdicts[False] > 100, verdicts


def test_small_histories_with_many_pending_operations_agree_with_brute_force():
    rng = random.Random(6)
    verdicts = {True: 0, False: 0}
    for trial in range(300):
        history = random_history(rng, rng.randrange(3, 8), rng.randrange(2, 5), NAMES[:2], pending=0.5)
        if trial % 2:
            history = corrupt(rng, history) or history
        expected = brute_force(history)
        result = check(history)
        assert result.verdict == (LINEARIZABLE if expected else ILLEGAL), (history, result.explanation)
        verdicts[expected] += 1
    assert verdicts[True] > 100 and verdicts[False] > 50, verdicts


def test_corrupted_random_histories_are_usually_rejected():
    rng = random.Random(3)
    rejected = 0
    for _ in range(100):
        history = corrupt(rng, random_history(rng, 60, 4, NAMES, pending=0.05))
        result = check(history)
        assert result.verdict != UNKNOWN, result.explanation
        if result.verdict == ILLEGAL:
            rejected += 1
            assert result.blocked in history
    assert rejected >= 80, f"only {rejected} of 100 corrupted histories rejected"


def test_300_op_history_of_5_clients_over_4_names_checks_fast():
    """CPU time, not wall time: the test machine is shared."""
    rng = random.Random(4)
    for pending in (0.0, 0.03):
        for _ in range(3):
            history = random_history(rng, 300, 5, NAMES, pending=pending)
            started = time.process_time()
            result = check(history)
            elapsed = time.process_time() - started
            assert result.verdict == LINEARIZABLE, result.explanation
            assert elapsed < 0.2, f"{elapsed:.3f} s for 300 ops with {pending:.0%} pending"
    for _ in range(3):
        history = corrupt(rng, random_history(rng, 300, 5, NAMES))
        started = time.process_time()
        result = check(history)
        elapsed = time.process_time() - started
        assert result.verdict != UNKNOWN and elapsed < 0.5, f"{result.verdict} after {elapsed:.3f} s"
