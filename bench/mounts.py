"""Mounting imagefs, ratarmount and blobfs for a measurement, and always unmounting them again.

`Mounts` remembers every mount it made.  `Mounts.close` (also on the way out
of a ``with`` block, whatever happened) removes each with ``fusermount3 -u``,
then ``-uz`` if that fails, and waits for the daemon it started to exit;
only a daemon of its own that outlives a lazy unmount is signalled, by pid.
Mounts it did not make are never touched.  Those steps are functions of their
own (`daemon_pids`, `fusermount_unmount`, `reap_daemon`) for ``stress.py``,
which mounts with options `Mounts` does not offer.

The daemons are found by their command lines in ``/proc`` (what ``pgrep -f``
reads): an imagefs daemon is forked from ``imagefs mount`` and keeps that
command's arguments, and ratarmount has the mountpoint as an argument.
Mountpoints are always passed as absolute paths, so the match is exact.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from tools import Tools

__all__ = [
    "BenchError", "Mounted", "Mounts", "clear_stale", "daemon_pids", "fusermount_unmount", "is_mounted",
    "reap_daemon", "reset_dir", "rss_of", "sched_times",
]

MOUNT_TIMEOUT = 900.0


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Mounted:
    """A live mount: who serves it (``pid``, None if not found) and how long mounting took."""

    kind: str
    mountpoint: str
    pid: int | None
    seconds: float


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_paths() -> set[str]:
    """Every mountpoint of this mount namespace (stale FUSE mounts included)."""
    with open("/proc/self/mountinfo") as f:
        return {_unescape(line.split()[4]) for line in f}


def is_mounted(path: str) -> bool:
    return os.path.abspath(path) in mounted_paths()


def _cmdlines() -> dict[int, list[str]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            if raw:
                out[int(name)] = [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
    return out


def _serves(kind: str, argv: list[str], mp: str) -> bool:
    if kind == "imagefs":
        # forked from `imagefs mount` (after the command itself has exited): its command line
        return ("mount" in argv and any(a.endswith(("imagefs", "cli.py")) for a in argv[:3])
                and os.path.isabs(argv[-1]) and os.path.normpath(argv[-1]) == mp)
    if kind == "blobfs":
        return bool(argv) and argv[0].endswith("blobfs") and mp in argv
    return any("ratarmount" in a for a in argv[:2]) and mp in argv


def daemon_pids(kind: str, mp: str) -> list[int]:
    """The live processes (this one aside) serving ``mp`` as ``kind`` ("imagefs", "ratarmount", "blobfs")."""
    mp = os.path.abspath(mp)
    return [pid for pid, argv in _cmdlines().items()
            if pid != os.getpid() and _serves(kind, argv, mp) and _alive(pid)]


def _find_daemon(kind: str, mp: str) -> int | None:
    pids = daemon_pids(kind, mp)
    return pids[0] if pids else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def sched_times(pid: int) -> tuple[float, float] | None:
    """Seconds all threads of ``pid`` have run on a CPU, and waited runnable for one (None if gone).

    From ``/proc/PID/task/*/schedstat``.  The second figure is how much a busy
    machine delayed the daemon: time it was ready but another process ran.
    """
    on_cpu = waiting = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, _slices = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
        on_cpu += run_ns
        waiting += wait_ns
    return on_cpu / 1e9, waiting / 1e9


def rss_of(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of ``pid`` in MB (10^6 bytes)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024 / 1e6
    return out


class Mounts:
    """The mounts of one benchmark run; use as a context manager."""

    def __init__(self, tools: Tools, log_dir: str, log: Callable[[str], None]) -> None:
        self.tools = tools
        self.log_dir = log_dir
        self.log = log
        self.live: dict[str, Mounted] = {}

    def __enter__(self) -> "Mounts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, mp: str) -> str:
        mp = os.path.abspath(mp)
        if is_mounted(mp):  # left by an earlier run that was killed: ours, so clear it
            self._fusermount(mp)
        os.makedirs(mp, exist_ok=True)
        return mp

    def _run_mount(self, kind: str, argv: list[str], mp: str) -> Mounted:
        t0 = time.perf_counter()
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._cleanup_failed(kind, mp)
            raise BenchError(f"{kind} mount of {mp} took over {MOUNT_TIMEOUT:.0f}s") from None
        deadline = time.monotonic() + 60
        while r.returncode == 0 and not os.path.ismount(mp) and time.monotonic() < deadline:
            time.sleep(0.005)  # ratarmount may return just before the kernel mount exists
        seconds = time.perf_counter() - t0
        if r.returncode != 0 or not os.path.ismount(mp):
            self._cleanup_failed(kind, mp)
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
            raise BenchError(f"{kind} mount failed (exit {r.returncode}): {' '.join(argv)}\n{tail}")
        m = Mounted(kind, mp, _find_daemon(kind, mp), seconds)
        self.live[mp] = m
        return m

    def _cleanup_failed(self, kind: str, mp: str) -> None:
        pid = _find_daemon(kind, mp)
        if is_mounted(mp):
            self._fusermount(mp)
        if pid is not None:
            self._reap(pid)

    def imagefs(self, archive: str, mp: str, cache_dir: str, name: str) -> Mounted:
        """``imagefs mount`` of ``archive`` with index cache ``cache_dir``; returns once mounted."""
        mp = self._prepare(mp)
        log_file = os.path.join(self.log_dir, f"imagefs-{name}.log")
        argv = [*self.tools.imagefs, "mount", "-q", "--cache-dir", cache_dir, "--log-file", log_file, archive, mp]
        return self._run_mount("imagefs", argv, mp)

    def ratarmount(self, archive: str, mp: str, index_file: str) -> Mounted:
        """ratarmount (background mode) of a tar or tar.gz with its index at ``index_file``."""
        mp = self._prepare(mp)
        argv = [self.tools.ratarmount, "--index-file", index_file, archive, mp]
        return self._run_mount("ratarmount", argv, mp)

    def blobfs(self, archive: str, offset: int, length: int, mp: str) -> Mounted:
        """bench/blobfs.c serving ``length`` bytes of ``archive`` at ``offset`` as ``mp/blob``,
        with the 1 MiB readahead imagefs gives its own mounts (root only, as there)."""
        assert self.tools.blobfs is not None
        mp = self._prepare(mp)
        m = self._run_mount("blobfs", [self.tools.blobfs, archive, str(offset), str(length), mp], mp)
        dev = os.stat(mp).st_dev
        try:
            with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
                f.write("1024")
        except OSError as e:
            self.log(f"blobfs: readahead stays at the kernel's default: {e.strerror}")
        return m

    def adopt(self, kind: str, mp: str, seconds: float) -> Mounted:
        """Take over a mount made outside `Mounts` (e.g. under py-spy) so that it is removed too."""
        mp = os.path.abspath(mp)
        m = Mounted(kind, mp, _find_daemon(kind, mp), seconds)
        self.live[mp] = m
        return m

    def _fusermount(self, mp: str) -> None:
        fusermount_unmount(mp, self.tools.fusermount, self.log)

    def _reap(self, pid: int) -> None:
        reap_daemon(pid, self.log)

    def unmount(self, mp: str) -> None:
        mp = os.path.abspath(mp)
        m = self.live.pop(mp, None)
        if is_mounted(mp):
            self._fusermount(mp)
        if m is not None and m.pid is not None:
            self._reap(m.pid)

    def close(self) -> None:
        """Unmount everything still mounted, newest first."""
        for mp in reversed(list(self.live)):
            try:
                self.unmount(mp)
            except Exception as e:  # keep going: every mount must go
                self.log(f"cannot unmount {mp}: {e}")


def fusermount_unmount(mp: str, fusermount: str, log: Callable[[str], None]) -> None:
    """``fusermount -u mp``, retried while the mount is busy, then ``-uz`` (logged) if it still fails."""
    for attempt in range(6):
        r = subprocess.run([fusermount, "-u", mp], capture_output=True, text=True)
        if r.returncode == 0 or not is_mounted(mp):
            return
        time.sleep(0.5 * (attempt + 1))  # busy: a reader we started may still be exiting
    log(f"fusermount -u {mp} failed ({r.stderr.strip()}); unmounting lazily")
    subprocess.run([fusermount, "-uz", mp], capture_output=True, text=True)


def reap_daemon(pid: int, log: Callable[[str], None]) -> None:
    """Wait for a daemon we started to exit; signal it (by pid, logged) only if it will not."""
    for sig, wait in ((None, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            log(f"daemon {pid} did not exit after unmount: sending {sig.name}")
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)


def clear_stale(root: str, tools: Tools, log: Callable[[str], None]) -> None:
    """Unmount mounts under ``root`` (our mount directory) left by an earlier, killed run."""
    root = os.path.abspath(root)
    for mp in sorted(mounted_paths(), reverse=True):
        if mp.startswith(root + os.sep):
            log(f"clearing a mount left by an earlier run: {mp}")
            r = subprocess.run([tools.fusermount, "-u", mp], capture_output=True)
            if r.returncode != 0:
                subprocess.run([tools.fusermount, "-uz", mp], capture_output=True)


def reset_dir(path: str) -> str:
    """An empty directory at ``path`` (for a fresh index cache)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path
