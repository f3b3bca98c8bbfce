"""Faults under a live mount: the archive deleted, truncated or rewritten, the cache
directory read-only or full, the daemon killed, the disk under an overlay full.

The promise (issue 7, item 3): reads give the old bytes or EIO, never other bytes
and never a hang; a changed archive is detected; an unusable cache is a warning,
not a failure; `imagefs umount` clears what a killed daemon left; ENOSPC reaches
the writer and nothing already written is lost.

Every mount is made by `conftest.Mounter` (a subprocess) and torn down by its
finalizer; every tmpfs these tests mount is unmounted by the `tmpfs` fixture,
after the FUSE mounts whose daemons may hold files on it.  Every read through a
mount runs with a timeout (`_call`), so a hung daemon fails the test instead of
hanging the run.  Reads that must reach the daemon first drop the file's pages
(`POSIX_FADV_DONTNEED`): the kernel keeps read-only mounts' pages across opens.

Tests marked ``xfail(strict=True, reason="BUG: ...")`` show bugs found here (and
one found by ``bench/stress.py``); each reason says what goes wrong.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

import builder as b
from conftest import TIMEOUT, Mounter, assert_one_line_error, is_mounted, process_alive, run_cli, wait_until

pytestmark = pytest.mark.fuse

T = TypeVar("T")

READ_TIMEOUT = 20.0  # one read (or one short loop of reads) through a mount
KiB = 1024
MiB = 1024 * KiB


# -- helpers -------------------------------------------------------------------------


def _call(fn: Callable[[], T], timeout: float = READ_TIMEOUT, what: str = "a read through the mount") -> T:
    """``fn()`` in a daemon thread: its value or its exception; a test failure if it hangs.

    A thread left blocked in a FUSE read is freed when the finalizer ends the daemon.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{what} did not return within {timeout:.0f}s: the daemon hangs")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _pread_uncached(path: Path, size: int, offset: int = 0) -> bytes:
    """``size`` bytes from ``offset`` (fewer only at EOF), from the daemon, not the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(fd, size - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def _old_or_eio(path: Path, expected: bytes, offset: int = 0, size: int | None = None) -> str:
    """Read ``path`` (uncached, with a timeout): "old" if the bytes are ``expected``'s,
    "EIO" if the read failed with EIO; anything else fails the test."""
    size = len(expected) - offset if size is None else size
    want = expected[offset:offset + size]
    try:
        got = _call(lambda: _pread_uncached(path, size, offset), what=f"reading {path.name}")
    except OSError as e:
        assert e.errno == errno.EIO, f"{path.name}[{offset}:+{size}]: {e!r}; expected EIO or the old bytes"
        return "EIO"
    if got != want:
        diff = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
        pytest.fail(f"{path.name}[{offset}:+{size}]: {len(got)} bytes that are not the archive's "
                    f"(first difference at +{diff}; expected {len(want)} bytes): garbage, not EIO or old data")
    return "old"


def _alive(mp: Path, pid: int) -> None:
    """The daemon still runs and answers: a listing and a lookup no cache can answer."""
    assert process_alive(pid), "the daemon died"
    assert _call(lambda: sorted(os.listdir(mp)), what="listing the root") == ["d"]
    probe = mp / "d" / f"no-such-name-{time.monotonic_ns()}"
    with pytest.raises(FileNotFoundError):
        _call(lambda: os.stat(probe), what="a lookup")


def _write_through(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _indexes(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("*.idx")} if cache.is_dir() else set()


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# The archive of most tests: small files first, one big one last in the layer, so a
# cut of the archive can fall inside the last file's data.
FILES = {
    "d/small": b"small file\n",
    "d/first": _rand(1, 256 * KiB),
    "d/second": _rand(2, 256 * KiB),
    "d/last": _rand(3, 1 * MiB),
}


def _write(path: Path, files: dict[str, bytes], order: list[str] | None = None) -> None:
    names = order or list(files)
    b.write_docker_archive(str(path), [[b.dir("d")] + [b.file(n, files[n]) for n in names]], tags=["faults:1"])


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "faults.tar"
    _write(path, FILES)
    return path


@pytest.fixture
def tmpfs(mounted: Mounter, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(name, size)`` mounts a tmpfs at ``tmp_path/name``; all are unmounted at the end,
    after every FUSE mount of the test (whose daemons may hold files on them)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made: list[Path] = []

    def make(name: str, size: str = "2m") -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)],
                           capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        made.append(d)
        return d

    try:
        yield make
    finally:
        problems = mounted.cleanup()  # the FUSE mounts first; the `mounted` finalizer reports
        for d in reversed(made):
            for cmd in (["umount", str(d)], ["umount", "-l", str(d)]):
                if not is_mounted(d):
                    break
                subprocess.run(cmd, capture_output=True, timeout=TIMEOUT)
        left = [str(d) for d in made if is_mounted(d)]
        assert not left, f"tmpfs still mounted: {left} (FUSE cleanup said: {problems})"


def _fill(d: Path) -> int:
    """Fill the file system of ``d`` to the last byte; how many bytes that took."""
    n = 0
    with open(d / "filler", "wb", buffering=0) as f:
        chunk = b"\0" * (64 * KiB)
        while True:
            try:
                n += f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        for small in (4096, 512, 1):
            try:
                while True:
                    n += f.write(b"\0" * small)
            except OSError:
                pass
    return n


# -- the archive changes under the mount ---------------------------------------------------


@pytest.mark.parametrize("how", ["unlink", "replace"])
def test_archive_deleted_while_mounted(mounted: Mounter, archive: Path, tmp_path: Path, how: str) -> None:
    """Deleted (or replaced by another file through a rename, as `docker save -o` does):
    the daemon still holds the old inode, so reads give the old bytes or EIO."""
    m = mounted(archive)
    pid = m.daemon_pid()
    d = m.mountpoint / "d"
    assert _old_or_eio(d / "small", FILES["d/small"]) == "old"  # before: works
    new_files = {n: _rand(100 + i, len(v)) for i, (n, v) in enumerate(FILES.items())}
    if how == "unlink":
        archive.unlink()
    else:
        other = tmp_path / "other.tar"
        _write(other, new_files, order=list(reversed(new_files)))
        os.replace(other, archive)
    outcomes = {}
    for name, data in FILES.items():
        outcomes[name] = _old_or_eio(m.mountpoint / name, data)
        # and a read in the middle, which no read-ahead of the first one can have served
        _old_or_eio(m.mountpoint / name, data, offset=len(data) // 2, size=min(len(data) // 2, 4096))
    _alive(m.mountpoint, pid)
    if how == "unlink":
        # nothing else can be at that path: a new mount says so in one line
        mp2 = mounted.new_mountpoint()
        r = mounted.run("mount", "--cache-dir", m.cache_dir, archive, mp2, mountpoint=mp2)
        assert r.returncode == 1, r.stderr
        assert_one_line_error(r)
    else:
        # a fresh mount of the path sees the new archive
        m2 = mounted(archive)
        for name, data in new_files.items():
            assert _call(lambda: (m2.mountpoint / name).read_bytes()) == data
        assert len(_indexes(m.cache_dir)) == 2
    # the old mount still unmounts cleanly
    r = mounted.run("umount", m.mountpoint)
    assert (r.returncode, r.stderr) == (0, "")
    assert wait_until(lambda: not process_alive(pid), timeout=10)


def test_archive_truncated_while_mounted(mounted: Mounter, archive: Path, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    m = mounted(archive, "--log-file", str(log))
    pid = m.daemon_pid()
    d = m.mountpoint / "d"
    assert _old_or_eio(d / "small", FILES["d/small"]) == "old"  # in the page cache from now on
    raw = archive.read_bytes()
    start = raw.find(FILES["d/last"])
    assert start > 0 and raw.find(FILES["d/first"]) < start
    cut = start + 512 * KiB + 123
    os.truncate(archive, cut)
    del raw

    last = FILES["d/last"]
    # Past the cut: EIO, chunk by chunk (each uncached: straight to the daemon).
    for off in range(512 * KiB + 128 * KiB, len(last), 128 * KiB):
        assert _old_or_eio(d / "last", last, off, 64 * KiB) == "EIO", f"d/last at +{off}, past the cut"
    assert _old_or_eio(d / "last", last) == "EIO"  # the whole file
    # Before the cut: the right bytes or EIO, never others.
    for off in (0, 100 * KiB, 512 * KiB - 4096):
        _old_or_eio(d / "last", last, off, 4096)
    for name in ("d/first", "d/second"):
        _old_or_eio(m.mountpoint / name, FILES[name])
    # The daemon survived: it answers, and a file read before still reads.
    _alive(m.mountpoint, pid)
    assert _call(lambda: (d / "small").read_bytes()) == FILES["d/small"]
    assert _call(lambda: os.stat(d / "last")).st_size == len(last)
    # The change was noticed, not mistaken for a bug.
    text = log.read_text(errors="replace")
    assert "changed" in text or "truncated" in text, text
    assert "Traceback" not in text, text
    # and a fresh mount of the cut archive refuses it or reads EIO past the cut; never a hang
    mp2 = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", m.cache_dir, archive, mp2, mountpoint=mp2)
    if r.returncode == 0:
        assert _old_or_eio(mp2 / "d/last", last, len(last) - 4096, 4096) == "EIO"
    else:
        assert r.stderr.startswith("imagefs: ") and "Traceback" not in r.stderr, r.stderr


def test_archive_rewritten_in_place_while_mounted(mounted: Mounter, archive: Path, tmp_path: Path) -> None:
    """Same path, same inode, same size, other bytes in another layout: the old bytes or EIO,
    never the new ones; a fresh mount indexes the new archive."""
    log = tmp_path / "daemon.log"
    m = mounted(archive, "--log-file", str(log))
    pid = m.daemon_pid()
    before = _indexes(m.cache_dir)
    assert len(before) == 1
    new_files = {n: _rand(200 + i, len(v)) for i, (n, v) in enumerate(FILES.items())}
    v2 = tmp_path / "v2.tar"
    _write(v2, new_files, order=list(reversed(FILES)))  # the other way round: other offsets
    new_raw = v2.read_bytes()
    assert len(new_raw) == archive.stat().st_size, "the test needs an archive of the same size"
    st0 = archive.stat()

    assert _old_or_eio(m.mountpoint / "d/small", FILES["d/small"]) == "old"  # before: works
    # (reads racing the rewrite: test_reads_racing_an_in_place_rewrite_never_return_new_bytes)
    with open(archive, "r+b") as f:  # in place: same inode
        for off in range(0, len(new_raw), 64 * KiB):
            f.write(new_raw[off:off + 64 * KiB])
        f.flush()
        os.fsync(f.fileno())
    # The writes set the mtime; make sure it differs even on a coarse clock.
    os.utime(archive, ns=(st0.st_atime_ns, st0.st_mtime_ns + 2_000_000_000))
    st1 = archive.stat()
    assert (st1.st_ino, st1.st_size) == (st0.st_ino, st0.st_size) and st1.st_mtime_ns != st0.st_mtime_ns
    # The change is detected: a read the daemon must answer fails.
    assert _old_or_eio(m.mountpoint / "d/first", FILES["d/first"], 4096, 64 * KiB) == "EIO"

    # After the rewrite: every uncached read is EIO or old, never new bytes.
    for name, data in FILES.items():
        _old_or_eio(m.mountpoint / name, data)
        _old_or_eio(m.mountpoint / name, data, offset=len(data) // 2, size=min(len(data) // 2, 8192))
    _alive(m.mountpoint, pid)
    text = log.read_text(errors="replace")
    assert "changed" in text and "Traceback" not in text, text

    # A fresh mount (same cache) re-indexes and shows the new archive.
    r = mounted.run("umount", m.mountpoint)
    assert r.returncode == 0, r.stderr
    m2 = mounted(archive, mountpoint=m.mountpoint)
    after = _indexes(m.cache_dir)
    assert len(after - before) == 1, f"no new index for the rewritten archive: {before} -> {after}"
    for name, data in new_files.items():
        assert _call(lambda: (m2.mountpoint / name).read_bytes()) == data, name


_SAME_MTIME_BUG = (
    "BUG: an archive rewritten in place with its size and mtime kept (cp -p / rsync -t --inplace of a "
    "same-size archive with the same mtime, e.g. two reproducible builds) is not detected: the identity "
    "checked per read and used as the cache key is (dev, ino, size, mtime_ns) only, without st_ctime_ns"
)


def test_archive_rewritten_in_place_keeping_its_mtime(mounted: Mounter, archive: Path, tmp_path: Path) -> None:
    """`cp -p NEW ARCHIVE` writes into the existing inode and then sets NEW's mtime.  When NEW has
    the same size and mtime (reproducible builds pin mtimes; tar sizes are padded to 10 KiB records),
    only the ctime tells the archive changed: reads must still be the old bytes or EIO, and a fresh
    mount must index the new bytes rather than reuse the old index."""
    m = mounted(archive)
    new_files = {n: _rand(300 + i, len(v)) for i, (n, v) in enumerate(FILES.items())}
    v2 = tmp_path / "v2.tar"
    _write(v2, new_files, order=list(reversed(FILES)))
    st0 = archive.stat()
    assert v2.stat().st_size == st0.st_size
    os.utime(v2, ns=(st0.st_atime_ns, st0.st_mtime_ns))  # built with the same pinned mtime
    r = subprocess.run(["cp", "-p", str(v2), str(archive)], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    st1 = archive.stat()
    assert (st1.st_ino, st1.st_size, st1.st_mtime_ns) == (st0.st_ino, st0.st_size, st0.st_mtime_ns)
    assert st1.st_ctime_ns != st0.st_ctime_ns and archive.read_bytes() == v2.read_bytes()
    # the live mount: the old bytes or EIO
    for name, data in FILES.items():
        _old_or_eio(m.mountpoint / name, data)
    # a fresh mount: the new bytes
    r2 = mounted.run("umount", m.mountpoint)
    assert r2.returncode == 0, r2.stderr
    m2 = mounted(archive, mountpoint=m.mountpoint)
    for name, data in new_files.items():
        got = _call(lambda: _pread_uncached(m2.mountpoint / name, len(data)))
        assert got == data, f"a fresh mount shows other bytes than the archive's for {name} (stale index)"


_TOCTOU_BUG = (
    "BUG: ImageTree.read checks the archive's identity (fstat) before the pread, not after: a rewrite "
    "that lands between the two (its write changes the mtime first, then the bytes) is read as valid "
    "data, so a read racing an in-place rewrite returns the new archive's bytes at the old offsets"
)


def test_reads_racing_an_in_place_rewrite_never_return_new_bytes(mounted: Mounter, archive: Path,
                                                                 tmp_path: Path) -> None:
    """Many rewrites under one mount: each round puts the original bytes back with the original
    mtime (so that reads are valid again and the next round is a fresh trial), then writes the
    other archive over it.  A read that returns the other archive's bytes was checked before that
    write changed the mtime and read after its bytes landed: a check after the pread would have
    seen the new mtime and answered EIO."""
    m = mounted(archive)
    old_raw = archive.read_bytes()
    new_files = {n: _rand(400 + i, len(v)) for i, (n, v) in enumerate(FILES.items())}
    v2 = tmp_path / "v2.tar"
    _write(v2, new_files, order=list(reversed(FILES)))
    new_raw = v2.read_bytes()
    assert len(new_raw) == len(old_raw)
    st0 = archive.stat()
    want = FILES["d/first"][:64 * KiB]
    stop = threading.Event()
    counts = {"old": 0, "EIO": 0}
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                fd = os.open(m.mountpoint / "d/first", os.O_RDONLY | os.O_DIRECT)  # straight to the daemon
                try:
                    got = os.pread(fd, 64 * KiB, 0)
                finally:
                    os.close(fd)
            except OSError as e:
                if e.errno != errno.EIO:
                    bad.append(repr(e))
                counts["EIO"] += 1
                continue
            if got == want:
                counts["old"] += 1
            else:
                bad.append("the new archive's bytes" if got in new_raw else f"garbage ({len(got)} bytes)")
                stop.set()

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    fd = os.open(archive, os.O_RDWR)
    try:
        deadline = time.monotonic() + 8.0
        while not stop.is_set() and time.monotonic() < deadline:
            os.pwrite(fd, old_raw, 0)
            os.utime(archive, ns=(st0.st_atime_ns, st0.st_mtime_ns))
            time.sleep(0.005)
            os.pwrite(fd, new_raw, 0)  # changes the mtime, then the bytes
            time.sleep(0.005)
    finally:
        stop.set()
        os.close(fd)
    for t in threads:
        t.join(READ_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a reader hangs"
    # The ctime is part of the archive's identity and cannot be put back, so after the
    # first rewrite every read is EIO: what matters is that none returned new bytes.
    assert counts["EIO"], counts
    assert not bad, f"reads racing a rewrite gave {bad[:3]} ({counts})"


# -- the cache directory --------------------------------------------------------------------


@pytest.mark.parametrize("case", ["read-only", "read-only-missing-subdir", "full"])
def test_unusable_cache_dir_still_mounts_with_a_warning(mounted: Mounter, tmpfs: Callable[..., Path],
                                                        archive: Path, tmp_path: Path, case: str) -> None:
    if case == "full":
        fs = tmpfs("cachefs", size="256k")
        (fs / "cache").mkdir()
        cache = fs / "cache"
        assert _fill(fs) > 0
    else:
        fs = tmpfs("cachefs", size="1m")
        r = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        with pytest.raises(OSError) as e:
            (fs / "probe").write_bytes(b"x")
        assert e.value.errno == errno.EROFS  # read-only, even for root
        cache = fs if case == "read-only" else fs / "sub" / "cache"
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    mp = mounted.new_mountpoint()
    mounted.track(mp)
    env = dict(os.environ, TMPDIR=str(private_tmp))
    env.pop("IMAGEFS_DEBUG", None)
    r = run_cli(mounted.cli, "mount", "--cache-dir", cache, archive, mp, env=env)
    assert r.returncode == 0, f"mount failed with an unusable cache dir ({case}): {r.stderr}"
    assert is_mounted(mp)
    warnings = [line for line in r.stderr.splitlines() if "warning" in line and "cache" in line]
    assert warnings, f"no warning about the cache on stderr: {r.stderr!r}"
    assert "Traceback" not in r.stderr
    for name, data in FILES.items():
        assert _call(lambda: (mp / name).read_bytes()) == data, name
    # nothing was kept in the cache, and the private index went away once the daemon had it
    assert not _indexes(cache)
    if cache.is_dir():
        assert not list(cache.glob("*.tmp"))
    assert os.listdir(private_tmp) == []
    r = mounted.run("umount", mp)
    assert (r.returncode, r.stderr) == (0, "")


# A zstd layer written as one frame (as skopeo and podman write it), 12 MiB uncompressed: a read
# that goes back further than zstdblob.REWIND_LIMIT (8 MiB) has the daemon decompress the layer
# into the cache directory once (<state>.raw) and read from there.
# Incompressible, so that decompression advances in steps of about 1 MiB (one compressed chunk).
ZSTD_BIG = _rand(4, 12 * MiB)

_ZSTD_CACHE_BUG = (
    "BUG: when the cache dir fills up, turns read-only or is removed after the mount, a read of a "
    "single-frame zstd layer that goes back > REWIND_LIMIT tries to decompress the layer to "
    "<cache>/blobs/<key>.raw, fails, and answers EIO (full) or the raw errno of tempfile.mkstemp "
    "(ENOENT when removed, EROFS when read-only), again on every such read, each time re-decompressing "
    "up to the failure, instead of falling back to decompressing from the frame start"
)


@pytest.mark.parametrize("case", ["full", "removed"])
def test_cache_unusable_after_mount_zstd_reads_still_work(mounted: Mounter, tmpfs: Callable[..., Path],
                                                          tmp_path: Path, case: str) -> None:
    pytest.importorskip("zstandard")
    archive = tmp_path / "zstd.tar"
    b.write_oci_archive(str(archive), [[b.dir("d"), b.file("d/big", ZSTD_BIG)]], compression="zstd")
    fs = tmpfs("cachefs", size="4m")
    cache = fs / "cache"
    m = mounted(archive, cache_dir=cache)
    assert _indexes(cache), "the cache was usable at mount time"
    if case == "full":  # (a read-only cache fails the same way, with EROFS instead of EIO)
        _fill(fs)
    else:  # rm -rf ~/.cache/imagefs while mounted
        shutil.rmtree(cache)
    big = m.mountpoint / "d/big"
    for off in (11 * MiB, 9 * MiB + 4097, 10 * MiB, 100):
        got = _call(lambda: _pread_uncached(big, 64 * KiB, off), what=f"reading d/big at {off}")
        assert got == ZSTD_BIG[off:off + 64 * KiB], f"d/big at {off}"


# -- the daemon is killed ----------------------------------------------------------------------


def test_daemon_killed_during_reads(mounted: Mounter, archive: Path) -> None:
    m = mounted(archive)
    pid = m.daemon_pid()
    indexes = _indexes(m.cache_dir)
    errors: list[int | None] = []
    done = threading.Event()

    def reader() -> None:
        # Uncached reads in a loop until the mount goes away under it.
        try:
            while True:
                _pread_uncached(m.mountpoint / "d/last", 256 * KiB, 0)
        except OSError as e:
            errors.append(e.errno)
        finally:
            done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.3)
    assert not done.is_set(), f"reads failed before the kill: {errors}"
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not process_alive(pid), timeout=10)
    assert done.wait(READ_TIMEOUT), "a reader hangs on the killed mount"
    assert errors and errors[0] in (errno.ENOTCONN, errno.ECONNABORTED), errors
    assert is_mounted(m.mountpoint)  # stale: every request the kernel sends fails
    with pytest.raises(OSError) as e:
        _call(lambda: os.stat(m.mountpoint / f"fresh-name-{time.monotonic_ns()}"))
    assert e.value.errno == errno.ENOTCONN
    r = mounted.run("umount", m.mountpoint)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert not is_mounted(m.mountpoint)
    # the next mount works, at the same place, from the same index
    m2 = mounted(archive, mountpoint=m.mountpoint)
    assert _call(lambda: (m2.mountpoint / "d/last").read_bytes()) == FILES["d/last"]
    assert _indexes(m.cache_dir) == indexes


def test_daemon_killed_during_overlay_writes(mounted: Mounter, archive: Path, tmp_path: Path) -> None:
    """SIGKILL in the middle of writes and copy-ups: after `imagefs umount`, a remount with the
    same DIR works, shows what was written and synced before, and no half-made temporary."""
    ov = tmp_path / "overlay"
    m = mounted(archive, "--overlay", str(ov))
    pid = m.daemon_pid()
    mp = m.mountpoint
    kept = _rand(21, 200 * KiB)
    _call(lambda: _write_through(mp / "kept", kept), what="writing kept")
    stop = threading.Event()
    failures: list[int | None] = []

    def writer() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                with open(mp / f"w{n}", "wb") as f:
                    f.write(_rand(n, 256 * KiB))
                os.rename(mp / f"w{n}", mp / f"r{n}")
                os.chmod(mp / "d/last", 0o600 if n % 2 else 0o644)  # copy-up, then attribute changes
                os.truncate(mp / "d/second", 128 * KiB - n)  # shorter each time
        except OSError as e:
            failures.append(e.errno)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), f"the writes failed before the kill: {failures}"
    os.kill(pid, signal.SIGKILL)
    t.join(READ_TIMEOUT)
    stop.set()
    assert not t.is_alive(), "a writer hangs on the killed mount"
    assert failures and failures[0] in (errno.ENOTCONN, errno.ECONNABORTED), failures
    r = mounted.run("umount", mp)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    m2 = mounted(archive, "--overlay", str(ov), mountpoint=mp)
    names = _call(lambda: sorted(os.listdir(m2.mountpoint)))
    assert "kept" in names and "d" in names
    assert not [n for n in names if n.startswith(".wh.")], names
    assert _call(lambda: (m2.mountpoint / "kept").read_bytes()) == kept
    assert _call(lambda: (m2.mountpoint / "d/first").read_bytes()) == FILES["d/first"]
    assert _call(lambda: (m2.mountpoint / "d/last").read_bytes()) == FILES["d/last"]
    second = _call(lambda: (m2.mountpoint / "d/second").read_bytes())
    assert second == FILES["d/second"][:len(second)]  # the original, or a truncation of it
    for n in names:
        if n[0] in "rw" and n[1:].isdigit():  # renamed or being written: a prefix of what was written
            data = _call(lambda: (m2.mountpoint / n).read_bytes())
            assert data == _rand(int(n[1:]), 256 * KiB)[:len(data)], n
    # no temporary survived in DIR either
    left = [os.path.join(dp, x) for dp, dns, fns in os.walk(ov) for x in dns + fns
            if x.startswith(".wh..wh..imagefs-tmp")]
    assert not left, left


# -- the disk under an overlay fills up ---------------------------------------------------------


def test_overlay_on_a_full_disk(mounted: Mounter, tmpfs: Callable[..., Path], archive: Path) -> None:
    fs = tmpfs("ovfs", size="2m")
    ov = fs / "overlay"  # DIR must not be a mount point of its own
    m = mounted(archive, "--overlay", str(ov))
    pid = m.daemon_pid()
    mp = m.mountpoint
    keep = {"keep1": _rand(11, 100 * KiB), "d/keep2": _rand(12, 300 * KiB)}
    for name, data in keep.items():
        _call(lambda: _write_through(mp / name, data), what=f"writing {name}")

    # Write far more than fits: ENOSPC reaches the writer (from write, fsync or close).
    written = 0
    failure: OSError | None = None

    def fill() -> None:
        nonlocal written, failure
        fd = os.open(mp / "fill", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            chunk = _rand(13, 64 * KiB)
            while written < 8 * MiB:
                written += os.write(fd, chunk)
            os.fsync(fd)
        except OSError as e:
            failure = e
        finally:
            try:
                os.close(fd)
            except OSError as e:
                failure = failure or e

    _call(fill, what="filling the overlay")
    assert failure is not None, f"wrote {written} bytes into a 2 MB overlay without an error"
    assert failure.errno == errno.ENOSPC, f"the writer got {failure!r}, not ENOSPC"
    assert written < 2 * MiB

    # Copying up an image file cannot fit either: ENOSPC, and the image file is untouched.
    with pytest.raises(OSError) as e:
        _call(lambda: open(mp / "d/last", "r+b").close(), what="opening d/last for writing")
    assert e.value.errno == errno.ENOSPC, e.value
    assert _call(lambda: (mp / "d/last").read_bytes()) == FILES["d/last"]
    assert not [n for n in os.listdir(ov / "d") if n.startswith(".wh..wh..imagefs-tmp")], os.listdir(ov / "d")

    # The daemon survived, and what was written before is intact.
    assert process_alive(pid)
    assert sorted(_call(lambda: os.listdir(mp))) == ["d", "fill", "keep1"]
    for name, data in keep.items():
        assert _call(lambda: (mp / name).read_bytes()) == data, name

    # Space freed: writes work again.
    _call(lambda: os.unlink(mp / "fill"))
    _call(lambda: _write_through(mp / "after", b"written after ENOSPC\n"))

    # Unmount, remount with the same DIR: everything is still there.
    r = mounted.run("umount", mp)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    m2 = mounted(archive, "--overlay", str(ov), mountpoint=mp)
    for name, data in keep.items():
        assert _call(lambda: (m2.mountpoint / name).read_bytes()) == data, name
    assert _call(lambda: (m2.mountpoint / "after").read_bytes()) == b"written after ENOSPC\n"
    assert _call(lambda: (m2.mountpoint / "d/last").read_bytes()) == FILES["d/last"]
    assert sorted(os.listdir(m2.mountpoint)) == ["after", "d", "keep1"]


# -- found under load (bench/stress.py) -----------------------------------------------------------

_ODIRECT_BUG = (
    "BUG: in an --overlay mount a file that lives in DIR (created, or copied up) cannot be read or "
    "written with O_DIRECT: OverlayOperations.open/create hand the caller's flags, O_DIRECT included, "
    "to os.open of the file in DIR, and the daemon's unaligned buffers then make every pread/pwrite "
    "fail with EINVAL (image files, and the read-only mount, serve O_DIRECT fine)"
)


def test_overlay_files_read_and_write_with_o_direct(mounted: Mounter, archive: Path, tmp_path: Path) -> None:
    m = mounted(archive, "--overlay", str(tmp_path / "overlay"))
    mp = m.mountpoint
    new = b"hello world\n" * 1000
    _call(lambda: _write_through(mp / "new", new))
    _call(lambda: os.chmod(mp / "d/first", 0o600))  # a copy-up
    got = {}
    for name, want in (("d/second", FILES["d/second"]), ("new", new), ("d/first", FILES["d/first"])):
        fd = os.open(mp / name, os.O_RDONLY | os.O_DIRECT)
        try:
            got[name] = _call(lambda: os.pread(fd, 100, 3)) == want[3:103]
        except OSError as e:
            got[name] = errno.errorcode.get(e.errno or 0, str(e.errno))
        finally:
            os.close(fd)
    assert got == {"d/second": True, "new": True, "d/first": True}, got
    fd = os.open(mp / "direct-write", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert _call(lambda: os.write(fd, b"12345")) == 5
    finally:
        os.close(fd)
    assert (mp / "direct-write").read_bytes() == b"12345"
