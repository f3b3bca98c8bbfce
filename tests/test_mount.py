"""Real FUSE mounts of archives built by `builder`: what the kernel shows through imagefs.

Each test mounts in a subprocess (`conftest.Mounter`) and the fixture's
finalizer unmounts whatever happened.  No test asserts on time.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

import builder as b
from conftest import (TIMEOUT, Mounter, assert_one_line_error, cli_after, is_mounted, mount_entry, process_alive,
                      processes_for, run_cli, wait_until)

pytestmark = pytest.mark.fuse

MTIME = b.MTIME
NS_MTIME = "1700000000.123456789"
NS_MTIME_NS = 1_700_000_000_123_456_789
# A version-2 file capability as `setcap cap_net_bind_service+ep` writes it:
# magic 0x02000000 | effective, then permitted/inheritable for both halves.
CAPABILITY = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)
BINARY_XATTR = bytes(range(256))
BIG = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)


def _pax_layer(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _ns_layer() -> bytes:
    """A layer whose file's mtime has nanoseconds, in a PAX ``mtime`` record."""
    ti = tarfile.TarInfo("etc/ns")
    ti.size = 3
    ti.mtime = MTIME  # the ustar field: whole seconds; the PAX record is more precise
    ti.pax_headers = {"mtime": NS_MTIME}
    return _pax_layer([(ti, b"ns\n")])


LAYER1 = [
    b.dir("etc", mode=0o755),
    b.file("etc/hello", b"hello world\n", mode=0o644, uid=1000, gid=1001),
    b.file("etc/empty", b""),
    b.file("etc/gone", b"deleted in layer 2\n"),
    b.file("etc/version", b"1\n"),
    b.file("etc/owned", b"x", mode=0o600, uid=200000, gid=200001),
    b.symlink("etc/rel", "hello"),
    b.symlink("etc/abs", "/etc/hello"),
    b.symlink("etc/dangling", "nowhere/at/all"),
    b.symlink("etc/dirlink", "../data"),
    b.dir("usr", mode=0o755),
    b.dir("usr/bin", mode=0o755),
    b.file("usr/bin/su", b"#!setuid\n", mode=0o4755, xattrs={"security.capability": CAPABILITY}),
    b.file("usr/bin/wall", b"#!setgid\n", mode=0o2755, gid=5),
    b.file("usr/bin/all", b"#!all\n", mode=0o7777),
    b.file("usr/bin/none", b"", mode=0o000),
    b.dir("tmp", mode=0o1777),
    b.dir("data", mode=0o750, xattrs={"user.dirattr": b"on a directory"}),
    b.file("data/big", BIG),
    b.file("data/x", b"xattrs here\n", xattrs={"user.comment": b"text value", "user.binary": BINARY_XATTR}),
    b.file("data/hl-a", b"linked\n", mode=0o640, uid=7, gid=8),
    b.hardlink("data/hl-b", "data/hl-a"),
    b.hardlink("etc/hl-c", "data/hl-a"),
    b.dir("dev", mode=0o755),
    b.device("dev/null", "c", 1, 3, mode=0o666),
    b.device("dev/loop0", "b", 7, 0, mode=0o660, gid=6),
    b.fifo("dev/fifo", mode=0o640),
]
LAYER2 = [
    b.whiteout("etc/gone"),
    b.file("etc/version", b"2\n"),
    b.file("etc/added", b"layer 2\n"),
]


@pytest.fixture(scope="session")
def rich_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archives") / "rich.tar"
    b.write_docker_archive(str(path), [LAYER1, LAYER2, _ns_layer()], tags=["rich:latest"])
    return path


@pytest.fixture
def rich(mounted: Mounter, rich_archive: Path) -> Path:
    """The mountpoint of the rich archive."""
    return mounted(rich_archive).mountpoint


# -- listing and bytes ---------------------------------------------------------


