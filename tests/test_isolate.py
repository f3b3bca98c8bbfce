"""imagefs.isolate.in_child: a call in a forked child, its result or its error here."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from imagefs.errors import ArchiveError, ImageFSError, IndexingCrashed
from imagefs.isolate import in_child


def _grow_and_return(n: int) -> tuple[int, int]:
    big = [object() for _ in range(n)]  # what the parent must not keep
    return len(big), os.getpid()


def test_the_result_comes_back_and_the_work_ran_elsewhere() -> None:
    n, pid = in_child(_grow_and_return, 1000)
    assert n == 1000 and pid != os.getpid()


def _raise(e: BaseException) -> None:
    raise e


@pytest.mark.parametrize("error", [ArchiveError("x.tar: truncated tar"), OSError(errno.ENOSPC, "No space left")])
def test_errors_cross_as_they_were_raised(error: BaseException) -> None:
    with pytest.raises(type(error)) as caught:
        in_child(_raise, error)
    assert str(caught.value) == str(error)
    if isinstance(error, OSError):
        assert caught.value.errno == errno.ENOSPC


def test_an_imagefs_error_keeps_its_one_line_message() -> None:
    with pytest.raises(ImageFSError, match=r"^bad \\x1b\[31m name$"):
        in_child(_raise, ArchiveError("bad \x1b[31m name"))


def test_a_bug_in_the_child_is_a_runtime_error_with_its_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(IndexingCrashed, match="traceback is above"):
        in_child(_raise, ZeroDivisionError("the bug"))
    assert "ZeroDivisionError: the bug" in capfd.readouterr().err


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_child_that_dies_is_reported_and_cleaned_up_after() -> None:
    crashed: list[int] = []
    with pytest.raises(IndexingCrashed, match="died .*SIGKILL"):
        in_child(_die, on_crash=crashed.append)
    assert len(crashed) == 1 and crashed[0] != os.getpid()  # the child's pid, for its temporary files


class _Unpicklable(OSError):
    def __init__(self, path: str) -> None:  # pickle calls this with (errno, strerror): it fails
        super().__init__(errno.EIO, f"cannot read {path}")


def test_an_error_that_does_not_cross_is_a_crash_not_a_traceback() -> None:
    with pytest.raises(IndexingCrashed):
        in_child(_raise, _Unpicklable("x"))


def test_the_child_does_not_outlive_its_parent(tmp_path) -> None:
    """`kill` of `imagefs mount` while it indexes must not leave the build running."""
    ready, marker = str(tmp_path / "ready"), str(tmp_path / "cleaned")
    middle = os.fork()
    if middle == 0:  # pragma: no cover - the parent that gets killed
        try:
            in_child(_wait_then_mark, ready, marker)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.path.exists(ready)
        os.kill(middle, signal.SIGKILL)
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.path.exists(marker), "the child went on after its parent was killed"
    finally:
        os.waitpid(middle, 0)


_PRINTS_AROUND_A_FORK = """
from imagefs.isolate import in_child

def child():
    print("from the child")  # left in the child's buffer unless in_child flushes it
    return "done"

print("before", end="")  # unflushed when the fork happens: stdout is a pipe, block-buffered
assert in_child(child) == "done"
"""


def test_output_is_neither_lost_nor_doubled() -> None:
    # In a process of its own: under pytest's capture stdout is written through
    # at once, so nothing would be buffered at the fork.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    r = subprocess.run([sys.executable, "-c", _PRINTS_AROUND_A_FORK], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("before") == 1 and "from the child" in out


def test_ctrl_c_in_the_child_is_ctrl_c_here() -> None:
    with pytest.raises(KeyboardInterrupt):
        in_child(_raise, KeyboardInterrupt())


def _wait_then_mark(ready: str, marker: str) -> None:
    with open(ready + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(ready + ".tmp", ready)  # whole when it appears
    try:
        signal.pause()
    finally:
        open(marker, "w").close()  # the cleanup a build does (its temporary index)


def test_interrupted_while_waiting_the_child_unwinds_too(tmp_path) -> None:
    """A Ctrl-C that reaches only this process must not leave the child running,
    nor kill it before it removes what it half wrote."""
    ready, marker = str(tmp_path / "ready"), str(tmp_path / "cleaned")

    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    def fire_when_ready(_sig: int, _frame: object) -> None:
        if os.path.exists(ready):
            interrupt(_sig, _frame)
        signal.setitimer(signal.ITIMER_REAL, 0.05)

    previous = signal.signal(signal.SIGALRM, fire_when_ready)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        with pytest.raises(KeyboardInterrupt):
            in_child(_wait_then_mark, ready, marker)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert os.path.exists(marker)
    with open(ready) as f:
        child = int(f.read())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # gone and reaped (a zombie would still take the signal)
