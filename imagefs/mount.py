"""Serving a tree on a mountpoint: options, the daemon, readiness, signals, unmount.

``imagefs mount`` builds (or reuses) the index in a child process, where
progress and errors still reach the user's terminal, and then forks the
daemon from itself: the daemon only maps the index, and its memory holds no
trace of the indexing.  The daemon reports on a pipe once the kernel mount
answers; the caller exits 0 only then, or prints the daemon's one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .errors import ImageFSError, MountError
from .isolate import wait_exit

if TYPE_CHECKING:
    from .fuseops import ReadOnlyOperations
    from .rwops import OverlayOperations
    from .tree import ImageTree

__all__ = ["MountOptions", "check_mountpoint", "fuse_options", "run_daemon", "serve", "spawn_daemon", "unmount"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
# Always on, whatever -o says: a read-only view of someone else's image must
# not grant device access or setuid power through the mount.
_FORCED = ("ro", "nosuid", "nodev", "default_permissions")


@dataclass(frozen=True, slots=True)
class MountOptions:
    """``extra``: the user's ``-o`` options, already split; ``debug``: FUSE request logging."""

    extra: tuple[str, ...] = ()
    debug: bool = False
    allow_other: bool = False
    fsname: str = "imagefs"
    overlay: str | None = None

    @property
    def ro(self) -> bool:
        return self.overlay is None

    @property
    def max_read(self) -> int:
        """The ``-o max_read=N`` given (the last one, as mount(8) reads them), 0 if none."""
        n = 0
        for o in self.extra:
            if o.startswith("max_read="):
                value = o[len("max_read="):]
                if not (value.isascii() and value.isdigit()) or int(value) == 0:
                    raise MountError(f"-o {o}: max_read takes a number of bytes")
                n = int(value)
        return n


# Flags that undo each other, by the option they override: the last one given wins.
_OPPOSITES = {"noexec": "exec", "async": "sync", "noatime": "atime", "nodiratime": "diratime",
              "norelatime": "relatime", "nostrictatime": "strictatime", "nolazytime": "lazytime",
              "nosymfollow": "symfollow", "nosuid": "suid", "nodev": "dev", "ro": "rw"}


def fuse_options(opts: MountOptions) -> list[str]:
    """The libfuse mount options for ``opts``, in order: our defaults, then the
    user's, each option (``NAME=`` or a flag and its opposite) given once, the
    last value winning as with mount(8)."""
    chosen: dict[str, str] = {}

    def put(o: str) -> None:
        key = o.split("=", 1)[0] + "=" if "=" in o else _OPPOSITES.get(o, o)
        chosen.pop(key, None)  # re-inserted at the end: libfuse too takes the last one
        chosen[key] = o

    for o in (f"fsname={opts.fsname}", "subtype=imagefs", *(o for o in _FORCED if opts.ro or o != "ro")):
        put(o)
    for o in opts.extra:
        if o in ("suid", "dev") or (o == "rw" and opts.ro):
            raise MountError(f"-o {o} is not possible: an imagefs mount is nosuid and nodev, "
                             "and read-only unless --overlay is given")
        if o == "ro" and not opts.ro:
            raise MountError("-o ro contradicts --overlay")
        put(o)
    if opts.max_read:
        from .fuseops import PATCH_LEVEL

        if PATCH_LEVEL < 8:
            # Stock pyfuse3 cannot repeat max_read at INIT, and libfuse then refuses the mount.
            raise MountError("-o max_read needs the pyfuse3 that imagefs patches (ci/setup.sh installs it)")
    if opts.allow_other:
        put("allow_other")
    if opts.debug:
        put("debug")
    return list(chosen.values())


def split_o(values: tuple[str, ...]) -> tuple[str, ...]:
    """``-o a,b -o c`` -> ``("a", "b", "c")``, as mount(8) reads them."""
    return tuple(o.strip() for v in values for o in v.split(",") if o.strip())


