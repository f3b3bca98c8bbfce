"""Helpers for the writable-mount tests: kernel overlayfs as the oracle.

* `materialize`: a builder layer description as an overlayfs lowerdir (whiteouts as 0/0
  character devices, opaque markers as ``trusted.overlay.opaque=y``).
* `KernelOverlays`: ``mount -t overlay`` with forced cleanup.
* `normalized_upper`: an imagefs scratch dir or a kernel upperdir as one comparable form.
* `run_steps`: a scripted sequence of shell commands and python steps, run in a separate
  process (with a timeout) with its working directory at the mount; returns what each step saw.

Run as a script (``python overlay_support.py ROOT STEPS_JSON``) it is that step runner.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import builder as b  # noqa: E402

TMP_PREFIX = ".wh..wh..imagefs-tmp."
IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "security.selinux")

# -- the image the mount tests start from ----------------------------------------------------

BIG = bytes((i * 7 + 3) % 251 for i in range(200_000))

BASE_LAYER1 = [
    b.dir("etc", mode=0o755),
    b.file("etc/hostname", b"base\n"),
    b.file("etc/conf", b"key=1\n", mode=0o640, uid=1000, gid=1000, xattrs={"user.origin": b"lower"}),
    b.file("etc/big", BIG),
    b.file("etc/single", b"single\n"),
    b.file("etc/hl-a", b"linked\n", mode=0o644),
    b.hardlink("etc/hl-b", "etc/hl-a"),
    b.dir("usr", mode=0o755),
    b.dir("usr/bin", mode=0o755),
    b.file("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755),
    b.dir("usr/lib", mode=0o755),
    b.file("usr/lib/libfoo.so.1", b"\x7fELF fake\n", mode=0o755),
    b.symlink("usr/lib/libfoo.so", "libfoo.so.1"),
    b.dir("usr/share", mode=0o755),
    b.dir("usr/share/doc", mode=0o755),
    b.dir("usr/share/doc/pkg1", mode=0o755),
    b.file("usr/share/doc/pkg1/README", b"pkg1\n"),
    b.file("usr/share/doc/pkg1/copyright", b"(c) pkg1\n"),
    b.dir("usr/share/doc/pkg2", mode=0o755),
    b.file("usr/share/doc/pkg2/README", b"pkg2\n"),
    b.dir("usr/share/man", mode=0o755),
    b.dir("usr/share/man/man1", mode=0o755),
    b.file("usr/share/man/man1/tool.1", b".TH TOOL 1\n"),
    b.dir("var", mode=0o755),
    b.dir("var/lib", mode=0o755),
    b.dir("var/lib/state", mode=0o700),
    b.file("var/lib/state/db", b"db v1\n", mode=0o600),
    b.dir("var/log", mode=0o755),
    b.dir("var/cache", mode=0o755),
    b.file("var/cache/old", b"old cache\n"),
    b.dir("home", mode=0o755),
    b.dir("home/user", mode=0o750, uid=1000, gid=1000),
    b.file("home/user/.profile", b"PATH=/bin\n", uid=1000, gid=1000),
    b.dir("srv", mode=0o755),
    b.dir("tmp", mode=0o1777),
    b.dir("run", mode=0o755),
    b.fifo("run/ctl", mode=0o600),
    b.dir("opt", mode=0o755),
    b.dir("opt/app", mode=0o755),
    b.file("opt/app/main.py", b"print('hello')\n"),
    b.file("opt/app/gone-in-2", b"deleted by layer 2\n"),
]
BASE_LAYER2 = [
    b.dir("etc", mode=0o755),
    b.file("etc/hostname", b"layer2\n"),
    b.dir("usr", mode=0o755),
    b.dir("usr/share", mode=0o755),
    b.dir("usr/share/doc", mode=0o755),
    b.whiteout("usr/share/doc/pkg2"),
    b.dir("var", mode=0o755),
    b.dir("var/cache", mode=0o755),
    b.opaque("var/cache"),
    b.file("var/cache/new", b"new cache\n"),
    b.dir("opt", mode=0o755),
    b.dir("opt/app", mode=0o755),
    b.whiteout("opt/app/gone-in-2"),
    b.file("opt/app/v2", b"version 2\n"),
]
BASE_LAYERS = [BASE_LAYER1, BASE_LAYER2]


def prefixed(layers: Sequence[Sequence[b.Entry]], prefixes: Sequence[str]) -> list[list[b.Entry]]:
    """``layers`` repeated below each prefix directory (one independent copy per prefix)."""
    import dataclasses

    out: list[list[b.Entry]] = []
    for i, layer in enumerate(layers):
        entries: list[b.Entry] = []
        for pre in prefixes:
            if i == 0:
                entries.append(b.dir(pre, mode=0o755))
            for e in layer:
                link = e.linkname
                if e.kind == tarfile.LNKTYPE:
                    link = f"{pre}/{_s(link)}"
                entries.append(dataclasses.replace(e, path=f"{pre}/{_s(e.path)}", linkname=link))
        out.append(entries)
    return out


# -- lowerdirs -------------------------------------------------------------------------


def _s(p: str | bytes) -> str:
    return p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else p


def _copy_dir_attrs(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    for n in os.listxattr(src):
        os.setxattr(dst, n, os.getxattr(src, n))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def materialize(layers: Sequence[Sequence[b.Entry]], top: Path) -> list[Path]:
    """Write each layer as an overlayfs lowerdir under ``top``; returns them bottom first.

    A parent a layer does not list is made with the attributes it has in the layers below
    (as the image's merged view shows it).
    """
    dirs: list[Path] = []
    fixups: list[tuple[Path, b.Entry]] = []
    for i, layer in enumerate(layers):
        d = top / f"layer{i + 1}"
        d.mkdir(parents=True)
        dirs.append(d)

        def parent_of(rel: str) -> None:
            parts = rel.split("/")[:-1]
            for j in range(1, len(parts) + 1):
                sub = "/".join(parts[:j])
                p = d / sub
                if not p.exists():
                    p.mkdir()
                    for below in reversed(dirs[:-1]):
                        if (below / sub).is_dir():
                            _copy_dir_attrs(below / sub, p)
                            break

        for e in layer:
            rel = _s(e.path).strip("/")
            parent_of(rel)
            head, _, name = rel.rpartition("/")
            if name == ".wh..wh..opq":
                target = d / head if head else d
                os.setxattr(target, "trusted.overlay.opaque", b"y")
                continue
            if name.startswith(".wh."):
                os.mknod(d / head / name[4:] if head else d / name[4:], stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            p = d / rel
            if e.kind == tarfile.DIRTYPE:
                if not p.is_dir():
                    p.mkdir()
            elif e.kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
                p.write_bytes(e.data)
            elif e.kind == tarfile.SYMTYPE:
                os.symlink(_s(e.linkname), p)
            elif e.kind == tarfile.LNKTYPE:
                os.link(d / _s(e.linkname).strip("/"), p)
                continue  # attributes are the target's
            elif e.kind == tarfile.FIFOTYPE:
                os.mkfifo(p)
            elif e.kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                kind = stat.S_IFCHR if e.kind == tarfile.CHRTYPE else stat.S_IFBLK
                os.mknod(p, kind | e.mode, os.makedev(e.devmajor, e.devminor))
            else:
                raise ValueError(f"entry kind {e.kind!r}")
            os.chown(p, e.uid, e.gid, follow_symlinks=False)
            if e.kind != tarfile.SYMTYPE:
                os.chmod(p, e.mode)
            for k, v in e.xattrs.items():
                os.setxattr(p, k, v, follow_symlinks=False)
            if e.kind == tarfile.DIRTYPE:
                fixups.append((p, e))  # directory mtimes last: children change them
            else:
                os.utime(p, (e.mtime, e.mtime), follow_symlinks=False)
    for p, e in fixups:
        os.utime(p, (e.mtime, e.mtime))
    return dirs


def image_dirs(layers: Sequence[Sequence[b.Entry]]) -> set[str]:
    """The directory paths of the merged image (to tell which opaque markers and whiteouts matter)."""
    present: dict[str, bool] = {}  # path -> is a directory
    for layer in layers:
        names = [_s(e.path).strip("/") for e in layer]
        for rel in names:  # whiteouts first, against the layers below
            head, _, name = rel.rpartition("/")
            if name == ".wh..wh..opq":
                for p in [p for p in present if p.startswith(head + "/" if head else "")]:
                    if p != head:
                        del present[p]
            elif name.startswith(".wh."):
                gone = f"{head}/{name[4:]}" if head else name[4:]
                for p in [p for p in present if p == gone or p.startswith(gone + "/")]:
                    del present[p]
        for e in layer:
            rel = _s(e.path).strip("/")
            name = rel.rpartition("/")[2]
            if name.startswith(".wh."):
                continue
            parts = rel.split("/")
            for j in range(1, len(parts)):
                present["/".join(parts[:j])] = True
            if e.kind != tarfile.DIRTYPE:
                for p in [p for p in present if p.startswith(rel + "/")]:
                    del present[p]
            present[rel] = e.kind == tarfile.DIRTYPE
    return {p for p, is_dir in present.items() if is_dir}


# -- kernel overlayfs ------------------------------------------------------------------------------


def mounted_at(mp: Path | str) -> bool:
    mp = os.path.abspath(mp)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split(" ")[4].replace("\\040", " ") == mp:
                return True
    return False


class KernelOverlays:
    """``mount -t overlay`` mounts, always unmounted by `cleanup`."""

    OPTIONS = "redirect_dir=off,index=on,metacopy=off"

    def __init__(self) -> None:
        self.mps: list[Path] = []

    def mount(self, lowers: Sequence[Path], upper: Path, work: Path, mp: Path) -> None:
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        lowerdir = ":".join(str(p) for p in reversed(lowers))  # top first
        opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work},{self.OPTIONS}"
        self.mps.append(mp)
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mp)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, f"mount -t overlay failed: {r.stderr}"

    def umount(self, mp: Path) -> None:
        r = subprocess.run(["umount", str(mp)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"umount {mp} failed: {r.stderr}"

    def cleanup(self) -> list[str]:
        problems = []
        for mp in self.mps:
            for cmd in (["umount", str(mp)], ["umount", "-l", str(mp)]):
                if not mounted_at(mp):
                    break
                subprocess.run(cmd, capture_output=True, timeout=60)
            if mounted_at(mp):
                problems.append(f"kernel overlay at {mp} is still mounted")
        return problems


# -- the scratch dir / upperdir in one form --------------------------------------------------------


def _xattrs(p: str) -> tuple[tuple[str, str], ...]:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in names:
        if n.startswith(IGNORED_XATTR_PREFIXES):
            continue
        out.append((n, os.getxattr(p, n, follow_symlinks=False).hex()))
    return tuple(sorted(out))


def _sha(p: str) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def normalized_upper(top: Path, kind: str, image_dir_paths: set[str],
                     volatile: Sequence[str] = ()) -> dict[str, tuple]:
    """``top`` (``kind`` "imagefs": a scratch dir; "kernel": an overlayfs upperdir) as
    path -> description, whiteouts as ("whiteout",) and opaque markers as ("opaque",) entries
    at the directory's path + "/.opaque".  Markers that hide nothing of the image (below an
    opaque or deleted directory, or where the image has no directory) are left out: both
    forms are valid.  Temporaries of imagefs are reported as ("TEMPORARY",)."""
    raw: dict[str, tuple] = {}
    inodes: dict[str, int] = {}
    whiteouts: set[str] = set()
    opaques: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.lstat(full)
            if kind == "imagefs" and name.startswith(TMP_PREFIX):
                raw[rel] = ("TEMPORARY",)
                continue
            if kind == "imagefs" and name == ".wh..wh..opq":
                opaques.add(rel_dir)
                continue
            if kind == "imagefs" and name.startswith(".wh."):
                whiteouts.add(f"{rel_dir}/{name[4:]}" if rel_dir else name[4:])
                continue
            if kind == "kernel" and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                whiteouts.add(rel)
                continue
            if kind == "kernel" and stat.S_ISDIR(st.st_mode):
                try:
                    if os.getxattr(full, "trusted.overlay.opaque") == b"y":
                        opaques.add(rel)
                except OSError:
                    pass
            mode = stat.S_IMODE(st.st_mode)
            what: Any = "-"
            if stat.S_ISREG(st.st_mode):
                t = "f"
                volatile_here = any(fnmatch.fnmatch(rel, pat) for pat in volatile)
                what = (st.st_size, "*" if volatile_here else _sha(full))
                inodes[rel] = st.st_ino
            elif stat.S_ISDIR(st.st_mode):
                t = "d"
            elif stat.S_ISLNK(st.st_mode):
                t, what, mode = "l", os.readlink(full), 0
            elif stat.S_ISFIFO(st.st_mode):
                t = "p"
            elif stat.S_ISSOCK(st.st_mode):
                t = "s"
            else:
                t = "c" if stat.S_ISCHR(st.st_mode) else "b"
                what = (os.major(st.st_rdev), os.minor(st.st_rdev))
            raw[rel] = (t, oct(mode), st.st_uid, st.st_gid, what, _xattrs(full))

    def image_visible(path: str) -> bool:
        """Would the image's entry at ``path`` show through the markers above it?"""
        parts = path.split("/")
        for j in range(1, len(parts)):
            anc = "/".join(parts[:j])
            if anc in whiteouts or anc in opaques:
                return False
            if anc in raw and raw[anc][0] != "d":
                return False
        return True

    out = dict(raw)
    for p in whiteouts:
        if image_visible(p):
            out[p + "/.whiteout"] = ("whiteout",)
    for p in opaques:
        if p in image_dir_paths and image_visible(p):
            out[p + "/.opaque"] = ("opaque",)
    out["\0inodes"] = inodes  # type: ignore[assignment]
    return out


