"""A check run in a thread beside the work it checks, joined when that is done.

The first mount reads every byte of a gzip stream twice: indexed_gzip
decompresses it to find the tar headers, and zlib decompresses it again for
the CRC-32s that indexed_gzip never checks (`gzipblob.check_gzip`).  zlib
releases the GIL while it inflates, so on a second core the check costs no
wall time.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["Check", "beside"]


class Check:
    """A running (or deferred) ``fn(*args, stop=...)``: ``stop(done)`` is true once
    cancelled, or once ``done`` (how far ``fn`` has come) passes the limit given
    to `result`."""

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...], parallel: bool) -> None:
        self._fn, self._args = fn, args
        self._stop = False
        self._limit: int | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if parallel:
            self._thread = threading.Thread(target=self._run, name="imagefs-check", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._fn(*self._args, stop=self._stopped)
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def _stopped(self, done: int) -> bool:
        return self._stop or (self._limit is not None and done > self._limit)

    def result(self, limit: int | None = None) -> None:
        """Wait for the check to end, or to pass ``limit`` (run it now, if
        deferred), and raise what it raised."""
        self._limit = limit
        if self._thread is None:
            self._run()
        else:
            try:
                self._thread.join()
            except BaseException:  # Ctrl-C while waiting: the check must not outlive its caller
                self.cancel()
                raise
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop the check and wait for it (the work it checks failed or was interrupted)."""
        self._stop = True
        if self._thread is not None:
            self._thread.join()


def beside(fn: Callable[..., None], *args: Any, parallel: bool = True) -> Check:
    """Start ``fn(*args, stop=...)`` in a thread (``fn`` polls ``stop(done)``), or
    with ``parallel=False`` only defer it to `Check.result`: for readers that
    two threads must not share, such as a decompressing stream."""
    return Check(fn, args, parallel)