def check_mountpoint(path: str) -> str:
    """The absolute mountpoint, or a MountError saying why it cannot be used."""
    # Resolved: the kernel mounts on the real directory, and that is the name
    # /proc/self/mountinfo, umount and the overlay checks see.
    mp = os.path.realpath(path)
    if is_stale(mp):
        raise MountError(f"{mp} is a stale mount (its daemon died); run: imagefs umount {mp}")
    try:
        st = os.stat(mp)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(f"{mp} is a stale mount (its daemon died); run: imagefs umount {mp}") from None
        if e.errno == errno.ENOENT:
            raise MountError(f"mountpoint {mp} does not exist") from None
        raise MountError(f"mountpoint {mp}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mp} is not a directory")
    if os.path.ismount(mp):
        raise MountError(f"{mp} is already a mount point")
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available: /dev/fuse is missing (install fuse3, load the fuse module)")
    return mp


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def usable_cpus() -> float:
    """How many CPUs this process can use at once: its affinity, capped by a
    cgroup v2 CPU quota (a container run with --cpus=1 on a big host)."""
    n = float(len(os.sched_getaffinity(0)))
    try:
        with open("/proc/self/cgroup") as f:
            rel = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
        with open(os.path.join("/sys/fs/cgroup", rel.lstrip("/"), "cpu.max")) as f:
            quota, period = f.read().split()
        if quota != "max":
            n = min(n, int(quota) / int(period))
    except (OSError, ValueError, StopIteration):
        pass
    return n


# How long the read-only loop keeps asking for the next request before it
# sleeps, within a burst of requests (pyfuse3 patch level 5+): `find` and
# `grep -r` send one a few dozen us after each reply, and waking a sleeping
# daemon on another CPU costs more than that (first `find` over 300k files:
# 12 s -> 9 s).  Spinning only pays where the requester runs on another CPU
# (`usable_cpus`, asked when a loop starts, not at every import of this module).
SPIN_US = 300


def serve(tree: "ImageTree", mountpoint: str, opts: MountOptions, on_ready: Callable[[], None] | None = None) -> None:
    """Mount ``tree`` at ``mountpoint`` and serve until unmounted or signalled.

    SIGINT, SIGTERM and SIGHUP unmount cleanly; the mount is always removed on
    the way out, even after an error.  ``on_ready`` is called once the mount
    answers requests.
    """
    import pyfuse3

    from .fuseops import ReadOnlyOperations

    ops: ReadOnlyOperations | OverlayOperations
    held = None
    if opts.overlay:
        from .overlay import Overlay, hold
        from .rwops import OverlayOperations

        held = hold(opts.overlay)  # DIR is this mount's until it ends
        ops = OverlayOperations(Overlay(tree, opts.overlay))
    else:
        ops = ReadOnlyOperations(tree)
    ops.imagefs_max_read = opts.max_read
    try:
        _serve(pyfuse3, ops, mountpoint, opts, on_ready)
    finally:
        if held is not None:
            os.close(held)


