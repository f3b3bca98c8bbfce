"""Run one call in a forked child, for work that must not stay in this process.

Indexing builds Python objects per member (hundreds of MB for a big image)
and frees them at the end, which takes time and leaves the heap fragmented.
`imagefs mount` forks its daemon from itself right after indexing, so it runs
the build in a child: the child exits without freeing anything, and the
daemon starts from a process that never grew.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import time
import traceback
from typing import Any, Callable

from .errors import ImageFSError, IndexingCrashed

__all__ = ["in_child", "wait_exit"]

_PR_SET_PDEATHSIG = 1


def in_child(fn: Callable[..., Any], *args: Any, on_crash: Callable[[int], None] | None = None) -> Any:
    """``fn(*args)``, run in a forked child; its result, or its error raised here.

    ImageFSError, OSError and KeyboardInterrupt cross back as they were raised.
    Anything else (a bug, a result or error that does not pickle, a child that
    was killed) is IndexingCrashed; the child prints a bug's traceback, and
    ``on_crash(child_pid)`` can remove what a child that never unwound left.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write what is buffered here a second time
    r, w = os.pipe()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # pragma: no cover - runs in the child (the tests see its effects)
        code = 1
        try:
            os.close(r)
            code = _run_child(fn, args, w, parent)
        finally:
            os._exit(code)  # whatever happened: the child never returns into the caller's code
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
    except BaseException:
        # A Ctrl-C from the terminal reaches the child as well: give it a moment to
        # unwind by itself (a second SIGINT could cut its clean-up short).  One that
        # reached only this process is passed on, so the child removes what it
        # half wrote rather than finish the work for nobody.
        if wait_exit(pid, 1.0) is None:
            os.kill(pid, signal.SIGINT)
            os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    try:
        kind, value = pickle.loads(data) if data else ("died", None)
    except Exception:
        kind, value = "died", None
    if kind == "ok":
        return value
    if kind == "raise":
        raise value
    if on_crash is not None:
        on_crash(pid)
    if kind == "bug":
        raise IndexingCrashed("indexing failed on a bug (its traceback is above)")
    raise IndexingCrashed(f"the indexing process died ({_describe(status)})")


def _run_child(fn: Callable[..., Any], args: tuple[Any, ...], w: int, parent: int) -> int:  # pragma: no cover
    """The child's side of in_child: its exit status.  Never frees what fn built."""
    code = 1
    try:
        # Killed with its parent (SIGINT, so that it unwinds and removes its
        # temporary files), rather than indexing on for nobody.
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:
            return 1  # the parent died before the line above
        try:
            outcome: tuple[str, Any] = ("ok", fn(*args))
            code = 0
        except (ImageFSError, OSError, KeyboardInterrupt) as e:
            outcome = ("raise", e)
        except BaseException:
            traceback.print_exc()
            outcome = ("bug", None)
        try:
            data = pickle.dumps(outcome)
        except Exception:
            traceback.print_exc()
            data, code = pickle.dumps(("bug", None)), 1
        try:
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except OSError:
            code = 1  # the parent stopped listening (interrupted): nobody to tell
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return code


def wait_exit(pid: int, seconds: float) -> int | None:
    """Reap child ``pid`` if it ends within ``seconds`` (0: only if it has ended):
    its wait status, or None if it still runs."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
