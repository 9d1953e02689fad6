"""The fork path on every CPython version: parmapper forks in C with the
interpreter's own fork brackets (PyOS_BeforeFork / PyOS_AfterFork_*), so
at-fork handlers run in the workers as with os.fork(), and Python >= 3.12's
DeprecationWarning about os.fork() in a multi-threaded process (an error
under this suite's warnings-as-errors) is never raised by a map started while
other threads run."""
import os
import threading
import warnings

import parmapper


def test_map_while_other_threads_run_raises_no_fork_warning():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert threading.active_count() >= 2
            got = list(parmapper.parmap(lambda x: x * 3, range(200), N=2))
            got_t = list(parmapper.parmap(lambda x: x + 1, range(200), N=2, Nt=2))
    finally:
        stop.set()
        t.join()
    assert got == [x * 3 for x in range(200)]
    assert got_t == [x + 1 for x in range(200)]


def test_at_fork_handlers_run_in_the_workers():
    marks = []
    os.register_at_fork(after_in_child=lambda: marks.append("child"))
    # A worker reports whether the handler ran in it (in the parent the
    # list stays empty: forks made by pytest itself are not ours).
    before = len(marks)
    seen = set(parmapper.parmap(lambda _: len(marks) - before, range(50),
                                N=2, chunksize=1))
    assert seen == {1}
    assert len(marks) == before
