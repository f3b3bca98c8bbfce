"""The timed workloads: each runs one thing a user would run and returns how long it took.

Commands (``find``, ``ls -lR``, ``grep -r``, ``cat``, ``tar -tf``,
``gzip -dc``) run as child processes with their output to ``/dev/null``,
timed from start to exit.  Each is cut at ``cap`` seconds so a slow
filesystem cannot blow the run's time budget: a cut run is reported as a
lower bound (``Timing.capped``), and the child we started is killed by its
process group id.  Reads that need exact offsets (random 4 KiB preads, the
archive bytes of a member) are done here with ``os.pread``.
"""

from __future__ import annotations

import bisect
import os
import random
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass

__all__ = [
    "Timing", "cat", "find_printf", "grep_r", "gzip_dc", "ls_lr", "median_ms", "pread_range", "random_preads",
    "run_timed", "sequential_read", "tar_tf", "warm_file", "warm_tree",
]

_BUF = 1 << 20


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall seconds of one run; ``capped``: cut at the cap, so the real time is longer."""

    seconds: float
    capped: bool = False
    rc: int = 0
    note: str = ""


def run_timed(argv: list[str], cap: float, ok_codes: tuple[int, ...] = (0,), shell: bool = False) -> Timing:
    """Run ``argv`` (stdout to /dev/null) and time it; kill it at ``cap`` seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv if not shell else ["bash", "-c", argv[0]], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our child's own process group
        proc.communicate()
        return Timing(time.perf_counter() - t0, True, -9, f"cut at {cap:.0f}s")
    seconds = time.perf_counter() - t0
    note = ""
    if proc.returncode not in ok_codes:
        lines = err.decode(errors="replace").strip().splitlines()
        note = f"exit {proc.returncode}: {lines[-1] if lines else ''}"[:200]
    return Timing(seconds, False, proc.returncode, note)


def find_printf(root: str, cap: float) -> Timing:
    return run_timed(["find", root, "-printf", "%s %m\n"], cap)


def ls_lr(root: str, cap: float) -> Timing:
    return run_timed(["ls", "-lR", root], cap)


def grep_r(root: str, needle: str, cap: float) -> Timing:
    # Exit 1 is "no match", not an error; the needle is in about one file in a thousand.
    return run_timed(["grep", "-r", needle, root], cap, ok_codes=(0, 1))


def cat(path: str, cap: float) -> Timing:
    return run_timed(["cat", path], cap)


def tar_tf(layer: str, cap: float) -> Timing:
    return run_timed(["tar", "-tf", layer], cap)


def gzip_dc(path: str, cap: float) -> Timing:
    return run_timed([f"gzip -dc {_quote(path)} | wc -c"], cap, shell=True)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def pread_range(path: str, offset: int, length: int, cap: float) -> Timing:
    """Read ``length`` bytes at ``offset`` of ``path`` with 128 KiB preads (what cat's buffer is)."""
    return run_timed(["dd", f"if={path}", "of=/dev/null", "bs=128K", "iflag=skip_bytes,count_bytes",
                      f"skip={offset}", f"count={length}", "status=none"], cap)


def warm_file(path: str) -> None:
    """Read a file once so that its pages are in the page cache."""
    buf = bytearray(_BUF)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def warm_tree(root: str, needle: str) -> None:
    """Walk and read a local tree once (dentries, inodes and data cached), as a used disk would be."""
    subprocess.run(["find", root, "-printf", "%s %m\n"], stdout=subprocess.DEVNULL, check=False)
    subprocess.run(["grep", "-r", needle, root], stdout=subprocess.DEVNULL, check=False)


def random_preads(root: str, files: list[tuple[str, int]], count: int, seed: int, cap: float) -> tuple[list[float], bool]:
    """Latencies (s) of ``count`` 4 KiB preads at offsets uniform over all the files' bytes.

    Only the pread is timed (the file is opened just before).  Returns the
    latencies and whether the cap cut the run short.
    """
    rng = random.Random(seed)
    starts, total = [], 0
    for _path, size in files:
        starts.append(total)
        total += size
    out: list[float] = []
    t_end = time.monotonic() + cap
    for _ in range(count):
        g = rng.randrange(total)
        i = bisect.bisect_right(starts, g) - 1
        path, size = files[i]
        off = min(g - starts[i], max(0, size - 4096))
        fd = os.open(os.path.join(root, path), os.O_RDONLY)
        try:
            t0 = time.perf_counter()
            data = os.pread(fd, 4096, off)
            out.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
        if len(data) != min(4096, size - off):
            raise OSError(f"short read of {path} at {off}: {len(data)} bytes")
        if time.monotonic() > t_end:
            return out, True
    return out, False


def sequential_read(root: str, files: list[tuple[str, int]], cap: float) -> tuple[int, float, bool]:
    """Read every file in ``files`` order, whole, with 1 MiB reads: (bytes, seconds, capped)."""
    buf = bytearray(_BUF)
    done = 0
    t0 = time.perf_counter()
    for path, _size in files:
        with open(os.path.join(root, path), "rb", buffering=0) as f:
            while n := f.readinto(buf):
                done += n
        if time.perf_counter() - t0 > cap:
            return done, time.perf_counter() - t0, True
    return done, time.perf_counter() - t0, False


def median_ms(latencies: list[float]) -> float:
    return statistics.median(latencies) * 1000 if latencies else float("nan")