def test_listing_and_bytes(rich: Path) -> None:
    assert sorted(os.listdir(rich)) == ["data", "dev", "etc", "tmp", "usr"]
    assert sorted(os.listdir(rich / "etc")) == sorted([
        "abs", "added", "dangling", "dirlink", "empty", "hello", "hl-c", "ns", "owned", "rel", "version",
    ])  # etc/gone is whited out by layer 2
    assert sorted(os.listdir(rich / "dev")) == ["fifo", "loop0", "null"]
    assert os.listdir(rich / "tmp") == []
    assert (rich / "etc/hello").read_bytes() == b"hello world\n"
    assert (rich / "etc/version").read_bytes() == b"2\n"  # the upper layer wins
    assert (rich / "etc/added").read_bytes() == b"layer 2\n"
    assert (rich / "etc/ns").read_bytes() == b"ns\n"
    assert (rich / "etc/empty").read_bytes() == b""
    assert hashlib.sha256((rich / "data/big").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    # positional reads anywhere, past the end too
    fd = os.open(rich / "data/big", os.O_RDONLY)
    try:
        rng = random.Random(1)
        for _ in range(200):
            off = rng.randrange(len(BIG) + 100)
            n = rng.choice([1, 511, 4096, 65536, 200_000])
            assert os.pread(fd, n, off) == BIG[off:off + n], (off, n)
        assert os.pread(fd, 10, len(BIG)) == b""
        assert os.pread(fd, 10, len(BIG) + 10**9) == b""
    finally:
        os.close(fd)
    # what is not there
    for path, exc in (("etc/nope", FileNotFoundError), ("etc/gone", FileNotFoundError),
                      ("etc/hello/x", NotADirectoryError)):
        with pytest.raises(exc):
            os.stat(rich / path)
    with pytest.raises(NotADirectoryError):
        os.listdir(rich / "etc/hello")
    with pytest.raises(IsADirectoryError):
        (rich / "etc").read_bytes()


# -- stat fields ---------------------------------------------------------------

MODES = {
    "etc": (stat.S_IFDIR, 0o755),
    "etc/hello": (stat.S_IFREG, 0o644),
    "etc/owned": (stat.S_IFREG, 0o600),
    "usr/bin/su": (stat.S_IFREG, 0o4755),
    "usr/bin/wall": (stat.S_IFREG, 0o2755),
    "usr/bin/all": (stat.S_IFREG, 0o7777),
    "usr/bin/none": (stat.S_IFREG, 0o000),
    "tmp": (stat.S_IFDIR, 0o1777),
    "data": (stat.S_IFDIR, 0o750),
    "data/hl-b": (stat.S_IFREG, 0o640),
    "etc/rel": (stat.S_IFLNK, 0o777),
    "dev/null": (stat.S_IFCHR, 0o666),
    "dev/loop0": (stat.S_IFBLK, 0o660),
    "dev/fifo": (stat.S_IFIFO, 0o640),
}
OWNERS_AND_SIZES = {
    "etc/hello": (1000, 1001, 12),
    "etc/owned": (200000, 200001, 1),
    "etc/empty": (0, 0, 0),
    "usr/bin/wall": (0, 5, 9),
    "data/big": (0, 0, len(BIG)),
    "data/hl-a": (7, 8, 7),
    "etc/hl-c": (7, 8, 7),
    "dev/loop0": (0, 6, 0),
}


def test_modes_incl_setuid_setgid_sticky(rich: Path) -> None:
    got = {}
    for path in MODES:
        st = os.lstat(rich / path)
        got[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    wrong = {p: (oct(got[p][0]), oct(got[p][1])) for p in MODES if got[p] != MODES[p]}
    assert not wrong, f"wrong (type, mode): {wrong}"


def test_owner_size_and_mtime(rich: Path) -> None:
    got = {p: (os.lstat(rich / p).st_uid, os.lstat(rich / p).st_gid, os.lstat(rich / p).st_size)
           for p in OWNERS_AND_SIZES}
    assert got == OWNERS_AND_SIZES
    for path in ("etc", "etc/hello", "data/big", "etc/rel", "dev/null", "tmp"):
        assert os.lstat(rich / path).st_mtime_ns == MTIME * 10**9, path
    # PAX mtime records carry nanoseconds
    assert os.stat(rich / "etc/ns").st_mtime_ns == NS_MTIME_NS


def test_hardlinks_share_inode_and_count(rich: Path) -> None:
    names = ["data/hl-a", "data/hl-b", "etc/hl-c"]
    stats = [os.lstat(rich / n) for n in names]
    assert len({s.st_ino for s in stats}) == 1
    assert [s.st_nlink for s in stats] == [3, 3, 3]
    assert {(rich / n).read_bytes() for n in names} == {b"linked\n"}
    # readdir (READDIRPLUS) reports the same inode number as lookup does
    by_name = {e.name: e.inode() for e in os.scandir(rich / "data")}
    assert by_name["hl-a"] == by_name["hl-b"] == stats[0].st_ino
    # ordinary files are single inodes with one link
    hello, version = os.lstat(rich / "etc/hello"), os.lstat(rich / "etc/version")
    assert hello.st_nlink == 1 and hello.st_ino != version.st_ino != stats[0].st_ino


def test_devices_and_blocks(rich: Path) -> None:
    null = os.lstat(rich / "dev/null")
    loop = os.lstat(rich / "dev/loop0")
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    assert os.lstat(rich / "dev/fifo").st_rdev == 0
    for path in ("etc/hello", "data/big", "data/hl-a", "usr/bin/su", "etc/ns"):
        st = os.lstat(rich / path)
        assert st.st_blocks > 0, path
        assert st.st_blocks * 512 >= st.st_size, path
    assert os.lstat(rich / "etc/empty").st_blocks == 0


def test_symlinks(rich: Path) -> None:
    targets = {"rel": "hello", "abs": "/etc/hello", "dangling": "nowhere/at/all", "dirlink": "../data"}
    for name, target in targets.items():
        st = os.lstat(rich / "etc" / name)
        assert stat.S_ISLNK(st.st_mode)
        assert os.readlink(rich / "etc" / name) == target
        assert st.st_size == len(target)  # POSIX: a symlink's size is its target's length
    assert (rich / "etc/rel").read_bytes() == b"hello world\n"
    assert sorted(os.listdir(rich / "etc/dirlink")) == sorted(os.listdir(rich / "data"))
    with pytest.raises(FileNotFoundError):
        os.stat(rich / "etc/dangling")
    with pytest.raises(OSError) as e:
        os.readlink(rich / "etc/hello")
    assert e.value.errno == errno.EINVAL


# -- xattrs --------------------------------------------------------------------


def test_xattrs(rich: Path) -> None:
    assert os.getxattr(rich / "usr/bin/su", "security.capability") == CAPABILITY
    assert "security.capability" in os.listxattr(rich / "usr/bin/su")
    assert os.getxattr(rich / "data/x", "user.comment") == b"text value"
    assert os.getxattr(rich / "data/x", "user.binary") == BINARY_XATTR
    assert sorted(os.listxattr(rich / "data/x")) == ["user.binary", "user.comment"]
    assert os.getxattr(rich / "data", "user.dirattr") == b"on a directory"
    assert os.listxattr(rich / "data") == ["user.dirattr"]
    assert os.listxattr(rich / "etc/hello") == []
    for path, name in (("etc/hello", "user.comment"), ("data/x", "user.nope"), ("data/x", "security.capability")):
        with pytest.raises(OSError) as e:
            os.getxattr(rich / path, name)
        assert e.value.errno == errno.ENODATA, (path, name)


# -- a huge directory ----------------------------------------------------------

N_BIG_DIR = 100_000


def _names(n: int) -> list[bytes]:
    # lengths vary (7..43 bytes) so that entries straddle the kernel's readdir buffers differently
    return [b"e%06d-%s" % (i, b"x" * (i % 37)) for i in range(n)]


def _huge_dir_layer(names: list[bytes]) -> bytes:
    """``big/`` with ``names`` as empty files, as ustar bytes.

    tarfile makes one template header; the others differ only in the name
    and checksum, so they are patched in: 100,000 headers in well under a
    second instead of several with ``TarFile.addfile``.
    """
    def info(name: str, kind: bytes, mode: int) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, MTIME
        return ti.tobuf(tarfile.USTAR_FORMAT)

    template = bytearray(info("x", tarfile.REGTYPE, 0o644))
    template[0:100] = bytes(100)
    template[148:156] = b" " * 8
    base = sum(template)
    tail, head_rest = bytes(template[156:]), bytes(template[:148])
    parts = [info("big", tarfile.DIRTYPE, 0o755)]
    for name in names:
        path = b"big/" + name
        parts.append(path + head_rest[len(path):] + b"%06o\0 " % (base + sum(path)) + tail)
    parts.append(bytes(1024))
    data = b"".join(parts)
    # the patched headers are what tarfile itself would read back
    with tarfile.open(fileobj=io.BytesIO(data[:512 * 3] + bytes(1024))) as tf:
        assert [m.name for m in tf.getmembers()] == ["big"] + ["big/" + n.decode() for n in names[:2]]
    return data


def test_directory_with_100k_entries(mounted: Mounter, tmp_path: Path) -> None:
    names = _names(N_BIG_DIR)
    archive = tmp_path / "huge.tar"
    b.write_docker_archive(str(archive), [_huge_dir_layer(names)])
    mp = mounted(archive).mountpoint
    listed = os.listdir(os.fsencode(mp / "big"))
    assert len(listed) == N_BIG_DIR, f"listed {len(listed)} entries, {len(set(listed))} distinct"
    assert len(set(listed)) == N_BIG_DIR, "some entries were listed twice"
    assert set(listed) == set(names)
    # a second listing (now from the kernel's caches) agrees, and so does scandir
    assert sorted(e.name for e in os.scandir(os.fsencode(mp / "big"))) == sorted(names)
    assert os.lstat(mp / "big" / names[-1].decode()).st_size == 0


# -- read-only -----------------------------------------------------------------

WRITES = {
    "create": lambda m: os.close(os.open(m / "etc/new", os.O_CREAT | os.O_WRONLY, 0o644)),
    "create_excl": lambda m: os.close(os.open(m / "new", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)),
    "open_wronly": lambda m: os.close(os.open(m / "etc/hello", os.O_WRONLY)),
    "open_rdwr": lambda m: os.close(os.open(m / "etc/hello", os.O_RDWR)),
    "open_append": lambda m: os.close(os.open(m / "etc/hello", os.O_WRONLY | os.O_APPEND)),
    "open_trunc": lambda m: os.close(os.open(m / "etc/hello", os.O_WRONLY | os.O_TRUNC)),
    "mkdir": lambda m: os.mkdir(m / "etc/newdir"),
    "rmdir": lambda m: os.rmdir(m / "tmp"),
    "unlink": lambda m: os.unlink(m / "etc/hello"),
    "unlink_symlink": lambda m: os.unlink(m / "etc/rel"),
    "rename": lambda m: os.rename(m / "etc/hello", m / "etc/hello2"),
    "rename_over": lambda m: os.rename(m / "etc/hello", m / "etc/version"),
    "chmod": lambda m: os.chmod(m / "etc/hello", 0o600),
    "chown": lambda m: os.chown(m / "etc/hello", 1, 1),
    "utime": lambda m: os.utime(m / "etc/hello", (0, 0)),
    "truncate": lambda m: os.truncate(m / "etc/hello", 0),
    "symlink": lambda m: os.symlink("hello", m / "etc/newlink"),
    "link": lambda m: os.link(m / "etc/hello", m / "etc/newhard"),
    "mkfifo": lambda m: os.mkfifo(m / "etc/newfifo"),
    "setxattr": lambda m: os.setxattr(m / "etc/hello", "user.new", b"v"),
    "setxattr_replace": lambda m: os.setxattr(m / "data/x", "user.comment", b"v"),
    "removexattr": lambda m: os.removexattr(m / "data/x", "user.comment"),
}


def test_every_write_fails_with_erofs(rich: Path) -> None:
    wrong = {}
    for op, write in WRITES.items():
        try:
            write(rich)
        except OSError as e:
            if e.errno != errno.EROFS:
                wrong[op] = repr(e)
        else:
            wrong[op] = "succeeded"
    assert not wrong, f"writes that did not fail with EROFS: {wrong}"
    # and nothing changed
    assert (rich / "etc/hello").read_bytes() == b"hello world\n"
    assert sorted(os.listdir(rich / "etc")) == sorted([
        "abs", "added", "dangling", "dirlink", "empty", "hello", "hl-c", "ns", "owned", "rel", "version",
    ])
    assert os.listxattr(rich / "etc/hello") == []


def test_mount_table_shows_imagefs_read_only(rich: Path) -> None:
    entry = mount_entry(rich)
    assert entry is not None
    assert entry.source == "imagefs"
    assert entry.fstype == "fuse.imagefs"
    assert {"ro", "nosuid", "nodev"} <= entry.options
    # /proc/mounts says the same
    with open("/proc/mounts") as f:
        rows = [line.split() for line in f if line.split()[1:2] == [str(rich)]]
    assert len(rows) == 1
    source, _mp, fstype, options = rows[0][:4]
    assert (source, fstype) == ("imagefs", "fuse.imagefs")
    assert {"ro", "nosuid", "nodev"} <= set(options.split(","))
    # and findmnt, where installed
    r = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--mountpoint", str(rich)],
                       capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode == 0:
        src, fst, opts = r.stdout.split()
        assert (src, fst) == ("imagefs", "fuse.imagefs")
        assert {"ro", "nosuid", "nodev"} <= set(opts.split(","))
    st = os.statvfs(rich)
    assert st.f_flag & os.ST_RDONLY and st.f_flag & os.ST_NOSUID and st.f_flag & os.ST_NODEV


# -- the daemon's life -----------------------------------------------------------


def _mapped_indexes(pid: int) -> set[str]:
    """The index files the daemon ``pid`` has mapped (it serves from an mmap of the index)."""
    with open(f"/proc/{pid}/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f
                if len(line.split(None, 5)) == 6 and line.rstrip().endswith(".idx")}


@pytest.mark.parametrize("overlay", [False, True], ids=["read-only", "overlay"])
def test_max_read_option(mounted: Mounter, rich_archive: Path, tmp_path: Path, overlay: bool) -> None:
    """-o max_read=N reaches the kernel (libfuse refuses the INIT unless pyfuse3
    repeats it: patch level 8) and a file bigger than many requests reads whole."""
    from imagefs.fuseops import PATCH_LEVEL

    if PATCH_LEVEL < 8:
        pytest.skip(f"-o max_read needs pyfuse3 patch level 8 (installed: {PATCH_LEVEL})")
    extra = ["--overlay", str(tmp_path / "scratch")] if overlay else []
    m = mounted(rich_archive, "-o", "max_read=16384", *extra)
    entry = mount_entry(m.mountpoint)
    assert entry is not None and "max_read=16384" in entry.options
    assert (m.mountpoint / "data/big").read_bytes() == BIG


def test_read_only_mount_served_by_trio(mounted: Mounter, rich_archive: Path) -> None:
    """The trio loop serves read-only mounts where pyfuse3 lacks imagefs_serve
    (stock pyfuse3); CI has the patched one, so take it away here."""
    mounted.cli = cli_after("import pyfuse3; del pyfuse3.imagefs_serve")
    m = mounted(rich_archive)
    assert (m.mountpoint / "data/big").read_bytes() == BIG
    assert sorted(os.listdir(m.mountpoint / "usr/bin")) == ["all", "none", "su", "wall"]
    assert os.readlink(m.mountpoint / "etc/rel") == "hello"
    pids = m.daemon_pids()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGTERM)  # the trio loop's signal handling unmounts
    assert wait_until(lambda: not is_mounted(m.mountpoint) and not process_alive(pids[0]))


def test_mount_returns_only_when_ready_and_umount(mounted: Mounter, rich_archive: Path) -> None:
    m = mounted(rich_archive)
    # exit status 0 means usable now: no waiting needed
    assert (m.mountpoint / "etc/hello").read_bytes() == b"hello world\n"
    assert m.result.stdout == "" and m.result.stderr == ""
    pid = m.daemon_pid()
    r = mounted.run("umount", m.mountpoint)
    assert (r.returncode, r.stderr) == (0, "")
    assert not is_mounted(m.mountpoint)
    assert wait_until(lambda: not process_alive(pid)), "the daemon kept running after umount"
    assert os.listdir(m.mountpoint) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_to_daemon_unmounts_cleanly(mounted: Mounter, rich_archive: Path, sig: signal.Signals) -> None:
    m = mounted(rich_archive)
    # Used first: see test_signal_right_after_mount_returns for a signal that comes sooner.
    assert (m.mountpoint / "etc/hello").read_bytes() == b"hello world\n"
    pid = m.daemon_pid()
    os.kill(pid, sig)
    assert wait_until(lambda: not is_mounted(m.mountpoint)), f"still mounted after {sig.name}"
    assert wait_until(lambda: not process_alive(pid)), f"daemon still running after {sig.name}"
    assert os.listdir(m.mountpoint) == []


def test_signal_right_after_mount_returns(mounted: Mounter, rich_archive: Path) -> None:
    for attempt in range(5):
        mp = mounted.new_mountpoint()
        mounted.track(mp)
        proc = subprocess.Popen([*mounted.cli, "mount", "--cache-dir", str(mounted.cache_dir), str(rich_archive),
                                 str(mp)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            # as soon as the mount exists, as `imagefs mount A M && kill $daemon` would
            assert wait_until(lambda: is_mounted(mp) or proc.poll() is not None, interval=0.001)
            daemons = [pid for pid in processes_for(mp) if pid != proc.pid]
            assert daemons, f"attempt {attempt + 1}: no daemon for {mp} (the mount failed?)"
            for pid in daemons:
                os.kill(pid, signal.SIGTERM)
        finally:
            proc.wait(timeout=TIMEOUT)
        assert wait_until(lambda: not any(process_alive(pid) for pid in daemons))
        assert not is_mounted(mp), f"attempt {attempt + 1}: SIGTERM at startup left {mp} mounted (stale)"


@pytest.mark.parametrize("stat_first", [False, True], ids=["cold", "root-attrs-cached"])
def test_sigkill_leaves_stale_mount_that_umount_clears(mounted: Mounter, rich_archive: Path, stat_first: bool) -> None:
    m = mounted(rich_archive)
    if stat_first:
        # The kernel keeps the root's attributes for a day: a stat of a dead
        # mount then still succeeds, and imagefs must not rely on it failing.
        os.stat(m.mountpoint)
    pid = m.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not process_alive(pid))
    assert is_mounted(m.mountpoint)  # the kernel keeps the dead mount
    with pytest.raises(OSError) as e:
        os.statvfs(m.mountpoint)
    assert e.value.errno == errno.ENOTCONN
    if not stat_first:
        with pytest.raises(OSError) as e:
            os.stat(m.mountpoint)
        assert e.value.errno == errno.ENOTCONN
    # mounting over it says what to do, in one line
    again = mounted.run("mount", "--cache-dir", mounted.cache_dir, rich_archive, m.mountpoint)
    assert "umount" in assert_one_line_error(again)
    r = mounted.run("umount", m.mountpoint)
    assert (r.returncode, r.stderr) == (0, "")
    assert not is_mounted(m.mountpoint)
    assert os.listdir(m.mountpoint) == []
    # and the mountpoint is usable again
    m2 = mounted(rich_archive, mountpoint=m.mountpoint)
    assert (m2.mountpoint / "etc/version").read_bytes() == b"2\n"


def test_foreground_mode_and_sigint(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> None:
    mp = mounted.new_mountpoint()
    proc = mounted.foreground(rich_archive, mp)
    assert (mp / "etc/hello").read_bytes() == b"hello world\n"
    assert proc.poll() is None, "mount -f returned while mounted"
    assert processes_for(mp) == [proc.pid], "foreground mode must not leave a separate daemon"
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=TIMEOUT)
    assert not is_mounted(mp)
    assert rc == 0, f"mount -f exited {rc} after SIGINT"
    assert os.listdir(mp) == []


def _children(ppid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                if d.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def test_daemon_dying_before_ready_is_reported(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert mounted.run("index", "--cache-dir", cache, rich_archive).returncode == 0  # so the daemon is forked
    for _attempt in range(3):
        mp = mounted.new_mountpoint()
        mounted.track(mp)
        start = time.monotonic()
        proc = subprocess.Popen([*mounted.cli, "mount", "--cache-dir", str(cache), str(rich_archive), str(mp)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        daemons: list[int] = []
        while not daemons and proc.poll() is None and time.monotonic() - start < TIMEOUT:
            daemons = _children(proc.pid)
        for pid in daemons:
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        out, err = proc.communicate(timeout=TIMEOUT)
        if proc.returncode == 0:
            continue  # the daemon was ready before it could be killed; try again
        msg = assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), mp)
        assert "No child processes" not in msg
        if time.monotonic() - start < 20:
            assert "within 30s" not in msg, msg
        return
    pytest.skip("the daemon was ready each time before it could be killed")


def _indexes(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.idx")}


def test_second_mount_reuses_cached_index(mounted: Mounter, rich_archive: Path) -> None:
    m1 = mounted(rich_archive)
    first = _indexes(m1.cache_dir)
    assert len(first) == 1, first
    index_path = str(m1.cache_dir / next(iter(first)))
    assert _mapped_indexes(m1.daemon_pid()) == {index_path}
    # a second mount while the first is up, and a third after both are gone
    m2 = mounted(rich_archive)
    assert _indexes(m2.cache_dir) == first
    assert _mapped_indexes(m2.daemon_pid()) == {index_path}
    for m in (m1, m2):
        assert mounted.run("umount", m.mountpoint).returncode == 0
    m3 = mounted(rich_archive, mountpoint=m1.mountpoint)
    assert _indexes(m3.cache_dir) == first
    assert (m3.mountpoint / "data/x").read_bytes() == b"xattrs here\n"


def test_index_command_then_mount_reuses(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "prebuilt"
    r = mounted.run("index", "--cache-dir", cache, rich_archive)
    assert r.returncode == 0, r.stderr
    built = _indexes(cache)
    assert len(built) == 1
    assert next(iter(built)) in r.stdout
    m = mounted(rich_archive, cache_dir=cache)
    assert _indexes(cache) == built
    assert (m.mountpoint / "etc/ns").read_bytes() == b"ns\n"


def test_no_cache_leaves_no_index(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "unused-cache"
    m = mounted(rich_archive, "--no-cache", cache_dir=cache)
    assert (m.mountpoint / "etc/hello").read_bytes() == b"hello world\n"
    assert not cache.exists() or _indexes(cache) == {}


def _relative_setup(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> tuple[Path, str]:
    """A working directory holding the archive and a mountpoint; the mountpoint's (unique) name."""
    work = tmp_path / "rel"
    work.mkdir()
    name = f"mnt-{tmp_path.name}"
    (work / name).mkdir()
    os.link(rich_archive, work / "rich.tar")
    mounted.track(work / name, alias=name)  # a forked daemon's command line names it so
    return work, name


def test_relative_archive_and_mountpoint(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> None:
    """ARCHIVE and MOUNTPOINT relative to the caller's cwd (the daemon runs elsewhere)."""
    work, mnt = _relative_setup(mounted, rich_archive, tmp_path)
    r = run_cli(mounted.cli, "mount", "--cache-dir", tmp_path / "cache", "rich.tar", mnt, cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / mnt / "etc/hello").read_bytes() == b"hello world\n"
    r = run_cli(mounted.cli, "umount", mnt, cwd=work)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(work / mnt)


def test_relative_cache_dir(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> None:
    work, mnt = _relative_setup(mounted, rich_archive, tmp_path)
    r = run_cli(mounted.cli, "mount", "--cache-dir", "cache", "rich.tar", mnt, cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / mnt / "etc/hello").read_bytes() == b"hello world\n"


# -- the same image in every archive layout ----------------------------------------

LAYOUTS = {
    "docker": lambda p, layers: b.write_docker_archive(p, layers),
    "legacy": lambda p, layers: b.write_legacy_archive(p, layers),
    "docker25": lambda p, layers: b.write_docker25_archive(p, layers),
    "oci": lambda p, layers: b.write_oci_archive(p, layers),
    "oci-gzip": lambda p, layers: b.write_oci_archive(p, layers, compression="gzip"),
    "oci-zstd": lambda p, layers: b.write_oci_archive(p, layers, compression="zstd"),
}


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """path -> (st_mode, sha256 of the content) for everything below ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out[str(p.relative_to(root))] = (st.st_mode, hashlib.sha256(data).digest())
    return out


_KINDS = {tarfile.REGTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
          tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


def _expected_tree(layers: list[list[b.Entry]]) -> dict[str, tuple[int, bytes]]:
    """What `_tree` must show for these layers (files and whiteouts only: no opaque dirs here)."""
    entries: dict[str, b.Entry] = {}
    for layer in layers:
        for e in layer:
            head, _, base = str(e.path).rpartition("/")
            if base.startswith(".wh."):
                del entries[f"{head}/{base[4:]}" if head else base[4:]]
            else:
                entries[str(e.path)] = e
    out = {}
    for name, e in entries.items():
        src = entries[str(e.linkname)] if e.kind == tarfile.LNKTYPE else e
        kind = _KINDS[src.kind]
        out[name] = (kind | src.mode, hashlib.sha256(src.data if kind == stat.S_IFREG else b"").digest())
    return out


@pytest.mark.parametrize("layout", [
    "docker", "legacy", "docker25", "oci",
    "oci-gzip",
    "oci-zstd",
])
def test_every_layout_gives_the_same_tree(mounted: Mounter, tmp_path: Path, layout: str) -> None:
    layers = [[e for e in LAYER1 if e.path != "data/big"], LAYER2]
    archive = tmp_path / f"{layout}.tar"
    LAYOUTS[layout](str(archive), layers)
    got = _tree(mounted(archive).mountpoint)
    want = _expected_tree(layers)
    assert sorted(got) == sorted(want)
    wrong = {p: (oct(got[p][0]), oct(want[p][0])) for p in want if got[p] != want[p]}
    assert not wrong, f"(got mode, want mode) or content differs: {wrong}"


def test_read_only_mount_reads_ahead_a_mebibyte(mounted: Mounter, rich_archive: Path) -> None:
    """The kernel gives a FUSE mount 128 KiB of readahead; imagefs widens its
    own mount's to what one request carries (1 MiB), so a big file costs 8x
    fewer round trips.  The knob is root's; others keep 128 KiB."""
    from imagefs.mount import READAHEAD_KIB, _mountinfo_entry

    if os.geteuid() != 0:
        pytest.skip("widening a mount's readahead needs root")
    m = mounted(rich_archive)
    entry = _mountinfo_entry(str(m.mountpoint))
    dev = entry[0] if entry is not None else None
    assert dev is not None and dev.startswith("0:")
    with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as f:
        assert int(f.read()) == READAHEAD_KIB == 1024


def test_umount_of_a_busy_mount_says_so(mounted: Mounter, rich_archive: Path) -> None:
    m = mounted(rich_archive)
    sleeper = subprocess.Popen(["sleep", "60"], cwd=m.mountpoint)
    try:
        r = mounted.run("umount", m.mountpoint)
        assert "is busy (a process is using it)" in assert_one_line_error(r)
        assert is_mounted(m.mountpoint)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=TIMEOUT)
    assert mounted.run("umount", m.mountpoint).returncode == 0


def test_umount_leaves_other_file_systems_alone(mounted: Mounter, tmp_path: Path) -> None:
    """As root, umount(8) would remove anything: imagefs umount takes FUSE mounts only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "tfs"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True, timeout=TIMEOUT)
    try:
        r = mounted.run("umount", d)
        msg = assert_one_line_error(r)
        assert msg == f"{d} is a tmpfs mount, not an imagefs one: use umount(8)"
        assert is_mounted(d)
    finally:
        subprocess.run(["umount", str(d)], check=True, timeout=TIMEOUT)


def test_mountpoint_named_through_a_symlink(mounted: Mounter, rich_archive: Path, tmp_path: Path) -> None:
    """The kernel mounts on the real directory; mount, umount and the overlay
    checks must all see that one, whatever name the user gave."""
    real = mounted.new_mountpoint()
    mounted.track(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    r = mounted.run("mount", "--cache-dir", mounted.cache_dir, rich_archive, link)
    assert r.returncode == 0, r.stderr
    assert is_mounted(real)
    assert (link / "etc/hello").read_bytes() == b"hello world\n"
    r = mounted.run("umount", link)
    assert (r.returncode, r.stderr) == (0, "")
    assert not is_mounted(real)

    # an overlay directory that is the mountpoint under another name is refused
    r = mounted.run("mount", "--cache-dir", mounted.cache_dir, "--overlay", link, rich_archive, real)
    assert r.returncode != 0 and "inside the mountpoint" in r.stderr, r.stderr
    assert not is_mounted(real)
