"""The programs the benchmark runs, found or installed: imagefs, ratarmount, py-spy, GNU tools.

imagefs is the checkout's own (``<project>/.venv/bin/imagefs``, then an
``imagefs`` on PATH, then ``python cli.py`` with the running interpreter;
``--imagefs`` overrides).  ratarmount and py-spy come from PyPI into a
venv of their own under the work directory, so they never touch the
project's environment; it is created once and reused.  ``bench/blobfs.c``,
the minimal C FUSE server that shows what the kernel's FUSE path itself
gives a `cat`, is compiled into the work directory (when gcc and
libfuse3-dev are there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

__all__ = ["Tools", "find_tools"]

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The peer, pinned so that figures from different days compare.
RATARMOUNT = "ratarmount==1.3.0"
PY_SPY = "py-spy==0.4.3"


@dataclass(frozen=True, slots=True)
class Tools:
    """Command prefixes: ``imagefs`` is e.g. ``[".venv/bin/imagefs"]`` or ``[python, "cli.py"]``."""

    imagefs: tuple[str, ...]
    ratarmount: str
    py_spy: str
    fusermount: str
    blobfs: str | None = None  # the minimal C FUSE server, if it could be built


def _imagefs_command(override: str | None) -> tuple[str, ...]:
    if override:
        return tuple(override.split())
    venv = os.path.join(PROJECT, ".venv", "bin", "imagefs")
    if os.access(venv, os.X_OK):
        return (venv,)
    on_path = shutil.which("imagefs")
    if on_path:
        return (on_path,)
    return (sys.executable, os.path.join(PROJECT, "cli.py"))


def _check_imagefs(cmd: tuple[str, ...]) -> None:
    r = subprocess.run([*cmd, "--version"], capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        sys.exit(f"bench: cannot run imagefs as {' '.join(cmd)}: {why[0]}\n"
                 f"  run it with the project's interpreter (e.g. .venv/bin/python bench/run.py) "
                 f"or pass --imagefs 'PATH/TO/imagefs'")


def _compile_imagefs(cmd: tuple[str, ...], log: Callable[[str], None]) -> None:
    """Write the bytecode of the imagefs that ``cmd`` runs, as an installed copy has it.

    An editable checkout run with PYTHONDONTWRITEBYTECODE (or by a user who
    cannot write there) compiles every changed module on every start: 50-80
    ms more for each mount, which the second-mount row would measure.
    """
    python = cmd[0]
    try:
        with open(python, "rb") as f:
            first = f.readline()
        if first.startswith(b"#!"):  # a console script: the interpreter of its shebang
            python = first[2:].decode().split()[0]
    except OSError:
        pass
    code = ("import compileall, os, cli, imagefs; "
            "compileall.compile_dir(os.path.dirname(imagefs.__file__), quiet=1); "
            "compileall.compile_file(cli.__file__, quiet=1)")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    if r.returncode != 0:
        log(f"bench: could not compile imagefs' bytecode ({(r.stderr or r.stdout).strip()[-200:]}); "
            "mount times include compiling it")


def _peer_venv(workdir: str, log: Callable[[str], None]) -> str:
    venv = os.path.join(workdir, "ratarmount-venv")
    bin_dir = os.path.join(venv, "bin")
    if not (os.access(os.path.join(bin_dir, "ratarmount"), os.X_OK) and os.access(os.path.join(bin_dir, "py-spy"), os.X_OK)):
        log(f"installing {RATARMOUNT} and {PY_SPY} into {venv}")
        if not os.path.exists(os.path.join(bin_dir, "python")):
            subprocess.run(["python3", "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(bin_dir, "python"), "-m", "pip", "install", "-q", RATARMOUNT, PY_SPY],
                       check=True)
    return bin_dir


def find_tools(workdir: str, imagefs_override: str | None, log: Callable[[str], None]) -> Tools:
    """Everything needed, installing the peer's venv if missing; exits with a reason if impossible."""
    for tool in ("tar", "gzip", "find", "ls", "grep", "cat", "dd"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None or not os.path.exists("/dev/fuse"):
        sys.exit("bench: FUSE is not available (fusermount3 or /dev/fuse missing): install fuse3")
    cmd = _imagefs_command(imagefs_override)
    _check_imagefs(cmd)
    _compile_imagefs(cmd, log)
    bin_dir = _peer_venv(workdir, log)
    return Tools(imagefs=cmd, ratarmount=os.path.join(bin_dir, "ratarmount"),
                 py_spy=os.path.join(bin_dir, "py-spy"), fusermount=fusermount, blobfs=_build_blobfs(workdir, log))


def _build_blobfs(workdir: str, log: Callable[[str], None]) -> str | None:
    """bench/blobfs.c compiled into ``workdir`` (again when the source is newer); None,
    logged, where there is no compiler or libfuse3-dev: the `cat` rows then lack that peer."""
    src = os.path.join(PROJECT, "bench", "blobfs.c")
    out = os.path.join(workdir, "blobfs")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True,
                               check=True).stdout.split()
        subprocess.run(["gcc", "-O2", "-Wall", "-o", out, src, *flags], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        why = getattr(e, "stderr", None) or str(e)
        log(f"bench: cannot build bench/blobfs.c (the minimal C FUSE peer): {why.strip().splitlines()[-1]}")
        return None
    return out
