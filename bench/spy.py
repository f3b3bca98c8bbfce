"""py-spy around imagefs: where the index build and the daemon spend their time.

`spy_command` runs a command (``imagefs mount`` of a fresh cache: the index
build happens in that process) under ``py-spy record``; `spy_pid` attaches to
a running daemon and is stopped with SIGINT, which makes py-spy write its
file.  Output is py-spy's ``raw`` format (collapsed stacks, one
``frame;frame;... count`` per line; ``flamegraph.pl`` turns it into an SVG),
and `top_functions` sums it into the functions with the most samples, by
own time and including callees.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import subprocess
import time
from typing import Any

__all__ = ["profile_markdown", "profile_text", "spy_command", "spy_pid", "stop_spy", "top_functions"]

RATE = 200


def _argv(py_spy: str, out: str) -> list[str]:
    # -F: one entry per function, not per line; --nonblocking: do not pause the target to sample.
    return [py_spy, "record", "-F", "--nonblocking", "-f", "raw", "-r", str(RATE), "-o", out]


def spy_command(py_spy: str, out: str, argv: list[str], timeout: float) -> float:
    """Run ``argv`` under py-spy; returns its wall time."""
    t0 = time.perf_counter()
    subprocess.run([*_argv(py_spy, out), "--", *argv], stdin=subprocess.DEVNULL, capture_output=True,
                   timeout=timeout, check=False)
    return time.perf_counter() - t0


def spy_pid(py_spy: str, out: str, pid: int) -> subprocess.Popen[bytes]:
    """Start sampling ``pid``; give it a moment to attach."""
    proc = subprocess.Popen([*_argv(py_spy, out), "--pid", str(pid)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.5)
    return proc


def stop_spy(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (py-spy then writes its output), by the pid of the py-spy we started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _short(frame: str) -> str:
    # "name (path/file.py:12)" -> keep it; shorten long site-packages paths.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    return f"{name} ({where})" if where else name


def top_functions(raw_path: str, n: int = 15) -> dict[str, Any]:
    """Functions with the most samples: ``self`` (on top of the stack) and ``total`` (imagefs's own
    functions, anywhere in the stack: their cost including what they call).

    Shares are of all samples in which the process was busy (py-spy drops
    idle samples, e.g. the daemon waiting for the kernel's next request).
    """
    self_c: collections.Counter[str] = collections.Counter()
    total_c: collections.Counter[str] = collections.Counter()
    samples = 0
    if not os.path.exists(raw_path):
        return {"samples": 0, "self": [], "total": [], "file": raw_path}
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            frames = [_short(fr) for fr in stack.split(";") if not fr.startswith("process ")]
            if not frames:
                continue
            samples += c
            self_c[frames[-1]] += c
            for fr in set(frames):
                total_c[fr] += c

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(fn, round(100.0 * c / samples, 1)) for fn, c in counter.most_common(n)] if samples else []

    # Including callees, only imagefs's own functions say something, and not its trunk (serve,
    # run_daemon, build_index: on nearly every stack, like click's and trio's frames).
    ours = collections.Counter({fn: c for fn, c in total_c.items() if "(imagefs/" in fn and c < 0.85 * samples})
    return {"samples": samples, "self": share(self_c), "total": share(ours), "file": raw_path}


def profile_text(p: dict[str, Any]) -> str:
    out = ["Profile (py-spy, share of busy samples)"]
    for name, r in p.items():
        busy = (f", daemon on a CPU {100 * r['cpu_share']:.0f}% of the time, waiting for one "
                f"{100 * r['runq_share']:.0f}%" if r.get("cpu_share") is not None else "")
        out.append(f"\n{name}: {r.get('seconds', 0):.1f}s, {r['samples']} samples{busy} ({r['file']})")
        out.append("  own time:")
        out += [f"    {pct:5.1f}%  {fn}" for fn, pct in r["self"][:12]]
        out.append("  imagefs functions, including callees:")
        out += [f"    {pct:5.1f}%  {fn}" for fn, pct in r["total"][:12]]
    return "\n".join(out)


def profile_markdown(p: dict[str, Any]) -> str:
    out = ["#### Profile (py-spy, share of busy samples)", ""]
    for name, r in p.items():
        busy = (f", daemon on a CPU {100 * r['cpu_share']:.0f}% of the time, waiting for one "
                f"{100 * r['runq_share']:.0f}%" if r.get("cpu_share") is not None else "")
        out += [f"**{name}** ({r.get('seconds', 0):.1f}s, {r['samples']} samples{busy})", "",
                "| own time | function | imagefs function incl. callees | |", "|---|---|---|---|"]
        for a, b in itertools.zip_longest(r["self"][:10], r["total"][:10]):
            cells = [f"{x[1]}% | `{x[0]}`" if x else " | " for x in (a, b)]
            out.append(f"| {cells[0]} | {cells[1]} |")
        out.append("")
    return "\n".join(out)