def compare_uppers(imagefs: dict[str, tuple], kernel: dict[str, tuple]) -> list[str]:
    """Differences between the normalised scratch dir and upperdir, as readable lines.

    Kernel overlayfs (index=on) copies up the other names of a hard-linked image file lazily;
    imagefs copies them up together.  Names imagefs has and the kernel does not, that share an
    inode with a name both have, are therefore fine (with directories holding only those)."""
    i_inodes: dict[str, int] = imagefs.pop("\0inodes")  # type: ignore[assignment]
    k_inodes: dict[str, int] = kernel.pop("\0inodes")  # type: ignore[assignment]
    extra = set(imagefs) - set(kernel)
    shared_inodes = {i_inodes[p] for p in i_inodes if p in kernel}
    allowed = {p for p in extra if p in i_inodes and i_inodes[p] in shared_inodes}
    for p in sorted((p for p in extra if imagefs[p][0] == "d"), key=lambda p: -p.count("/")):
        below = [q for q in imagefs if q.startswith(p + "/")]
        if below and all(q in allowed for q in below):
            allowed.add(p)
    keep = [p for p in imagefs if p not in allowed]

    def groups(keys: Iterable[str], inodes: dict[str, int]) -> dict[str, str]:
        by: dict[int, list[str]] = {}
        for p in keys:
            if p in inodes:
                by.setdefault(inodes[p], []).append(p)
        return {p: min(g) for g in by.values() if len(g) > 1 for p in g}

    ig, kg = groups(keep, i_inodes), groups(kernel, k_inodes)
    lines = []
    for p in sorted(set(keep) | set(kernel)):
        a = imagefs.get(p) if p in keep else None
        k = kernel.get(p)
        a2 = (a, ig.get(p, "-")) if a is not None else None
        k2 = (k, kg.get(p, "-")) if k is not None else None
        if a2 != k2:
            lines.append(f"{p!r}: imagefs {a2} / kernel {k2}")
    return lines


