"""Shared fixtures: the CLI as a subprocess, real FUSE mounts with forced cleanup, the corpus.

Every mount is made by a separate ``imagefs`` process (never in the pytest
process: pyfuse3 keeps global state, and a hung handler must not hang the
test run).  Every wait has a timeout.  The finalizer of `mounted` always
tears down what the test mounted, whatever happened: ``imagefs umount``,
then ``fusermount3 -u``, then ``fusermount3 -uz``, then the daemon is killed
(found through the mountpoint in ``/proc/*/cmdline``).  It then checks that
nothing is left and fails the test's teardown if something is: a leaked
mount or daemon is a bug worth seeing.

Mount state is read from ``/proc/self/mountinfo``, never with
``os.path.ismount``: a stat of a dead or hung FUSE mount fails or blocks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = PROJECT_ROOT.parent / "shared" / "corpus"
TESTS_DIR = Path(__file__).resolve().parent
for _p in (str(PROJECT_ROOT), str(TESTS_DIR)):  # `import cli`, `import builder`
    if _p not in sys.path:
        sys.path.insert(0, _p)

TIMEOUT = 60.0  # every subprocess and every wait in these tests


# -- FUSE availability --------------------------------------------------------


def fuse_unavailable() -> str | None:
    """Why real mounts cannot be tested here, or None if they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (load the fuse module / run the container with --device /dev/fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = fuse_unavailable()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"FUSE tests need /dev/fuse and fusermount3: {why}")
    for item in items:
        if item.get_closest_marker("fuse") is not None:
            item.add_marker(skip)


# -- mount table and processes --------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    options: frozenset[str]  # per-mount and per-superblock options together


def mount_entries() -> list[MountEntry]:
    """The current mount table of this process's namespace."""
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.rstrip("\n").partition(" - ")
            fields = pre.split(" ")
            fstype, source, super_opts = (post.split(" ") + ["", "", ""])[:3]
            entries.append(MountEntry(
                mountpoint=_unescape_mountinfo(fields[4]),
                fstype=fstype,
                source=_unescape_mountinfo(source),
                options=frozenset(fields[5].split(",")) | frozenset(super_opts.split(",")),
            ))
    return entries


def mount_entry(mountpoint: str | os.PathLike[str]) -> MountEntry | None:
    """The (last, i.e. visible) mount at ``mountpoint``, or None."""
    mp = os.path.abspath(mountpoint)
    found = None
    for e in mount_entries():
        if e.mountpoint == mp:
            found = e
    return found


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    return mount_entry(mountpoint) is not None


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (nobody reaped it yet) counts as exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def processes_for(mountpoint: str | os.PathLike[str], aliases: Sequence[str] = ()) -> list[int]:
    """Live imagefs processes of ``mountpoint``: a daemon forked from ``imagefs
    mount``, or a ``mount -f`` (their command line names it, absolute or as one
    of ``aliases``)."""
    mp = os.path.abspath(mountpoint)
    names = {mp, *aliases}
    me = os.getpid()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="surrogateescape") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        text = " ".join(argv)
        if "imagefs" not in text and "cli.py" not in text:
            continue
        if "mount" in argv and names & set(argv) and "umount" not in argv:
            if process_alive(int(d)):
                pids.append(int(d))
    return pids


