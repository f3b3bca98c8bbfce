"""Progress of long work (indexing), reported through one small interface.

The library never prints: it calls a `Progress` the caller passes in.  The
CLI passes `TerminalProgress`, which draws a bar on stderr only when stderr is
a terminal and the work has already taken about a second.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO

__all__ = ["Progress", "TerminalProgress", "human_size", "members_text", "phase"]


class Progress(Protocol):
    """What the library reports to.  It may also have ``phase(what: str)``, called
    when the bytes are all read and the work goes on (merging, writing the index)
    with what it does now, until `finish`; `phase` calls it where it exists."""

    def start(self, total_bytes: int, what: str) -> None: ...

    def update(self, done_bytes: int, members: int) -> None: ...

    def finish(self) -> None: ...


def phase(progress: Progress | None, what: str) -> None:
    """Tell ``progress`` what the work does now, if it listens for that (an optional
    hook: a Progress written before it existed keeps working)."""
    hook = getattr(progress, "phase", None)
    if hook is not None:
        hook(what)


def members_text(n: int) -> str:
    return f"{n} member{'' if n == 1 else 's'}"


def human_size(n: float) -> str:
    """``123 B``, ``1.5 KiB``, ``3.2 GiB``: sizes for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class TerminalProgress:
    """A one-line bar: bytes done of total, members indexed, rate, time left."""

    def __init__(self, stream: TextIO | None = None, delay: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.delay = delay
        self.total = 0
        self.what = ""
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False
        # A phase has no updates to draw it: a timer does, once the work has taken `delay`.
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._timer: threading.Timer | None = None

    def start(self, total_bytes: int, what: str) -> None:
        self.total = max(total_bytes, 1)
        self.what = what
        self.t0 = time.monotonic()

    def update(self, done_bytes: int, members: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.t0
        if elapsed < self.delay or now - self.last_draw < 0.1:
            return
        self.last_draw = now
        frac = min(done_bytes / self.total, 1.0)
        rate = done_bytes / elapsed if elapsed > 0 else 0.0
        left = (self.total - done_bytes) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * 24)
        self.stream.write(
            f"\r{self.what}: [{bar:<24}] {frac * 100:5.1f}% {human_size(done_bytes)}/{human_size(self.total)} "
            f"{members_text(members)} {human_size(rate)}/s {left:4.0f}s left \x1b[K"
        )
        self.stream.flush()
        self.drawn = True

    def phase(self, what: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._phase = what
        wait = self.delay - (time.monotonic() - self.t0)
        if self._timer is not None:
            self._timer.cancel()  # an earlier phase's, not drawn yet: this one replaces it
        if wait <= 0:
            self._draw_phase()
            return
        self._timer = threading.Timer(wait, self._draw_phase)
        self._timer.daemon = True
        self._timer.start()

    def _draw_phase(self) -> None:
        with self._lock:
            if self._phase is None:
                return  # finished meanwhile
            self.stream.write(f"\r{self.what}: {self._phase} \x1b[K")
            self.stream.flush()
            self.drawn = True

    def finish(self) -> None:
        with self._lock:
            self._phase = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self.drawn = False
