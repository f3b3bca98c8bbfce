"""Run one call in a forked child, for work that must not stay in this process.

Indexing builds Python objects per member (hundreds of MB for a big image)
and frees them at the end, which takes time and leaves the heap fragmented.
`imagefs mount` forks its daemon from itself right after indexing, so it runs
the build in a child: the child exits without freeing anything, and the
daemon starts from a process that never grew.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback
from typing import Any, Callable

from .errors import ImageFSError

__all__ = ["in_child"]


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, run in a forked child; its result, or its error raised here.

    ImageFSError, OSError and KeyboardInterrupt cross back as they were raised;
    anything else is a bug: the child prints its traceback and this raises
    RuntimeError.  The result and errors must pickle.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write what is buffered here a second time
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child (the tests see its effects)
        os.close(r)
        code = 0
        try:
            try:
                outcome: tuple[str, Any] = ("ok", fn(*args))
            except (ImageFSError, OSError, KeyboardInterrupt) as e:
                outcome, code = ("raise", e), 1
            except BaseException:
                traceback.print_exc()
                outcome, code = ("bug", None), 1
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(outcome))
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        finally:
            os._exit(code)  # no teardown: freeing what fn built is what the child saves
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
    except BaseException:
        # A Ctrl-C from the terminal reaches the child as well: give it a moment to
        # unwind by itself (a second SIGINT could cut its clean-up short).  One that
        # reached only this process is passed on, so the child removes what it
        # half wrote rather than finish the work for nobody.
        if not _reaped_within(pid, 1.0):
            os.kill(pid, signal.SIGINT)
            os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"the indexing process died ({_describe(status)})")
    kind, value = pickle.loads(data)
    if kind == "raise":
        raise value
    if kind == "bug":
        raise RuntimeError("the indexing process failed (its traceback is above)")
    return value


def _reaped_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.01)
    return False


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