def _serve(pyfuse3: Any, ops: ReadOnlyOperations | OverlayOperations, mountpoint: str, opts: MountOptions,
           on_ready: Callable[[], None] | None) -> None:
    # From the moment the mount exists until the handlers are in place, a
    # signal would kill the daemon and leave the mount stale: hold them.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        # libfuse says why it fails on stderr (an unknown option, a refused
        # mount); pyfuse3 says only that it failed.
        with _stderr_captured() as said:
            try:
                pyfuse3.init(ops, mountpoint, fuse_options(opts))
                error = ""
            except RuntimeError as e:
                error = str(e)
        if error:
            raise MountError(f"cannot mount {mountpoint}: {said[-1] if said else error}")
        run = _Run(on_ready)
        try:
            # No handler suspends (the read-only ones answer from memory and the page
            # cache, the overlay's call the file system under DIR and wait for it),
            # so with the patched pyfuse3 they run without trio's event loop and its
            # ~100 us per request.
            if hasattr(pyfuse3, "imagefs_serve"):
                _serve_without_loop(pyfuse3, mountpoint, run, held, widen_readahead=not opts.overlay)
            else:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                _serve_with_trio(pyfuse3, mountpoint, not opts.overlay, run)
        finally:
            pyfuse3.close(unmount=True)
        if run.announcer is not None:
            run.announcer.join(READY_TIMEOUT)  # its statfs ends with the mount, at the latest
        if not run.ready and not run.signalled:
            # The loop ended by itself: libfuse gave up during the kernel's INIT
            # handshake (its reason is on stderr, the daemon's log).
            why = f" ({run.problem})" if run.problem else ""
            raise MountError(f"{mountpoint} was unmounted before it was ready{why}: the FUSE handshake "
                             "with the kernel failed (--foreground --debug shows libfuse's reason)")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class _Run:
    """How a serving loop went: whether the mount became ready (``on_ready`` is
    then called), a signal ended it, or the first request failed and why.

    The loop without trio announces readiness from a thread (``announcer``),
    which must neither report "ready" nor end the loop once it has ended
    (``ended``, under ``lock``), and is waited for before anyone asks."""

    def __init__(self, on_ready: Callable[[], None] | None) -> None:
        self.on_ready = on_ready
        self.ready = False
        self.signalled = False
        self.problem = ""
        self.ended = False
        self.lock = threading.Lock()
        self.announcer: threading.Thread | None = None

    def became_ready(self) -> None:
        self.ready = True
        if self.on_ready is not None:
            self.on_ready()


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Catch what is written to file descriptor 2 (C libraries included) while
    the block runs.  Yields a list that holds the lines written once the block
    has ended; they are also passed on to the real stderr (the daemon's log)."""
    said: list[str] = []
    try:
        tmp = os.memfd_create("imagefs-stderr", os.MFD_CLOEXEC)
    except OSError:  # no memfd (an old kernel, a seccomp filter): nothing caught, nothing lost
        yield said
        return
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(tmp, 2)
    try:
        yield said
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.lseek(tmp, 0, os.SEEK_SET)  # fd 2 was a duplicate: it moved the shared offset
        with os.fdopen(tmp, "rb") as f:
            data = f.read()
        said.extend(line for line in data.decode(errors="replace").splitlines() if line.strip())
        if data:
            os.write(2, data)


def _serve_without_loop(pyfuse3: Any, mountpoint: str, run: _Run, unblocked: set[signal.Signals],
                        widen_readahead: bool) -> None:
    # Signals reach the loop through the wakeup fd, which the C-level handler
    # writes whichever thread the signal lands on and whatever the loop is
    # doing; relying on EINTR alone loses a signal that arrives between two reads.
    from .fuseops import PATCH_LEVEL

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def announce() -> None:
        try:
            go_live(mountpoint, widen_readahead)
        except OSError as e:
            with run.lock:
                run.problem = e.strerror or str(e)
                if not run.ended:  # else the session and the pipe may be gone already
                    pyfuse3.imagefs_exit()
                    os.write(wake_w, b"!")
            return
        with run.lock:
            if not run.ended:
                run.became_ready()

    def on_signal(_sig: int, _frame: object) -> None:
        run.signalled = True
        pyfuse3.imagefs_exit()

    previous_wakeup = signal.set_wakeup_fd(wake_w)
    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        # From a thread, because the statfs waits for this thread to answer
        # the kernel's INIT; it keeps the signals blocked, so they interrupt
        # this one.  Handlers are in place before anyone hears "ready", and a
        # signal held since the mount was made is delivered now.
        run.announcer = threading.Thread(target=announce, name="imagefs-announce", daemon=True)
        run.announcer.start()
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        try:
            if PATCH_LEVEL >= 5:
                pyfuse3.imagefs_serve(wake_r, SPIN_US if usable_cpus() >= 2 else 0)
            else:
                pyfuse3.imagefs_serve(wake_r)
        finally:
            with run.lock:
                run.ended = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_r)
        os.close(wake_w)


def _serve_with_trio(pyfuse3: Any, mountpoint: str, widen_readahead: bool, run: _Run) -> None:
    import trio

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def on_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with trio.open_signal_receiver(*SIGNALS) as signals:
                    task_status.started()
                    async for _sig in signals:
                        run.signalled = True
                        pyfuse3.terminate()
                        return

            # Signals are handled before anyone is told the mount is ready, so a
            # SIGTERM right after `imagefs mount` returns still unmounts cleanly.
            await nursery.start(on_signals)

            async def announce() -> None:
                # From a thread, because the statfs waits for this loop to answer
                # the kernel's INIT: "ready" means the mount answers requests.
                try:
                    await trio.to_thread.run_sync(go_live, mountpoint, widen_readahead)
                except OSError as e:
                    run.problem = e.strerror or str(e)
                    pyfuse3.terminate()
                    return
                run.became_ready()

            nursery.start_soon(announce)
            # Handlers never await (reads are pread on the page cache), so extra
            # worker tasks would only add scheduling per request.
            await pyfuse3.main(min_tasks=1, max_tasks=1)
            nursery.cancel_scope.cancel()

    trio.run(main)


# Readahead of a read-only mount, in KiB: what one FUSE request can carry (256
# pages), so `cat` of a big file costs one request per MiB instead of 8.
READAHEAD_KIB = 1024


