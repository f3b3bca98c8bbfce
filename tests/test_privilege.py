"""Least privilege (issue 7, item 5): mounts are nosuid,nodev, `allow_other` only on
request, and the kernel checks the image's modes and owners (`default_permissions`).

Other users are played by uid/gid 65534 (nobody), through ``setpriv`` (or ``su``),
running a small probe script that reports the errno of each access.  Their
mountpoints live in a world-traversable directory of their own under /tmp
(pytest's tmp_path is 0700, which would hide the mount from them anyway).

``test_overlay_dir_grants_no_setuid_or_device_access`` checks that an overlay's DIR
does not hand other users what nosuid,nodev deny them (DIR is created 0700).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

import builder as b
from conftest import TIMEOUT, Mounter, assert_one_line_error, is_mounted, mount_entry

pytestmark = pytest.mark.fuse

NOBODY = 65534
ID_BIN = "/usr/bin/id"

# The probe: argv[1] is a JSON list of [op, path]; prints one JSON result per op.
PROBE = r"""
import json, os, subprocess, sys
out = []
for op, path in json.loads(sys.argv[1]):
    try:
        if op == "read":
            with open(path, "rb") as f:
                value = f.read().decode("latin-1")
        elif op == "stat":
            value = os.stat(path).st_mode
        elif op == "listdir":
            value = sorted(os.listdir(path))
        elif op == "create":
            with open(path, "xb") as f:
                f.write(b"by nobody\n")
            value = None
        elif op == "append":
            with open(path, "ab") as f:
                f.write(b"appended\n")
            value = None
        elif op == "chmod":
            os.chmod(path, 0o666)
            value = None
        elif op == "rename":
            os.rename(path, path + ".moved")
            value = None
        elif op == "write":
            with open(path, "wb") as f:
                f.write(b"x")
            value = None
        elif op == "exec-euid":
            value = subprocess.run([path, "-u"], capture_output=True, text=True, timeout=30).stdout.strip()
        else:
            raise ValueError(op)
        out.append({"ok": True, "value": value})
    except OSError as e:
        out.append({"ok": False, "errno": e.errno})
