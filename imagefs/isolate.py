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
        # E.g. a Ctrl-C that reached only this process: SIGINT, so that the child
        # unwinds as this one does (and removes its half-written files).
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


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