def go_live(mountpoint: str, widen_readahead: bool) -> None:
    """Wait until ``mountpoint`` answers a request, then widen its readahead.

    statfs, because the kernel caches no answer to it: a stat would leave the
    root's attributes cached for a day, and a mount whose daemon died would
    then not say ENOTCONN to the next stat.

    The kernel takes the readahead a FUSE mount gets at INIT as a ceiling
    (128 KiB), so it can only be raised afterwards, through the mount's own
    backing-device entry in sysfs.  That needs root; without it reads stay at
    128 KiB, which works, only slower.
    """
    os.statvfs(mountpoint)
    entry = _mountinfo_entry(mountpoint)
    if entry is None or not _is_fuse(entry[1]):
        # The statfs answered from the directory under a mount already gone.
        raise OSError(errno.ENOTCONN, "the FUSE mount is gone")
    if not widen_readahead:
        return
    knob = f"/sys/class/bdi/{entry[0]}/read_ahead_kb"
    try:
        with open(knob, "w") as f:
            f.write(str(READAHEAD_KIB))
    except OSError as e:
        log.debug("cannot widen readahead (%s): %s", knob, e.strerror)


def _is_fuse(fstype: str) -> bool:
    """Whether a mountinfo type is a FUSE mount's (``fuse``, ``fuse.SUBTYPE``)."""
    return fstype == "fuse" or fstype.startswith("fuse.")


def _mountinfo_entry(mountpoint: str) -> tuple[str, str] | None:
    # Compared as given: realpath would stat the mount root through FUSE and
    # leave its attributes cached (see is_stale); check_mountpoint resolved it.
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return _find_mount(f, os.fsencode(mountpoint))
    except OSError:
        return None


def _find_mount(lines: Iterable[bytes], mountpoint: bytes) -> tuple[str, str] | None:
    """``(major:minor, type)`` of the topmost (last) mount at ``mountpoint`` in
    /proc/self/mountinfo's ``lines``, or None."""
    found = None
    for line in lines:
        fields = line.rstrip(b"\n").split(b" ")
        if len(fields) > 4 and _unescape_mountinfo(fields[4]) == mountpoint and b"-" in fields[6:]:
            # the mount options, optional fields, then "-", the type and the source
            fstype = fields[fields.index(b"-", 6) + 1]
            found = (fields[2].decode(), _unescape_mountinfo(fstype).decode(errors="replace"))
    return found


