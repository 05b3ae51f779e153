"""Waiting on live daemons: poll a condition with a deadline, and start callables together."""

import threading
import time


def wait_for(what: str, check, timeout: float, interval: float = 0.2):
    """Poll check() until it returns something truthy and return that; fail naming `what` after
    timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def run_together(fns, catch: type[BaseException] = BaseException, timeout: float = 120) -> list[BaseException]:
    """Run the callables in threads released at once; return the `catch` exceptions they raised
    (others propagate as thread errors and fail the join check)."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(fns))

    def run(fn):
        start.wait()
        try:
            fn()
        except catch as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    return errors