# -- listings ----------------------------------------------------------------------------------------


def listing(listing_py: Path, root: Path, volatile: Sequence[str] = (), timeout: float = 120,
            no_hash: bool = False) -> list[str]:
    """listing.py of ``root`` (one line per path); sha256 of ``volatile`` paths replaced by '*'."""
    r = subprocess.run([sys.executable, str(listing_py), str(root)] + (["--no-hash"] if no_hash else []),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"listing.py {root} failed: {r.stderr[-2000:]}"
    out = []
    for line in r.stdout.splitlines()[1:]:
        f = line.split("\t")
        if f[6] != "-" and any(fnmatch.fnmatch(f[0].lstrip("/"), pat) for pat in volatile):
            f[6] = "*"
        out.append("\t".join(f))
    return out


def diff_lines(a: list[str], b_: list[str], a_name: str, b_name: str, limit: int = 60) -> str:
    import difflib

    lines = list(difflib.unified_diff(a, b_, a_name, b_name, lineterm="", n=0))
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


# -- the step runner -------------------------------------------------------------------------------------


def run_steps(root: Path, steps: Sequence[str], env: dict[str, str], timeout: float = 120) -> list[Any]:
    """Run ``steps`` ("sh:COMMAND" or "py:FUNCTION") in a child process with cwd ``root``."""
    r = subprocess.run([sys.executable, str(Path(__file__)), str(root), json.dumps(list(steps))],
                       capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"step runner failed ({r.returncode}): {r.stderr[-3000:]}"
    return json.loads(r.stdout)


def _err(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as e:
        return "E" + _err(e)


def _read(p: str) -> str:
    with open(p, "rb") as f:
        return f.read().decode("latin-1")


def _st(p: str) -> Any:
    try:
        st = os.lstat(p)
    except OSError as e:
        return "E" + _err(e)
    return [oct(st.st_mode), st.st_uid, st.st_gid, st.st_size if not stat.S_ISDIR(st.st_mode) else "-",
            st.st_nlink if not stat.S_ISDIR(st.st_mode) else "-"]


def step_open_flags() -> Any:
    r: dict[str, Any] = {}
    fd = os.open("etc/hostname", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"appended\n")
    os.pwrite(fd, b"pwrite-with-append\n", 0)  # Linux: O_APPEND wins over the offset
    os.close(fd)
    r["append"] = _read("etc/hostname")
    r["excl_existing"] = _try(lambda: os.open("etc/conf", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    r["excl_dir"] = _try(lambda: os.open("usr", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    fd = os.open("etc/newfile", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"brand new\n")
    os.close(fd)
    r["excl_new"] = [_read("etc/newfile"), _st("etc/newfile")]
    fd = os.open("usr/bin/tool", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"#!/bin/sh\n")
    os.close(fd)
    r["trunc"] = [_read("usr/bin/tool"), _st("usr/bin/tool")]
    fd = os.open("etc/big", os.O_RDWR)
    os.pwrite(fd, b"XYZ", 10)
    r["rdwr"] = os.pread(fd, 20, 0).decode("latin-1")
    os.close(fd)
    fd = os.open("etc/single", os.O_CREAT | os.O_WRONLY, 0o600)  # exists: no truncation, mode kept
    os.write(fd, b"S")
    os.close(fd)
    r["creat_existing"] = [_read("etc/single"), _st("etc/single")]
    os.unlink("var/lib/state/db")
    fd = os.open("var/lib/state/db", os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    os.write(fd, b"db v2\n")
    os.close(fd)
    r["creat_after_unlink"] = [_read("var/lib/state/db"), _st("var/lib/state/db")]
    r["wronly_dir"] = _try(lambda: os.open("usr", os.O_WRONLY))
    r["nofollow"] = _try(lambda: os.open("usr/lib/libfoo.so", os.O_RDONLY | os.O_NOFOLLOW))
    r["directory_on_file"] = _try(lambda: os.open("etc/conf", os.O_RDONLY | os.O_DIRECTORY))
    r["missing"] = _try(lambda: os.open("etc/nothing", os.O_RDONLY))
    r["whiteout_name"] = _try(lambda: os.open("opt/app/gone-in-2", os.O_RDONLY))
    fd = os.open("opt/app/gone-in-2", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.write(fd, b"back\n")
    os.close(fd)
    r["excl_on_image_deleted_name"] = _read("opt/app/gone-in-2")
    return r


def step_sparse() -> Any:
    off = 16 << 20
    fd = os.open("sparse", os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwrite(fd, b"end", off)
    os.close(fd)
    fd = os.open("etc/single", os.O_WRONLY)
    os.pwrite(fd, b"far", off // 2)
    os.close(fd)
    fd = os.open("sparse", os.O_RDONLY)
    out = [os.fstat(fd).st_size, os.pread(fd, 8, 0).hex(), os.pread(fd, 8, off - 5).hex(), os.pread(fd, 8, off + 3)]
    os.close(fd)
    with open("etc/single", "rb") as f:
        head = f.read(10)
        f.seek(off // 2 - 2)
        tail = f.read()
    return [out[:3], out[3] == b"", head.hex(), tail.hex(), os.stat("etc/single").st_size]


def step_truncate() -> Any:
    r = {}
    os.truncate("etc/big", 3)
    r["truncate_small"] = [_read("etc/big"), _st("etc/big")]
    os.truncate("etc/hostname", 0)
    r["truncate_zero"] = _st("etc/hostname")
    os.truncate("usr/bin/tool", 10_000)
    r["extend"] = [_st("usr/bin/tool"), _read("usr/bin/tool")[-3:].encode("latin-1").hex()]
    fd = os.open("etc/conf", os.O_RDWR)
    os.ftruncate(fd, 2)
    os.write(fd, b"abcd")  # at offset 0 (the fd's position)
    os.ftruncate(fd, 6)
    os.close(fd)
    r["ftruncate"] = _read("etc/conf")
    with open("home/user/.profile", "r+b") as f:
        f.truncate(4)
        f.seek(0, 2)
        f.write(b"+end")
    r["python_truncate"] = _read("home/user/.profile")
    return r


def step_unlink_open() -> Any:
    r: dict[str, Any] = {}
    f = open("etc/conf", "rb")
    os.unlink("etc/conf")
    r["image_file_after_unlink"] = [f.read().decode(), os.path.exists("etc/conf")]
    time.sleep(1.1)  # past the attribute timeout: the kernel asks
    r["fstat_after_unlink"] = _try(lambda: [os.fstat(f.fileno()).st_size, oct(os.fstat(f.fileno()).st_mode),
                                             os.fstat(f.fileno()).st_nlink])
    r["xattrs_after_unlink"] = _try(lambda: sorted(os.listxattr(f.fileno())))
    f.close()
    fd = os.open("etc/hostname", os.O_RDWR)
    os.unlink("etc/hostname")
    os.write(fd, b"X")
    r["copied_up_after_unlink"] = [os.pread(fd, 100, 0).decode(), os.path.exists("etc/hostname")]
    os.close(fd)
    fd = os.open("etc/single", os.O_RDONLY)
    os.rename("usr/bin/tool", "etc/single")
    r["renamed_over_while_open"] = [os.pread(fd, 100, 0).decode(), _read("etc/single")]
    os.close(fd)
    return r


def step_link_then_unlink() -> Any:
    fd = os.open("etc/single", os.O_RDONLY)
    os.stat("etc/single")
    os.link("etc/single", "etc/single-link")
    os.unlink("etc/single-link")
    r = [_st("etc/single"), _try(lambda: os.fstat(fd).st_size)]
    os.close(fd)
    os.link("etc/conf", "etc/conf.bak")  # the backup pattern: a link, then the backup goes
    with open("etc/conf", "ab") as f:
        f.write(b"x\n")
    os.unlink("etc/conf.bak")
    return r + [_st("etc/conf"), _try(lambda: _read("etc/conf"))]


def step_fstat_unlinked() -> Any:
    """A new file, unlinked while open, then written and read back (what tempfile.TemporaryFile does)."""
    import tempfile

    r: dict[str, Any] = {}
    fd = os.open("scratchfile", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"data")
    os.unlink("scratchfile")
    os.pwrite(fd, b"more", 4)
    r["read_back"] = _try(lambda: os.pread(fd, 100, 0).decode())
    os.close(fd)
    try:
        with tempfile.TemporaryFile(dir=".") as t:
            t.write(b"temporary data")
            t.seek(0)
            r["TemporaryFile"] = t.read().decode()
    except OSError as e:
        r["TemporaryFile"] = "E" + _err(e)
    fd = os.open("scratchfile", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"data")
    os.unlink("scratchfile")
    r["new"] = _try(lambda: [os.fstat(fd).st_size, os.fstat(fd).st_nlink, oct(os.fstat(fd).st_mode)])
    os.close(fd)
    # setattr through the descriptor of a file with no name left, then a new file at its old path
    fd = os.open("scratchfile", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"data")
    os.unlink("scratchfile")
    r["ftruncate"] = _try(lambda: (os.ftruncate(fd, 2), os.fstat(fd).st_size)[1])
    r["fchmod"] = _try(lambda: (os.fchmod(fd, 0o640), oct(os.fstat(fd).st_mode))[1])
    with open("scratchfile", "wb") as g:
        g.write(b"another file")
    r["old_fd_after_a_new_file"] = _try(lambda: [os.fstat(fd).st_size, os.pread(fd, 20, 0).decode()])
    os.close(fd)
    r["new_file"] = _read("scratchfile")
    fd = os.open("etc/hostname", os.O_RDWR | os.O_APPEND)
    os.write(fd, b"appended\n")
    os.unlink("etc/hostname")
    r["copied_up"] = _try(lambda: [os.fstat(fd).st_size, os.fstat(fd).st_nlink])
    os.close(fd)
    return r


def step_xattrs() -> Any:
    r = {}
    os.setxattr("etc/single", "user.new", b"on an image file")
    os.setxattr("usr", "user.dir", b"on an image dir")
    with open("newfile", "wb"):
        pass
    os.setxattr("newfile", "user.bin", bytes(range(256)))
    os.setxattr("newfile", "user.empty", b"")
    os.removexattr("etc/conf", "user.origin")
    r["remove_missing"] = _try(lambda: os.removexattr("etc/single", "user.missing"))
    r["get_missing"] = _try(lambda: os.getxattr("etc/single", "user.missing"))
    r["list"] = {p: sorted(os.listxattr(p)) for p in ("etc/single", "usr", "newfile", "etc/conf", "etc/hostname")}
    r["get"] = os.getxattr("newfile", "user.bin").hex()
    r["on_symlink"] = _try(lambda: os.setxattr("usr/lib/libfoo.so", "user.x", b"1", follow_symlinks=False))
    os.setxattr("etc/single", "user.new", b"replaced")
    r["replaced"] = os.getxattr("etc/single", "user.new").decode()
    return r


def step_xattr_flags() -> Any:
    r = {
        "create_existing": _try(lambda: os.setxattr("etc/conf", "user.origin", b"x", os.XATTR_CREATE)),
        "replace_missing": _try(lambda: os.setxattr("etc/conf", "user.nothing", b"x", os.XATTR_REPLACE)),
        "after": sorted(os.listxattr("etc/conf")),
        "value": os.getxattr("etc/conf", "user.origin").decode(),
    }
    # Kernel overlayfs copies the file up even when the call fails; imagefs does not (both fine).
    # A successful call makes the scratch dir and the upperdir comparable.
    os.setxattr("etc/conf", "user.origin", b"replaced", os.XATTR_REPLACE)
    os.setxattr("etc/conf", "user.created", b"new", os.XATTR_CREATE)
    r["final"] = {n: os.getxattr("etc/conf", n).decode() for n in sorted(os.listxattr("etc/conf"))}
    return r


def step_fsync() -> Any:
    fd = os.open("etc/hostname", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"synced\n")
    os.fsync(fd)
    os.write(fd, b"datasynced\n")
    os.fdatasync(fd)
    os.close(fd)
    os.mkdir("synced-dir")
    with open("synced-dir/f", "wb") as f:
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())
    for d in ("synced-dir", "etc", "usr/share"):
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    os.sync()
    return [_read("etc/hostname"), _read("synced-dir/f")]


def step_special_files() -> Any:
    os.mkfifo("run/newfifo", 0o640)
    os.mknod("run/zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    os.mknod("run/blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    s = socket.socket(socket.AF_UNIX)
    s.bind("run/sock")
    s.close()
    os.unlink("run/ctl")
    os.mkfifo("run/ctl", 0o666)
    return {p: _st(p) for p in ("run/newfifo", "run/zero", "run/blk", "run/sock", "run/ctl")}


def step_symlinks() -> Any:
    os.symlink("../etc/hostname", "usr/hn")
    os.symlink("nowhere/at/all", "dangling")
    os.unlink("usr/lib/libfoo.so")
    os.symlink("libfoo.so.2", "usr/lib/libfoo.so")
    os.symlink("v2", "opt/app/gone-in-2")
    os.rename("opt/app/gone-in-2", "opt/app/link-to-v2")
    return {p: [os.readlink(p), _try(lambda p=p: _read(p))] for p in
            ("usr/hn", "dangling", "usr/lib/libfoo.so", "opt/app/link-to-v2")}


def step_cache_coherence() -> Any:
    """Every change is visible at once, to this process and to another (no stale cache)."""
    r: dict[str, Any] = {}
    os.stat("etc/single")
    os.stat("etc/conf")
    os.listdir("etc")
    os.chmod("etc/single", 0o600)
    r["chmod"] = oct(os.stat("etc/single").st_mode)
    with open("etc/conf", "ab") as f:
        f.write(b"more\n")
    r["size"] = os.stat("etc/conf").st_size
    os.chown("etc/hostname", 5, 6)
    r["chown"] = [os.stat("etc/hostname").st_uid, os.stat("etc/hostname").st_gid]
    os.utime("usr/bin/tool", (1_600_000_000, 1_600_000_000))
    r["utime"] = os.stat("usr/bin/tool").st_mtime
    os.link("etc/single", "etc/single-link")
    r["nlink"] = [os.stat("etc/single").st_nlink, os.stat("etc/single-link").st_nlink]
    os.unlink("etc/single")
    r["nlink_after_unlink"] = os.stat("etc/single-link").st_nlink
    os.rename("etc/hostname", "etc/hostname.old")
    r["rename"] = [os.path.exists("etc/hostname"), os.path.exists("etc/hostname.old")]
    os.unlink("usr/bin/tool")
    r["unlink"] = ["tool" in os.listdir("usr/bin"), _try(lambda: os.stat("usr/bin/tool"))]
    os.mkdir("usr/bin/tool")
    r["mkdir_over_deleted"] = [os.path.isdir("usr/bin/tool"), os.listdir("usr/bin/tool")]
    os.truncate("etc/big", 1)
    r["truncate"] = os.stat("etc/big").st_size
    r["other_process"] = subprocess.run(
        ["stat", "-c", "%n %a %u %g %s %h", "etc/single-link", "etc/conf", "etc/hostname.old", "etc/big"],
        capture_output=True, text=True, timeout=60).stdout
    r["other_process_ls"] = subprocess.run(["ls", "-A", "etc", "usr/bin"], capture_output=True, text=True,
                                           timeout=60).stdout
    return r


def step_inode_stability() -> Any:
    """st_ino of an image file stays the same across its copy-up, chmod and a rename."""
    before = {p: os.stat(p).st_ino for p in ("etc/single", "etc/conf", "usr/bin/tool", "etc/hl-a", "etc/hl-b")}
    fd = os.open("etc/single", os.O_WRONLY | os.O_APPEND)
    st_open = os.fstat(fd).st_ino
    os.write(fd, b"x")
    os.close(fd)
    os.chmod("etc/conf", 0o600)
    os.setxattr("usr/bin/tool", "user.x", b"1")
    with open("etc/hl-a", "ab") as f:
        f.write(b"more\n")
    os.rename("etc/conf", "etc/conf.renamed")
    after = {p: os.stat(p).st_ino for p in ("etc/single", "etc/conf.renamed", "usr/bin/tool", "etc/hl-a", "etc/hl-b")}
    return {
        "single": before["etc/single"] == after["etc/single"] == st_open,
        "conf": before["etc/conf"] == after["etc/conf.renamed"],
        "tool": before["usr/bin/tool"] == after["usr/bin/tool"],
        "hl": before["etc/hl-a"] == before["etc/hl-b"] == after["etc/hl-a"] == after["etc/hl-b"],
        "hl_content": _read("etc/hl-b"),
    }


def step_inode_reuse() -> Any:
    """Image directories keep their inode numbers when copied up after other entries were deleted
    (the scratch file system reuses the deleted entries' inode numbers)."""
    for i in range(30):
        os.mkdir(f"d{i}")
        os.stat(f"d{i}")
        with open(f"f{i}", "wb"):
            pass
        os.stat(f"f{i}")
    for i in range(30):
        os.rmdir(f"d{i}")
        os.unlink(f"f{i}")
    dirs = ["usr", "usr/share", "usr/share/doc", "usr/share/doc/pkg1", "var/lib/state"]
    before = [os.stat(d).st_ino for d in dirs]
    here = os.getcwd()
    os.chdir("usr/share/doc/pkg1")
    with open("newfile", "wb"):
        pass
    with open("../../../../var/lib/state/newfile", "wb"):
        pass
    time.sleep(1.2)  # past the entry timeout: the kernel looks the directories up again
    cwd = _try(os.getcwd)
    os.chdir(here)
    after = [os.stat(d).st_ino for d in dirs]
    return {"same_inodes": [a == b_ for a, b_ in zip(before, after)], "getcwd_works": cwd != "EENOENT"}


def step_read_fd_sees_copy_up() -> Any:
    """An fd opened read-only before another fd writes (and so copies the file up) reads the new data."""
    f = open("etc/single", "rb")
    g = open("etc/single", "r+b")
    g.write(b"NEW")
    g.close()
    seen = f.read()
    f.close()
    return seen.decode()


def step_hardlink_alias_after_unlink() -> Any:
    """Write to one name of a hard-linked image file right after its other name was deleted."""
    with open("etc/hl-a", "rb") as f:
        f.read()
    with open("etc/hl-b", "rb") as f:
        f.read()
    os.unlink("etc/hl-b")
    with open("etc/hl-a", "ab") as f:
        f.write(b"appended\n")
    return [sorted(os.listdir("etc")), _read("etc/hl-a"), os.stat("etc/hl-a").st_nlink]


def _renameat2(src: str, dst: str, flags: int) -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD = -100
    rc = libc.renameat2(AT_FDCWD, src.encode(), AT_FDCWD, dst.encode(), flags)
    if rc != 0:
        return "E" + errno.errorcode.get(ctypes.get_errno(), "?")
    return 0


def step_rename_noreplace() -> Any:
    RENAME_NOREPLACE = 1
    return {
        "over_image_file": _renameat2("etc/single", "etc/conf", RENAME_NOREPLACE),
        "over_image_dir": _renameat2("etc/single", "usr", RENAME_NOREPLACE),
        "to_free_name": _renameat2("etc/single", "etc/single.moved", RENAME_NOREPLACE),
        "to_deleted_name": _renameat2("etc/single.moved", "opt/app/gone-in-2", RENAME_NOREPLACE),
        "state": [sorted(os.listdir("etc")), sorted(os.listdir("opt/app"))],
    }


def step_rename_dirs() -> Any:
    r: dict[str, Any] = {}
    os.mkdir("newdir")
    with open("newdir/f", "wb") as f:
        f.write(b"f\n")
    r["new_over_empty_image_dir"] = _try(lambda: os.rename("newdir", "srv"))
    os.mkdir("d2")
    r["new_over_nonempty_image_dir"] = _try(lambda: os.rename("d2", "usr/share/man"))
    r["new_over_new"] = [_try(lambda: os.mkdir("d3")), _try(lambda: os.rename("d2", "d3"))]
    r["image_dir"] = _try(lambda: os.rename("usr/share/doc/pkg1", "usr/share/doc/pkg1.moved"))
    r["dir_over_file"] = _try(lambda: os.rename("d3", "etc/single"))
    r["file_over_dir"] = _try(lambda: os.rename("etc/single", "srv"))
    r["into_itself"] = _try(lambda: os.rename("d3", "d3/sub"))
    r["new_dir_into_image_dir"] = _try(lambda: os.rename("d3", "var/lib/d3"))
    os.unlink("var/cache/new")
    r["new_over_emptied_image_dir"] = _try(lambda: os.rename("var/lib/d3", "var/cache"))
    r["state"] = {d: sorted(os.listdir(d)) for d in (".", "srv", "var/cache", "var/lib", "usr/share/doc")}
    return r


def step_rename_recreated_dir() -> Any:
    import shutil

    shutil.rmtree("usr/share/doc")
    os.mkdir("usr/share/doc")
    with open("usr/share/doc/f", "wb") as f:
        f.write(b"f\n")
    return [_try(lambda: os.rename("usr/share/doc", "usr/share/doc.moved")), sorted(os.listdir("usr/share"))]


PY_STEPS: dict[str, Callable[[], Any]] = {
    name[len("step_"):]: fn for name, fn in list(globals().items()) if name.startswith("step_") and callable(fn)
}


def _main(root: str, steps: list[str]) -> None:
    os.chdir(root)
    results: list[Any] = []
    for step in steps:
        kind, _, body = step.partition(":")
        if kind == "sh":
            r = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=300,
                               stdin=subprocess.DEVNULL)
            results.append({"step": body, "rc": r.returncode, "out": r.stdout, "err": r.stderr[-2000:]})
        else:
            try:
                value = PY_STEPS[body]()
            except OSError as e:
                value = f"raised {_err(e)}: {e}"
            results.append({"step": body, "value": value})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    _main(sys.argv[1], json.loads(sys.argv[2]))