def _unescape_mountinfo(field: bytes) -> bytes:
    # The kernel writes space, tab, newline and backslash as \ooo octal.
    if b"\\" not in field:
        return field
    out, i = bytearray(), 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def spawn_daemon(request: dict[str, object], mountpoint: str, log_file: str | None) -> None:
    """Start the daemon for ``request`` by forking this process, and return once
    the mount is usable.

    Forking saves starting Python and importing everything again (what makes
    a remount quick); the caller keeps this process lean (`imagefs mount`
    indexes in a child) so that the long-lived daemon starts small.

    Raises:
        MountError: the daemon failed (its message), died, or did not become ready in time.
    """
    # Imported while the parent is still alone, rather than in the child's
    # critical path.  Not trio: the read-only daemon never uses it.
    import pyfuse3  # noqa: F401

    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        raise MountError(f"cannot start the imagefs daemon: {e.strerror}") from None
    if pid == 0:
        os.close(rfd)
        code = 1
        try:  # whatever happens, the child never returns into the caller's code
            _daemonize(log_file)
            run_daemon(request, wfd)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:
            try:
                os.write(wfd, f"error: cannot start the imagefs daemon: {e}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(wfd)
    text = _wait_ready(rfd)
    if text == "ok":
        return
    # The pipe closed or timed out.  A daemon that died closes it a moment before its
    # exit status can be collected; one that said why it failed is on its way out.
    status = wait_exit(pid, 0 if text else 2)
    stopped = status is None
    if stopped:
        status = _stop(pid)
    _clear(mountpoint)
    if text.startswith("error: "):
        raise MountError(text[len("error: "):])
    if stopped and not text:
        raise MountError(f"the imagefs daemon did not become ready within {READY_TIMEOUT:.0f}s")
    how = (f"exited with status {os.waitstatus_to_exitcode(status)}" if status is not None
           else f"(pid {pid}) stopped answering")
    raise MountError(f"the imagefs daemon {how} before the mount was ready")


def _stop(pid: int) -> int | None:
    """End a daemon that failed to start: SIGTERM, then SIGKILL.  Its wait status, or
    None if it still has not exited (in uninterruptible sleep, SIGKILL takes effect only
    when that ends): the CLI must not hang on it."""
    os.kill(pid, signal.SIGTERM)
    status = wait_exit(pid, 5)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        status = wait_exit(pid, 5)
    return status


def _clear(mountpoint: str) -> None:
    """Leave nothing mounted after a failed start, whatever state the daemon left."""
    if _mountinfo_entry(mountpoint) is not None:  # also one whose daemon died, or another user's
        try:
            unmount(mountpoint)
        except MountError as e:
            log.warning("%s", e)


def _wait_ready(rfd: int) -> str:
    """The daemon's one line on the ready pipe ("" on timeout or a silent death)."""
    deadline = time.monotonic() + READY_TIMEOUT
    msg = b""
    with os.fdopen(rfd, "rb", buffering=0) as ready:
        while time.monotonic() < deadline and not msg.endswith(b"\n"):
            r, _, _ = select.select([ready], [], [], 0.2)
            if r:
                chunk = ready.read(4096)
                if not chunk:
                    break
                msg += chunk
    return msg.decode(errors="replace").strip()


def check_log_file(path: str) -> None:
    """Refuse a --log-file the daemon could not open (MountError), before anything starts."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    except OSError as e:
        raise MountError(f"cannot write the log file {path}: {e.strerror}") from None


def _daemonize(log_file: str | None) -> None:
    """Detach a forked child: own session, no terminal, stdio to /dev/null (or the log)."""
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    err = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_file else null
    for fd, target in ((0, null), (1, null), (2, err)):
        os.dup2(target, fd)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_daemon(request: dict[str, object], ready_fd: int) -> None:
    """Open the index, mount, report "ok" (or "error: ...") on ``ready_fd``, serve."""
    logging.basicConfig(level=logging.DEBUG if request.get("debug") else logging.WARNING,
                        format="imagefs[%(process)d] %(levelname)s %(name)s: %(message)s", force=True)
    reported = False

    def report(line: str) -> None:
        nonlocal reported
        if not reported:
            reported = True
            try:
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass

    try:
        from .index import Index
        from .tree import ImageTree

        tree = ImageTree(Index(str(request["index"])))
        opts = MountOptions(extra=tuple(request["options"]), debug=bool(request.get("debug")),  # type: ignore[arg-type]
                            allow_other=bool(request.get("allow_other")),
                            overlay=request.get("overlay"))  # type: ignore[arg-type]
        serve(tree, str(request["mountpoint"]), opts, on_ready=lambda: report("ok"))
    except ImageFSError as e:
        report(f"error: {e}")
        sys.exit(1)
    except BaseException as e:  # the parent must hear something, whatever happened
        log.exception("daemon failed")
        report(f"error: the daemon failed: {e!r}")
        sys.exit(1)


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def is_stale(mountpoint: str) -> bool:
    """Whether a FUSE mount at ``mountpoint`` lost its daemon ("not connected")."""
    # statfs, not stat: the kernel answers a stat from its attribute cache
    # (a day long for an image) even after the daemon died.
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def unmount(mountpoint: str, timeout: float = 10.0) -> None:
    """Unmount an imagefs mount, also one whose daemon died ("not connected").

    Raises:
        MountError: it is not mounted, or it is busy.
    """
    mp = os.path.realpath(mountpoint)
    stale = is_stale(mp)
    entry = _mountinfo_entry(mp)  # not os.path.ismount: another user's FUSE mount refuses its stat
    if not stale and entry is None:
        raise MountError(f"{mp} is not mounted")
    fstype = entry[1] if entry is not None else None
    if fstype is not None and not _is_fuse(fstype):
        # fusermount refuses these, but root's umount would not: a slip of the
        # keyboard must not take down a disk.
        raise MountError(f"{mp} is a {fstype} mount, not an imagefs one: use umount(8)")
    tool = _fusermount()
    cmds = []
    if tool:
        cmds.append([tool, "-u", mp])  # not -q: "busy" is in what it says
        if stale:
            cmds.append([tool, "-u", "-z", "-q", mp])
    if os.geteuid() == 0:
        cmds.append(["umount", mp])
        if stale:
            cmds.append(["umount", "-l", mp])
    last = ""
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            break
        lines = (r.stderr or r.stdout).strip().splitlines()
        last = lines[-1] if lines else f"{cmd[0]} exited with status {r.returncode}"
    else:
        if "busy" in last.lower():
            raise MountError(f"{mp} is busy (a process is using it); close it and retry")
        raise MountError(f"cannot unmount {mp}: {last or 'no fusermount3 or umount available'}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _mountinfo_entry(mp) is not None:
        time.sleep(0.05)