def _run_quiet(cmd: Sequence[str]) -> None:
    try:
        subprocess.run(list(cmd), capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        pass


def _responsive(mp: str) -> bool:
    """Whether the daemon behind ``mp`` still answers: a lookup of a fresh name (which no
    kernel cache can answer), in a child process so that a hang costs only the timeout."""
    probe = os.path.join(mp, f".imagefs-test-probe-{os.getpid()}-{time.monotonic_ns()}")
    try:
        subprocess.run(["stat", probe], capture_output=True, timeout=5, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    except OSError:
        pass
    return True


def _signal_all(mp: str, sig: int, aliases: Sequence[str] = ()) -> bool:
    """Send ``sig`` to every imagefs process of ``mp`` and wait for them; whether there were any."""
    pids = processes_for(mp, aliases)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    if pids:
        wait_until(lambda: not processes_for(mp, aliases), timeout=5.0)
    return bool(pids)


def force_unmount(mountpoint: str | os.PathLike[str], cli: Sequence[str], aliases: Sequence[str] = ()) -> list[str]:
    """Remove any mount at ``mountpoint`` and end its daemon, by ever stronger means.

    Returns what is still wrong afterwards (empty when all is clean).
    """
    mp = os.path.abspath(mountpoint)
    if is_mounted(mp) and not _responsive(mp):
        # A stopped or deadlocked daemon answers nothing, and every step below would block
        # on it until its timeout.  Dead, it leaves a stale mount that they clear at once.
        _signal_all(mp, signal.SIGKILL, aliases)
    steps: list[list[str]] = [
        [*cli, "umount", mp],
        ["fusermount3", "-u", mp],
        ["fusermount3", "-uz", mp],
    ]
    for cmd in steps:
        if not is_mounted(mp):
            break
        _run_quiet(cmd)
        wait_until(lambda: not is_mounted(mp), timeout=2.0)
    # A daemon whose mount is gone exits by itself; give it a moment, then make it.
    wait_until(lambda: not processes_for(mp, aliases), timeout=5.0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _signal_all(mp, sig, aliases):
            break
    if is_mounted(mp):  # killing the daemon can leave a stale mount behind
        _run_quiet(["fusermount3", "-uz", mp])
        wait_until(lambda: not is_mounted(mp), timeout=5.0)
    problems = []
    if is_mounted(mp):
        problems.append(f"{mp} is still mounted")
    if processes_for(mp, aliases):
        problems.append(f"imagefs processes for {mp} still running: {processes_for(mp, aliases)}")
    return problems


# -- the CLI -------------------------------------------------------------------


def cli_after(prelude: str) -> list[str]:
    """The CLI of this checkout, run after the Python statements ``prelude`` (which
    may replace a piece of imagefs or pyfuse3 to reach a path CI cannot otherwise)."""
    run = "import runpy, sys; sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"
    return [sys.executable, "-c", f"{prelude}\n{run}", str(PROJECT_ROOT / "cli.py")]


@pytest.fixture(scope="session")
def imagefs_bin() -> list[str]:
    """The command that runs the imagefs CLI of this checkout (a list, for subprocess)."""
    return [sys.executable, str(PROJECT_ROOT / "cli.py")]


def run_cli(cli: Sequence[str], *args: str | os.PathLike[str], timeout: float = TIMEOUT,
            **kw: object) -> subprocess.CompletedProcess[str]:
    """Run imagefs with ``args``; output captured as text, stdin closed, a timeout."""
    env = dict(os.environ)
    env.pop("IMAGEFS_DEBUG", None)
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [*cli, *map(str, args)], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, env=kw.pop("env", env), **kw,
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str], mountpoint: str | os.PathLike[str] | None = None) -> str:
    """The contract for every refused command: non-zero, one ``imagefs: `` line, no
    traceback, nothing on stdout, nothing left mounted.  Returns the message."""
    assert r.returncode != 0, f"exit status 0; stderr: {r.stderr!r}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("imagefs: "), f"stderr does not start with 'imagefs: ': {r.stderr!r}"
    assert r.stderr.endswith("\n") and r.stderr.count("\n") == 1, f"not exactly one line: {r.stderr!r}"
    assert r.stdout == "", r.stdout
    if mountpoint is not None:
        assert not is_mounted(mountpoint), f"{mountpoint} was left mounted"
        assert processes_for(mountpoint) == [], "an imagefs daemon was left running"
    return r.stderr[len("imagefs: "):].strip()


# -- mounts --------------------------------------------------------------------


@dataclass
class Mount:
    """One successful mount made by `Mounter`."""

    archive: Path
    mountpoint: Path
    cache_dir: Path
    result: subprocess.CompletedProcess[str]

    def daemon_pids(self) -> list[int]:
        return processes_for(self.mountpoint)

    def daemon_pid(self) -> int:
        pids = self.daemon_pids()
        assert len(pids) == 1, f"expected one imagefs daemon for {self.mountpoint}, found {pids}"
        return pids[0]


class Mounter:
    """Mounts archives in subprocesses and guarantees they are gone afterwards.

    ``mounter(archive)`` mounts in the background (the default mode) with a
    private ``--cache-dir`` and returns a `Mount`; `run` runs any imagefs
    command that may mount, `foreground` starts ``mount -f``.  Every
    mountpoint they touch is torn down by `cleanup`.
    """

    def __init__(self, cli: Sequence[str], workdir: Path) -> None:
        self.cli = list(cli)
        self.workdir = workdir
        self.cache_dir = workdir / "cache"
        self.tracked: dict[Path, list[str]] = {}  # mountpoint -> other spellings on command lines
        self.procs: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def new_mountpoint(self) -> Path:
        self._n += 1
        mp = self.workdir / f"mnt{self._n}"
        mp.mkdir()
        return mp

    def track(self, mountpoint: str | os.PathLike[str], alias: str | None = None) -> None:
        """Clean ``mountpoint`` up after the test; ``alias``: how a command line names it (relative)."""
        aliases = self.tracked.setdefault(Path(os.path.abspath(mountpoint)), [])
        if alias is not None:
            aliases.append(alias)

    def run(self, *args: str | os.PathLike[str], mountpoint: str | os.PathLike[str] | None = None,
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``imagefs ARGS``; ``mountpoint`` (if any) is cleaned up afterwards."""
        if mountpoint is not None:
            self.track(mountpoint)
        return run_cli(self.cli, *args, timeout=timeout)

    def __call__(self, archive: str | os.PathLike[str], *args: str,
                 mountpoint: str | os.PathLike[str] | None = None, image: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> Mount:
        """Mount ``archive`` in the background and assert that it worked."""
        mp = Path(mountpoint) if mountpoint is not None else self.new_mountpoint()
        cache = Path(cache_dir) if cache_dir is not None else self.cache_dir
        extra = ["--image", image] if image is not None else []
        r = self.run("mount", "--cache-dir", cache, *extra, *args, archive, mp, mountpoint=mp)
        assert r.returncode == 0, f"imagefs mount failed ({r.returncode}): {r.stderr.strip()}"
        assert is_mounted(mp), f"imagefs mount exited 0 but {mp} is not mounted"
        return Mount(Path(archive), mp, cache, r)

    def foreground(self, archive: str | os.PathLike[str], mountpoint: str | os.PathLike[str],
                   *args: str) -> subprocess.Popen[bytes]:
        """Start ``imagefs mount -f`` and return once the mount is up (or fail fast)."""
        self.track(mountpoint)
        log = open(self.workdir / f"foreground-{self._n}.log", "wb")
        proc = subprocess.Popen(
            [*self.cli, "mount", "-f", "--cache-dir", str(self.cache_dir), *args, str(archive), str(mountpoint)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        up = wait_until(lambda: is_mounted(mountpoint) or proc.poll() is not None)
        if not is_mounted(mountpoint):
            output = (self.workdir / f"foreground-{self._n}.log").read_text(errors="replace")
            pytest.fail(f"mount -f did not mount within {TIMEOUT:.0f}s (timed out: {not up}, "
                        f"exit status {proc.poll()}): {output.strip()}")
        return proc

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for mp, aliases in reversed(self.tracked.items()):
            problems += force_unmount(mp, self.cli, aliases)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                problems.append(f"foreground imagefs (pid {proc.pid}) was still running")
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"foreground imagefs (pid {proc.pid}) did not die")
        return problems


@pytest.fixture
def mounted(imagefs_bin: list[str], tmp_path: Path) -> Iterator[Mounter]:
    """A `Mounter` whose mounts are all gone when the test ends, pass or fail."""
    why = fuse_unavailable()
    if why is not None:
        pytest.skip(f"FUSE tests need /dev/fuse and fusermount3: {why}")
    mounter = Mounter(imagefs_bin, tmp_path)
    try:
        yield mounter
    finally:
        problems = mounter.cleanup()
    assert not problems, "cleanup after the test found leftovers: " + "; ".join(problems)


# -- the corpus ----------------------------------------------------------------


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """``../shared/corpus`` next to the project (real archives and their oracles)."""
    if not (CORPUS_DIR / "listing.py").is_file():
        pytest.skip(f"the image corpus is not here: {CORPUS_DIR} (with listing.py) is missing")
    return CORPUS_DIR


def corpus_file(corpus_dir: Path, name: str) -> Path:
    """The archive ``name`` of the corpus; the test is skipped if this copy of the corpus lacks it."""
    path = corpus_dir / name
    if not path.is_file():
        pytest.skip(f"{path} is not in this copy of the corpus")
    return path


# -- the optional C halves -------------------------------------------------------


def c_half_or_python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, module: object,
                     attr: str) -> str:
    """For a fixture parametrised ["c", "python"]: "python" hides the C module
    ``module.attr`` (the pure-Python path runs), "c" needs it built (see require_c_half)."""
    if request.param == "python":
        monkeypatch.setattr(module, attr, None)
    else:
        require_c_half(module, attr)
    return str(request.param)


def require_c_half(module: object, attr: str) -> None:
    """Skip the test when the optional C module ``module.attr`` was not built
    (no compiler at install time); fail instead where IMAGEFS_REQUIRE_C says it must be."""
    if getattr(module, attr) is None:
        if os.environ.get("IMAGEFS_REQUIRE_C"):
            pytest.fail(f"imagefs.{attr} is not built (IMAGEFS_REQUIRE_C is set)")
        pytest.skip(f"imagefs.{attr} is not built here (no C compiler at install time)")
