"""The indexing bar: drawn on a terminal only, after a delay, through the merge and
the index write as well as the reading, and always cleared."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

import builder as b
from imagefs.build import BuildOptions, build_index
from imagefs.errors import ImageFSError
from imagefs.progress import TerminalProgress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _wait_for(cond: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_bar_then_phase_then_cleared() -> None:
    out = Tty()
    p = TerminalProgress(out, delay=0)
    p.start(1000, "indexing a.tar")
    p.update(500, 12)
    assert "indexing a.tar: [" in out.getvalue() and "50.0%" in out.getvalue() and "12 members" in out.getvalue()
    p.phase("merging 12 members")
    assert out.getvalue().endswith("\rindexing a.tar: merging 12 members \x1b[K")
    p.finish()
    assert out.getvalue().endswith("\r\x1b[K") and not p.drawn


def test_a_phase_is_drawn_once_the_work_has_taken_the_delay() -> None:
    """No update comes during a merge: a timer draws the phase if the work is still going."""
    out = Tty()
    p = TerminalProgress(out, delay=1.0)
    p.start(1000, "indexing a.tar")
    p.phase("writing the index")
    assert out.getvalue() == ""
    assert _wait_for(lambda: "writing the index" in out.getvalue())
    p.finish()
    assert out.getvalue().endswith("\r\x1b[K")


def test_work_that_ends_before_the_delay_draws_nothing() -> None:
    out = Tty()
    p = TerminalProgress(out, delay=5.0)
    p.start(1000, "indexing a.tar")
    p.update(1000, 3)
    p.phase("merging 3 members")
    timer = p._timer
    assert timer is not None and timer.is_alive()
    p.finish()
    timer.join(5)
    assert not timer.is_alive() and out.getvalue() == ""  # cancelled: it never draws


def test_not_a_terminal_draws_nothing() -> None:
    out = io.StringIO()
    p = TerminalProgress(out, delay=0)
    p.start(1000, "indexing a.tar")
    p.update(500, 1)
    p.phase("merging 1 members")
    p.finish()
    assert out.getvalue() == ""


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def start(self, total_bytes: int, what: str) -> None:
        self.calls.append(("start", what))

    def update(self, done_bytes: int, members: int) -> None:
        self.calls.append(("update", members))

    def phase(self, what: str) -> None:
        self.calls.append(("phase", what))

    def finish(self) -> None:
        self.calls.append(("finish", None))


def test_a_progress_without_phase_still_works(tmp_path: Path) -> None:
    """phase is an optional hook: a Progress written before it existed is still a Progress."""

    class Old:
        def __init__(self) -> None:
            self.finished = False

        def start(self, total_bytes: int, what: str) -> None:
            pass

        def update(self, done_bytes: int, members: int) -> None:
            pass

        def finish(self) -> None:
            self.finished = True

    archive = tmp_path / "a.tar"
    b.write_docker_archive(str(archive), [[b.file("a", b"1")]])
    old = Old()
    build_index(str(archive), BuildOptions(use_cache=False), str(tmp_path / "a.idx"), old)
    assert old.finished


def test_a_failed_build_clears_the_bar(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    b.write_docker_archive(str(archive), [[b.file("a", b"1")]])
    rec = Recorder()
    with pytest.raises(ImageFSError):
        build_index(str(archive), BuildOptions(use_cache=False), str(tmp_path / "no" / "such" / "a.idx"), rec)
    assert [k for k, _ in rec.calls][-1] == "finish" and ("start", "indexing a.tar") in rec.calls


def test_a_build_reports_reading_then_merging_then_writing(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    b.write_docker_archive(str(archive), [[b.file("a", b"1")], [b.file("b", b"2"), b.file("c", b"3")]])
    rec = Recorder()
    build_index(str(archive), BuildOptions(use_cache=False), str(tmp_path / "a.idx"), rec)
    kinds = [k for k, _ in rec.calls]
    assert kinds[0] == "start" and kinds[-1] == "finish" and kinds.count("finish") == 1
    assert [w for k, w in rec.calls if k == "phase"] == ["merging 3 members", "writing the index of 3 members"]
    rec = Recorder()
    build_index(str(archive), BuildOptions(use_cache=False, layer=1), str(tmp_path / "b.idx"), rec)
    assert [w for k, w in rec.calls if k == "phase"] == ["merging 1 member", "writing the index of 1 member"]