print(json.dumps({"euid": os.geteuid(), "results": out}))
"""


def _as_user_prefix(uid: int) -> list[str] | None:
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return None


def as_user(uid: int, ops: list[tuple[str, str | os.PathLike[str]]]) -> list[dict[str, Any]]:
    """Run ``ops`` as ``uid`` (gid the same, no supplementary groups); their results."""
    if os.geteuid() != 0:
        pytest.skip("playing another user needs root")
    payload = json.dumps([[op, str(p)] for op, p in ops])
    argv = [sys.executable, "-c", PROBE, payload]
    prefix = _as_user_prefix(uid)
    if prefix is not None:
        cmd = prefix + argv
    elif shutil.which("su") and uid == NOBODY:
        cmd = ["su", "nobody", "-s", "/bin/sh", "-c", shlex.join(argv)]
    else:
        pytest.skip("neither setpriv nor su is available to run as another user")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd="/", stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"the probe as uid {uid} failed: {r.stderr}"
    report = json.loads(r.stdout)
    assert report["euid"] == uid
    return report["results"]  # type: ignore[no-any-return]


def _errno_name(result: dict[str, Any]) -> str:
    return "ok" if result["ok"] else errno.errorcode.get(result["errno"], str(result["errno"]))


SECRET = b"root only\n"
PUBLIC = b"anyone may read\n"


def _layer() -> list[b.Entry]:
    with open(ID_BIN, "rb") as f:
        id_bytes = f.read()
    return [
        b.dir("etc", mode=0o755),
        b.file("etc/public", PUBLIC, mode=0o644),
        b.file("etc/secret", SECRET, mode=0o600),
        b.file("etc/shadow-like", b"group only\n", mode=0o640, gid=42),
        b.file("etc/nobodys", b"nobody's own\n", mode=0o600, uid=NOBODY, gid=NOBODY),
        b.file("etc/none", b"mode 0000\n", mode=0o000),
        b.dir("root", mode=0o700),
        b.file("root/inside", b"behind a 0700 dir\n", mode=0o644),
        b.dir("usr", mode=0o755),
        b.dir("usr/bin", mode=0o755),
        b.file("usr/bin/suid-id", id_bytes, mode=0o4755),
        b.file("usr/bin/sgid-id", id_bytes, mode=0o2755, gid=42),
        b.dir("dev", mode=0o755),
        b.device("dev/null-copy", "c", 1, 3, mode=0o666),
        b.dir("tmp", mode=0o1777),
        # A world-writable (not sticky) directory holding a setuid-root program and a device node:
        # anyone may rename them there, which copies them up into an overlay's DIR.
        b.dir("pub", mode=0o777),
        b.file("pub/suid-id", id_bytes, mode=0o4755),
        b.device("pub/null-dev", "c", 1, 3, mode=0o666),
    ]


@pytest.fixture(scope="module")
def priv_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.path.exists(ID_BIN):
        pytest.skip(f"{ID_BIN} is needed as the setuid program of the image")
    path = tmp_path_factory.mktemp("priv") / "priv.tar"
    b.write_docker_archive(str(path), [_layer()], tags=["priv:latest"])
    return path


@pytest.fixture
def public_dir(mounted: Mounter) -> Iterator[Path]:
    """A 0755 directory under /tmp for mountpoints other users can reach; removed after
    the test's mounts are gone."""
    d = Path(tempfile.mkdtemp(prefix="imagefs-priv-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        mounted.cleanup()
        mps = [p for p in d.iterdir()] if d.is_dir() else []
        if not any(is_mounted(p) for p in mps):
            shutil.rmtree(d, ignore_errors=True)


def _mp(public_dir: Path, name: str = "mnt") -> Path:
    p = public_dir / name
    p.mkdir()
    return p


def _options(mp: Path) -> set[str]:
    with open("/proc/mounts") as f:
        rows = [line.split() for line in f if line.split()[1:2] == [str(mp)]]
    assert len(rows) == 1, rows
    return set(rows[0][3].split(","))


# -- mount options --------------------------------------------------------------------------


def test_mount_is_nosuid_nodev_and_private_by_default(mounted: Mounter, priv_archive: Path) -> None:
    m = mounted(priv_archive)
    opts = _options(m.mountpoint)
    assert {"ro", "nosuid", "nodev", "default_permissions"} <= opts, opts
    assert "allow_other" not in opts, opts
    assert "suid" not in opts and "dev" not in opts
    st = os.statvfs(m.mountpoint)
    assert st.f_flag & os.ST_NOSUID and st.f_flag & os.ST_NODEV and st.f_flag & os.ST_RDONLY
    entry = mount_entry(m.mountpoint)
    assert entry is not None and {"nosuid", "nodev"} <= entry.options
    # and says so
    r = mounted.run("mount", "--help")
    assert r.returncode == 0 and "nosuid" in r.stdout and "nodev" in r.stdout, r.stdout
    # nodev at work: a device node of the image is shown, but not even root can open it
    st = os.stat(m.mountpoint / "dev/null-copy")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    with pytest.raises(OSError) as e:
        open(m.mountpoint / "dev/null-copy", "rb").close()
    assert e.value.errno == errno.EACCES, e.value


@pytest.mark.parametrize("opt", ["allow_other,suid", "dev"])
def test_suid_and_dev_are_refused(mounted: Mounter, priv_archive: Path, opt: str) -> None:
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", mounted.cache_dir, "-o", opt, priv_archive, mp, mountpoint=mp)
    msg = assert_one_line_error(r, mp)
    assert "nosuid" in msg or "not possible" in msg, msg


# -- setuid and devices ------------------------------------------------------------------------


def test_setuid_bit_is_shown_but_not_honoured(mounted: Mounter, priv_archive: Path, public_dir: Path) -> None:
    m = mounted(priv_archive, "-o", "allow_other", mountpoint=_mp(public_dir))
    st = os.stat(m.mountpoint / "usr/bin/suid-id")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_uid == 0 and stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(os.stat(m.mountpoint / "usr/bin/sgid-id").st_mode) == 0o2755
    assert os.statvfs(m.mountpoint).f_flag & os.ST_NOSUID
    # Run by nobody, the setuid-root `id` reports nobody's uid: the bit gives nothing.
    res = as_user(NOBODY, [("exec-euid", m.mountpoint / "usr/bin/suid-id")])[0]
    if not res["ok"]:
        pytest.fail(f"could not execute the image's setuid program: {_errno_name(res)}")
    assert res["value"] == str(NOBODY), f"a setuid program of the image ran with euid {res['value']}"


# -- default_permissions ---------------------------------------------------------------------------


def test_allow_other_follows_the_image_modes(mounted: Mounter, priv_archive: Path, public_dir: Path) -> None:
    m = mounted(priv_archive, "-o", "allow_other", mountpoint=_mp(public_dir))
    mp = m.mountpoint
    ops = [
        ("read", mp / "etc/public"),
        ("read", mp / "etc/secret"),
        ("read", mp / "etc/shadow-like"),
        ("read", mp / "etc/nobodys"),
        ("read", mp / "etc/none"),
        ("listdir", mp / "root"),
        ("stat", mp / "root/inside"),
        ("read", mp / "root/inside"),
        ("listdir", mp / "etc"),
    ]
    got = as_user(NOBODY, ops)
    names = {f"{op} {os.path.relpath(p, mp)}": _errno_name(r) for (op, p), r in zip(ops, got)}
    assert names == {
        "read etc/public": "ok",
        "read etc/secret": "EACCES",
        "read etc/shadow-like": "EACCES",
        "read etc/nobodys": "ok",
        "read etc/none": "EACCES",
        "listdir root": "EACCES",
        "stat root/inside": "EACCES",
        "read root/inside": "EACCES",
        "listdir etc": "ok",
    }
    assert got[0]["value"] == PUBLIC.decode()
    assert got[3]["value"] == "nobody's own\n"
    # root, of course, reads everything
    assert (mp / "etc/secret").read_bytes() == SECRET
    assert (mp / "root/inside").read_bytes() == b"behind a 0700 dir\n"


def test_without_allow_other_other_users_are_shut_out(mounted: Mounter, priv_archive: Path,
                                                      public_dir: Path) -> None:
    m = mounted(priv_archive, mountpoint=_mp(public_dir))
    mp = m.mountpoint
    got = as_user(NOBODY, [("stat", mp), ("listdir", mp), ("read", mp / "etc/public"), ("stat", mp / "etc")])
    assert [_errno_name(r) for r in got] == ["EACCES"] * 4, got
    assert (mp / "etc/public").read_bytes() == PUBLIC  # the owner (root) is not


def test_overlay_with_allow_other_checks_writes_too(mounted: Mounter, priv_archive: Path, public_dir: Path,
                                                    tmp_path: Path) -> None:
    ov = tmp_path / "ov"
    m = mounted(priv_archive, "--overlay", str(ov), "-o", "allow_other", mountpoint=_mp(public_dir))
    mp = m.mountpoint
    # writable and shared, and still nosuid,nodev
    opts = _options(mp)
    assert {"rw", "nosuid", "nodev", "default_permissions", "allow_other"} <= opts, opts
    ops = [
        ("create", mp / "etc/planted"),
        ("append", mp / "etc/public"),
        ("append", mp / "etc/secret"),
        ("chmod", mp / "etc/secret"),
        ("create", mp / "root/planted"),
        ("create", mp / "tmp/mine"),
        ("append", mp / "etc/nobodys"),
    ]
    got = as_user(NOBODY, ops)
    names = {f"{op} {os.path.relpath(p, mp)}": _errno_name(r) for (op, p), r in zip(ops, got)}
    assert names == {
        "create etc/planted": "EACCES",
        "append etc/public": "EACCES",
        "append etc/secret": "EACCES",
        "chmod etc/secret": "EPERM",
        "create root/planted": "EACCES",
        "create tmp/mine": "ok",
        "append etc/nobodys": "ok",
    }
    # The image's root files are untouched, in the view and in DIR.
    assert (mp / "etc/public").read_bytes() == PUBLIC
    assert (mp / "etc/secret").read_bytes() == SECRET
    assert stat.S_IMODE(os.stat(mp / "etc/secret").st_mode) == 0o600
    assert not (ov / "etc/planted").exists() and not (ov / "root").exists()
    assert not (ov / "etc/public").exists() and not (ov / "etc/secret").exists()
    # What nobody made belongs to nobody, in the view and in DIR.
    for p in (mp / "tmp/mine", ov / "tmp/mine"):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), p
    assert (mp / "etc/nobodys").read_bytes() == b"nobody's own\nappended\n"
    assert os.stat(ov / "etc/nobodys").st_uid == NOBODY


def test_overlay_dir_grants_no_setuid_or_device_access(mounted: Mounter, priv_archive: Path,
                                                       public_dir: Path) -> None:
    ov = public_dir / "overlay"  # where a user would put it: beside the mountpoint, parents 0755
    m = mounted(priv_archive, "--overlay", str(ov), "-o", "allow_other", mountpoint=_mp(public_dir))
    mp = m.mountpoint
    moved = as_user(NOBODY, [("rename", mp / "pub/suid-id"), ("rename", mp / "pub/null-dev")])
    assert [_errno_name(r) for r in moved] == ["ok", "ok"], moved  # allowed: pub is 0777, not sticky
    # The mount itself stays nosuid,nodev...
    res = as_user(NOBODY, [("exec-euid", mp / "pub/suid-id.moved"), ("write", mp / "pub/null-dev.moved")])
    assert res[0]["ok"] and res[0]["value"] == str(NOBODY), res
    assert _errno_name(res[1]) == "EACCES", res
    # ...and so must be what the overlay keeps in DIR, as other users reach it on the host.
    assert os.path.lexists(ov / "pub/suid-id.moved") and os.path.lexists(ov / "pub/null-dev.moved")
    res = as_user(NOBODY, [("exec-euid", ov / "pub/suid-id.moved"), ("write", ov / "pub/null-dev.moved")])
    assert not (res[0]["ok"] and res[0]["value"] == "0"), \
        f"nobody ran {ov}/pub/suid-id.moved (a setuid-root program of the image) with euid 0"
    assert not res[1]["ok"], f"nobody opened the image's device node through {ov}/pub/null-dev.moved"
