"""Library-level tests of `imagefs.overlay.Overlay` (no FUSE): a builder image under a scratch dir.

Every change is checked twice: in the merged view the Overlay shows, and in
the scratch directory itself, which must be a plain OCI layer changeset
(changed and new entries at their paths, ``.wh.NAME`` for deletions,
``.wh..wh..opq`` for a directory that replaced an image directory).
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

import builder as b
from imagefs import BuildOptions, ImageTree
from imagefs.errors import MountError
from imagefs.overlay import (BASE_FILE, OWNER_XATTR, TMP_PREFIX, Found, Overlay, base_mismatch, check_overlay_dir,
                             recorded_owner)

MTIME_NS = b.MTIME * 10**9
BIG = bytes(range(256)) * 5000  # 1.25 MB: more than one copy-up chunk
BINARY = bytes(range(256))

LAYER1 = [
    b.dir("etc", mode=0o755, xattrs={"user.dir": b"etc-dir"}),
    b.file("etc/passwd", b"root:x:0:0\n"),
    b.file("etc/conf", b"a=1\n", mode=0o640, uid=1000, gid=1001,
           xattrs={"user.k": b"v", "user.bin": BINARY}),
    b.file("etc/big", BIG, mode=0o600),
    b.file("etc/hl-a", b"linked\n", mode=0o604, uid=7, gid=8),
    b.hardlink("etc/hl-b", "etc/hl-a"),
    b.symlink("etc/link", "passwd", uid=3, gid=4),
    b.fifo("etc/fifo", mode=0o620),
    b.dir("dev", mode=0o755),
    b.device("dev/null", "c", 1, 3, mode=0o666),
    b.dir("data", mode=0o750, uid=5, gid=6),
    b.hardlink("data/hl-c", "etc/hl-a"),
    b.file("data/keep", b"keep\n"),
    b.dir("usr", mode=0o755),
    b.dir("usr/share", mode=0o755),
    b.dir("usr/share/doc", mode=0o755),
    b.dir("usr/share/doc/a", mode=0o755),
    b.file("usr/share/doc/a/README", b"a\n"),
    b.dir("usr/share/doc/b", mode=0o755),
    b.file("usr/share/doc/b/README", b"b\n"),
    b.dir("empty", mode=0o711),
    b.dir("onlywh", mode=0o755),
    b.file("onlywh/gone", b"deleted by layer 2\n"),
    b.dir("opq", mode=0o755),
    b.file("opq/old", b"hidden by layer 2's opaque marker\n"),
    b.file("top", b"a file at the root\n"),
]
LAYER2 = [
    b.whiteout("onlywh/gone"),
    b.dir("opq", mode=0o755),
    b.opaque("opq"),
    b.file("opq/new", b"new\n"),
    b.file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n"),
]
PASSWD = b"root:x:0:0\nuser:x:1000:1000\n"


# -- helpers -------------------------------------------------------------------


class Env:
    """An image tree, a scratch dir and the Overlay over them (reopenable: a 'remount')."""

    def __init__(self, tmp_path: Path, layers: list[list[b.Entry]] | None = None) -> None:
        self.archive = tmp_path / "image.tar"
        b.write_docker_archive(str(self.archive), layers or [LAYER1, LAYER2])
        self.scratch = tmp_path / "scratch"
        self.scratch.mkdir()
        self.trees: list[ImageTree] = []
        self.ov = self.reopen()

    def reopen(self) -> Overlay:
        tree = ImageTree.open(str(self.archive), BuildOptions(use_cache=False))
        self.trees.append(tree)
        self.ov = Overlay(tree, str(self.scratch))
        return self.ov

    def close(self) -> None:
        for t in self.trees:
            t.close()

    # lookups by path
    def f(self, path: str) -> Found:
        found = self.ov.resolve(path.encode())
        assert found is not None, f"{path} is not visible"
        return found

    def exists(self, path: str) -> bool:
        return self.ov.resolve(path.encode()) is not None

    def read(self, path: str) -> bytes:
        f = self.f(path)
        if f.upper:
            return (self.scratch / path).read_bytes()
        return self.ov.read_lower(f, 0, 1 << 30)

    def names(self, path: str) -> list[str]:
        return sorted(n.decode() for n, _ in self.ov.listdir(self.f(path)))

    def view(self) -> dict[str, tuple]:
        """The whole merged tree: path -> (type, mode, uid, gid, content/target, xattrs)."""
        out: dict[str, tuple] = {}

        def walk(d: Found) -> None:
            for name, child in self.ov.listdir(d):
                st = self.ov.stat(child)
                path = child.path.decode()
                if stat.S_ISREG(st.mode):
                    what = self.read(path)
                elif stat.S_ISLNK(st.mode):
                    what = self.ov.readlink(child)
                elif stat.S_ISCHR(st.mode) or stat.S_ISBLK(st.mode):
                    what = st.rdev
                else:
                    what = None
                out[path] = (stat.S_IFMT(st.mode), stat.S_IMODE(st.mode), st.uid, st.gid, what,
                             tuple(sorted(self.ov.xattrs(child).items())))
                if stat.S_ISDIR(st.mode):
                    walk(child)

        walk(self.ov.root())
        return out

    def scratch_paths(self) -> set[str]:
        """DIR's changeset: every path in it but the record of what it is over."""
        out = set()
        for dirpath, dirnames, filenames in os.walk(self.scratch):
            for name in dirnames + filenames:
                out.add(os.path.relpath(os.path.join(dirpath, name), self.scratch))
        return out - {BASE_FILE.decode()}

    def up(self, path: str) -> os.stat_result:
        return os.lstat(self.scratch / path)

    def parent_name(self, path: str) -> tuple[Found, bytes]:
        head, _, name = path.rpartition("/")
        return self.f(head), name.encode()

    # operations by path
    def create(self, path: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Found:
        parent, name = self.parent_name(path)
        fd, found = self.ov.create(parent, name, stat.S_IFREG | mode, os.O_WRONLY, uid, gid)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return found

    def write(self, path: str, data: bytes, offset: int | None = None, flags: int = os.O_WRONLY) -> None:
        fd = self.ov.open_upper(self.f(path), flags)
        try:
            if offset is None:
                os.write(fd, data)
            else:
                os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def mkdir(self, path: str, mode: int = 0o755) -> Found:
        parent, name = self.parent_name(path)
        return self.ov.mkdir(parent, name, stat.S_IFDIR | mode, 0, 0)

    def unlink(self, path: str) -> None:
        parent, name = self.parent_name(path)
        self.ov.unlink(parent, name)

    def rmdir(self, path: str) -> None:
        parent, name = self.parent_name(path)
        self.ov.rmdir(parent, name)

    def rm_r(self, path: str) -> None:
        """``rm -r`` as a program does it: children first, through the merged view."""
        f = self.f(path)
        if self.ov.is_dir(f):
            for name, _ in list(self.ov.listdir(f)):
                self.rm_r(f"{path}/{name.decode()}")
            self.rmdir(path)
        else:
            self.unlink(path)

    def rename(self, src: str, dst: str, noreplace: bool = False) -> Found:
        sp, sname = self.parent_name(src)
        dp, dname = self.parent_name(dst)
        return self.ov.rename(sp, sname, dp, dname, noreplace=noreplace)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    return ei.value.errno


# -- the untouched view --------------------------------------------------------


def test_untouched_overlay_shows_the_image_and_writes_nothing(env: Env) -> None:
    view = env.view()
    assert "onlywh/gone" not in view and "onlywh" in view
    assert "opq/old" not in view and view["opq/new"][4] == b"new\n"
    assert view["etc/passwd"][4] == PASSWD
    assert view["etc/conf"][1:4] == (0o640, 1000, 1001)
    assert dict(view["etc/conf"][5]) == {b"user.k": b"v", b"user.bin": BINARY}
    assert view["etc/link"][4] == b"passwd"
    assert view["dev/null"][4] == os.makedev(1, 3)
    assert env.f("etc/hl-a").lower == env.f("etc/hl-b").lower == env.f("data/hl-c").lower
    assert not any(n.startswith(".wh.") for p in view for n in p.split("/"))
    assert env.scratch_paths() == set()
    assert env.names("") == ["data", "dev", "empty", "etc", "onlywh", "opq", "top", "usr"]


def test_whiteout_names_are_never_visible(env: Env) -> None:
    (env.scratch / ".wh..wh..opq-lookalike").write_bytes(b"")
    assert env.ov.step(env.ov.root(), b".wh.top") is None
    assert env.ov.step(env.ov.root(), b".wh..wh..opq-lookalike") is None
    assert env.ov.resolve(b"onlywh/.wh.gone") is None
    assert env.ov.resolve(b"opq/.wh..wh..opq") is None
    assert env.names("opq") == ["new"]


# -- creating ------------------------------------------------------------------


def test_create_copies_up_the_parent_with_its_attributes(env: Env) -> None:
    env.create("etc/new", b"hello\n", mode=0o640, uid=11, gid=12)
    assert env.read("etc/new") == b"hello\n"
    assert "new" in env.names("etc")
    assert env.scratch_paths() == {"etc", "etc/new"}
    st = env.up("etc/new")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 11, 12)
    d = env.up("etc")
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o755, 0, 0)
    assert os.getxattr(env.scratch / "etc", "user.dir") == b"etc-dir"
    # the other image entries of etc/ are still there, from the image
    assert set(env.names("etc")) >= {"passwd", "conf", "big", "hl-a", "hl-b", "link", "fifo"}


def test_create_in_a_nested_image_directory_copies_up_every_parent(env: Env) -> None:
    env.create("usr/share/doc/a/NEWS", b"n\n")
    assert env.scratch_paths() == {"usr", "usr/share", "usr/share/doc", "usr/share/doc/a", "usr/share/doc/a/NEWS"}
    assert env.names("usr/share/doc/a") == ["NEWS", "README"]
    assert env.read("usr/share/doc/a/README") == b"a\n"
    for p in ("usr", "usr/share", "usr/share/doc", "usr/share/doc/a"):
        assert stat.S_ISDIR(env.up(p).st_mode) and stat.S_IMODE(env.up(p).st_mode) == 0o755


def test_copy_up_keeps_the_mtime_of_parent_directories(env: Env) -> None:
    env.ov.setattr(env.f("usr/share/doc/a/README"), mode=0o100600)
    env.ov.setattr(env.f("etc/conf"), mode=0o100600)
    for p in ("usr", "usr/share", "usr/share/doc", "usr/share/doc/a", "etc"):
        assert env.ov.stat(env.f(p)).mtime_ns == MTIME_NS, f"{p}: mtime changed by a copy-up below it"


@pytest.mark.parametrize("path", ["etc/passwd", "etc", "top", "etc/link", "opq/new"])
def test_create_existing_is_eexist(env: Env, path: str) -> None:
    view = env.view()
    parent, name = env.parent_name(path)
    assert errno_of(env.ov.create, parent, name, 0o100644, os.O_WRONLY, 0, 0) == errno.EEXIST
    assert errno_of(env.ov.mkdir, parent, name, 0o40755, 0, 0) == errno.EEXIST
    assert errno_of(env.ov.symlink, parent, name, b"x", 0, 0) == errno.EEXIST
    assert errno_of(env.ov.mknod, parent, name, stat.S_IFIFO | 0o644, 0, 0, 0) == errno.EEXIST
    assert errno_of(env.ov.link, env.f("data/keep"), parent, name) == errno.EEXIST
    assert not any(".wh." in p for p in env.scratch_paths())
    assert env.view() == view


def test_crash_during_rename_onto_a_deleted_image_directory_keeps_deletions(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target name was the image's, deleted (only .wh.NAME is left): the moved
    directory is opaque before it lands, so no crash lets the image's files show in it."""
    env.unlink("usr/share/doc/a/README")
    env.rmdir("usr/share/doc/a")
    env.mkdir("d1")
    env.create("d1/new", b"n")
    _crash_after(monkeypatch, "unlink", ".wh.a")  # moved in; the target's whiteout not yet dropped
    with pytest.raises(SystemExit):
        env.rename("d1", "usr/share/doc/a")
    monkeypatch.undo()
    env.reopen()
    assert env.names("usr/share/doc/a") == ["new"]


def test_rename_over_an_empty_directory_with_a_name_too_long_for_a_whiteout(env: Env) -> None:
    """No image entry there: nothing to hide, so no .wh.NAME (which could not be made)."""
    long = "L" * 253
    env.mkdir(long)
    env.mkdir("d1")
    env.create("d1/f", b"f")
    env.rename("d1", long)
    assert env.names(long) == ["f"] and not env.exists("d1")


def test_a_dir_with_files_but_no_record_is_taken_with_a_warning(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "upper"
    d.mkdir()
    check_overlay_dir(str(d), str(tmp_path / "mnt"))
    assert not caplog.records  # empty: nothing to say
    (d / "stuff").write_bytes(b"junk")
    check_overlay_dir(str(d), str(tmp_path / "mnt"))
    assert "already holds files, and no record of an imagefs mount" in caplog.text


def test_a_user_who_is_not_root_copies_up_and_the_image_owner_stays(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root, chown to root fails: the copy stays the user's file, the mount still
    shows root's, and commit writes root's."""
    from imagefs.commit import layer_from_dir

    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    def no_chown(*_a: object, **_kw: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chown", no_chown)
    env = Env(tmp_path, [[b.dir("etc", uid=0, gid=0), b.file("etc/conf", b"k=1\n", uid=0, gid=42, mode=0o640)]])
    try:
        env.write("etc/conf", b"k=2\n", offset=0)
        f = env.f("etc/conf")
        assert f.upper and (env.ov.stat(f).uid, env.ov.stat(f).gid) == (0, 42)
        assert (env.ov.stat(env.f("etc")).uid, env.ov.stat(env.f("etc")).gid) == (0, 0)
        assert os.fsencode(OWNER_XATTR) not in env.ov.xattrs(f)
        assert errno_of(env.ov.setxattr, f, os.fsencode(OWNER_XATTR), b"0:0") == errno.EPERM
        buf = io.BytesIO()
        layer_from_dir(str(env.scratch), buf)
        with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
            conf = tf.getmember("etc/conf")
            assert (conf.uid, conf.gid) == (0, 42) and not any(OWNER_XATTR in k for k in conf.pax_headers)
    finally:
        env.close()


def test_dir_is_refused_over_another_layer_or_image(tmp_path: Path) -> None:
    """DIR's changes mean the same only over the tree they were made over."""
    env = Env(tmp_path)
    try:
        assert json.loads((env.scratch / BASE_FILE.decode()).read_text())["layers"] == 2
        tree1 = ImageTree.open(str(env.archive), BuildOptions(use_cache=False, layer=1))
        env.trees.append(tree1)
        Overlay(tree1, str(env.scratch))  # nothing changed yet: DIR may move to another layer
        assert json.loads((env.scratch / BASE_FILE.decode()).read_text())["layers"] == 1
        env.reopen()  # all layers again
        env.create("etc/new", b"n")
        with pytest.raises(MountError, match="made over layer 2 of 2: mount it without --layer"):
            Overlay(tree1, str(env.scratch))
        other = tmp_path / "other.tar"
        b.write_docker_archive(str(other), [[b.file("x", b"other")]])
        tree2 = ImageTree.open(str(other), BuildOptions(use_cache=False))
        env.trees.append(tree2)
        with pytest.raises(MountError, match="holds changes to image sha256:"):
            Overlay(tree2, str(env.scratch))
        # A record that fits but holds more than imagefs writes (a newer version's, or
        # hand-edited) is no refusal: it is rewritten.
        env.reopen()
        record = json.loads((env.scratch / BASE_FILE.decode()).read_text())
        (env.scratch / BASE_FILE.decode()).write_text(json.dumps({**record, "note": "x"}))
        env.reopen()
        assert json.loads((env.scratch / BASE_FILE.decode()).read_text()) == record
        for junk in ("not json", "[" * 100_000 + "]" * 100_000):
            (env.scratch / BASE_FILE.decode()).write_text(junk)
            with pytest.raises(MountError, match="unreadable"):
                env.reopen()
    finally:
        env.close()


def _deep(top: Path, depth: int) -> bytes:
    """``a/a/.../a`` ``depth`` levels below ``top``, made with relative steps (the whole
    path is longer than a path a single call may name)."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("a", dir_fd=fd)
            nxt = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return b"/".join([b"a"] * depth)


def test_a_dir_deeper_than_the_recursion_limit_remounts(tmp_path: Path) -> None:
    """Python 3.11's os.walk and shutil.rmtree recurse once per level; DIR may be 2,000
    levels deep (within PATH_MAX), and a remount clears temporaries all through it."""
    from imagefs.overlay import _remove_tree

    env = Env(tmp_path)
    try:
        deep = _deep(env.scratch, 1100)
        os.mkdir(os.fsencode(env.scratch) + b"/" + deep[:2000] + b"/" + TMP_PREFIX + b"x")
        leftover = os.fsencode(env.scratch) + b"/" + TMP_PREFIX + b"aside"
        os.mkdir(leftover)
        _deep(Path(os.fsdecode(leftover)), 1100)
        env.reopen()
        assert not os.path.lexists(leftover)
        assert not os.path.lexists(os.fsencode(env.scratch) + b"/" + deep[:2000] + b"/" + TMP_PREFIX + b"x")
        assert env.ov.resolve(deep) is not None
        _remove_tree(os.fsencode(env.scratch / "a"))
        assert not (env.scratch / "a").exists()
    finally:
        env.close()


@pytest.mark.parametrize("raw, owner", [(b"0:42", (0, 42)), (b"-5:-5", None), (b"1:4294967296", None),
                                        (b"1", None), (b"a:b", None), (b"4294967295:0", (4294967295, 0))])
def test_recorded_owner_is_one_a_file_can_have(tmp_path: Path, raw: bytes, owner: tuple[int, int] | None) -> None:
    """Whoever can write DIR can set the xattr; commit must not write an owner no tar reader takes."""
    f = tmp_path / "f"
    f.write_bytes(b"")
    try:
        os.setxattr(f, OWNER_XATTR, raw)
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e.strerror}")
    assert recorded_owner(os.fsencode(f)) == owner


@pytest.mark.parametrize("made, layers, why", [
    ({"image": "sha256:a", "layers": 2, "layers_total": 3}, None, None),  # commit: any layer of the image
    ({"image": "sha256:a", "layers": 2, "layers_total": 3}, 2, None),
    ({"image": "sha256:a", "layers": 3, "layers_total": 3}, 2, "made over layer 3 of 3: mount it without --layer"),
    ({"image": "sha256:a", "layers": 1, "layers_total": 3}, 3, "made over layer 1 of 3: mount it with --layer 1"),
    ({"image": "sha256:b", "layers": 3, "layers_total": 3}, None, "changes to image sha256:b, not to sha256:a"),
    ({"image": "sha256:a", "layers": 4, "layers_total": 3}, None, "does not fit the image"),
    ({"image": "sha256:a", "layers": 0, "layers_total": 3}, None, "does not fit the image"),
    ({"image": "sha256:a", "layers": "2", "layers_total": 3}, None, "does not fit the image"),
    ({"image": "sha256:a", "layers": 2, "layers_total": 4}, None, "does not fit the image"),
    ({"image": "sha256:a"}, None, "does not fit the image"),
])
def test_base_mismatch(made: dict[str, object], layers: int | None, why: str | None) -> None:
    """One rule for mount (the layers it shows) and commit (the layers the record names)."""
    got = base_mismatch(made, "sha256:a", 3, layers)
    assert got == why if why is None else why in (got or "")


@pytest.mark.parametrize("name", [b".wh.x", b".wh..wh..opq", b".wh.top", b".wh."])
def test_whiteout_names_cannot_be_created(env: Env, name: bytes) -> None:
    view = env.view()
    root = env.ov.root()
    assert errno_of(env.ov.create, root, name, 0o100644, os.O_WRONLY, 0, 0) == errno.EPERM
    assert errno_of(env.ov.mkdir, root, name, 0o40755, 0, 0) == errno.EPERM
    assert errno_of(env.ov.symlink, root, name, b"target", 0, 0) == errno.EPERM
    assert errno_of(env.ov.mknod, root, name, stat.S_IFIFO | 0o644, 0, 0, 0) == errno.EPERM
    assert errno_of(env.ov.link, env.f("data/keep"), root, name) == errno.EPERM
    assert errno_of(env.ov.rename, root, b"top", root, name) == errno.EPERM
    assert env.exists("top") and not any(".wh." in p for p in env.scratch_paths())
    assert env.view() == view
    assert env.scratch_paths() == set()  # a refused link copies nothing up


def test_create_in_a_non_directory_is_enotdir(env: Env) -> None:
    f = env.f("top")
    assert errno_of(env.ov.create, f, b"x", 0o100644, os.O_WRONLY, 0, 0) == errno.ENOTDIR
    assert errno_of(env.ov.mkdir, f, b"x", 0o40755, 0, 0) == errno.ENOTDIR
    assert env.ov.resolve(b"top/x") is None


def test_name_too_long(env: Env) -> None:
    root = env.ov.root()
    assert errno_of(env.ov.create, root, b"n" * 256, 0o100644, os.O_WRONLY, 0, 0) == errno.ENAMETOOLONG
    assert errno_of(env.ov.mkdir, root, b"n" * 256, 0o40755, 0, 0) == errno.ENAMETOOLONG
    env.create("n" * 251, b"ok")  # .wh.NAME still fits in 255 bytes
    assert env.read("n" * 251) == b"ok"


@pytest.mark.parametrize("op", ["create", "mkdir", "symlink", "mknod", "link", "rename"])
def test_names_of_255_bytes_can_be_created(env: Env, op: str) -> None:
    name = b"n" * 255
    root = env.ov.root()
    if op == "create":
        fd, _ = env.ov.create(root, name, 0o100644, os.O_WRONLY, 0, 0)
        os.close(fd)
    elif op == "mkdir":
        env.ov.mkdir(root, name, 0o40755, 0, 0)
    elif op == "symlink":
        env.ov.symlink(root, name, b"top", 0, 0)
    elif op == "mknod":
        env.ov.mknod(root, name, stat.S_IFIFO | 0o644, 0, 0, 0)
    elif op == "link":
        env.ov.link(env.f("top"), root, name)
    else:
        env.ov.rename(root, b"top", root, name)
    assert env.exists(name.decode())


def test_symlink_mknod_fifo(env: Env) -> None:
    root = env.ov.root()
    env.ov.symlink(root, b"sl", b"etc/passwd", 21, 22)
    env.ov.mknod(root, b"fifo", stat.S_IFIFO | 0o640, 0, 0, 0)
    env.ov.mknod(root, b"zero", stat.S_IFCHR | 0o666, os.makedev(1, 5), 0, 0)
    assert env.ov.readlink(env.f("sl")) == b"etc/passwd"
    assert os.readlink(env.scratch / "sl") == "etc/passwd"
    assert env.up("sl").st_uid == 21
    assert stat.S_ISFIFO(env.up("fifo").st_mode) and stat.S_IMODE(env.up("fifo").st_mode) == 0o640
    assert stat.S_ISCHR(env.up("zero").st_mode) and env.up("zero").st_rdev == os.makedev(1, 5)
    v = env.view()
    assert v["sl"][4] == b"etc/passwd" and stat.S_ISFIFO(v["fifo"][0]) and v["zero"][4] == os.makedev(1, 5)


# -- copy-up -----------------------------------------------------------------------


def test_copy_up_keeps_mode_owner_mtime_xattrs_and_content(env: Env) -> None:
    env.ov.copy_up(env.f("etc/conf"))
    st = env.up("etc/conf")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 1001)
    assert st.st_mtime_ns == MTIME_NS
    assert (env.scratch / "etc/conf").read_bytes() == b"a=1\n"
    assert os.getxattr(env.scratch / "etc/conf", "user.k") == b"v"
    assert os.getxattr(env.scratch / "etc/conf", "user.bin") == BINARY
    assert env.f("etc/conf").upper
    assert env.scratch_paths() == {"etc", "etc/conf"}
    assert not any(n.startswith(TMP_PREFIX.decode()) for n in os.listdir(env.scratch / "etc"))


def test_copy_up_of_a_large_file_is_complete(env: Env) -> None:
    env.write("etc/big", b"X", offset=len(BIG) - 1)
    assert env.read("etc/big") == BIG[:-1] + b"X"
    assert stat.S_IMODE(env.up("etc/big").st_mode) == 0o600


def test_copy_up_of_symlink_fifo_device_and_directory(env: Env) -> None:
    for p in ("etc/link", "etc/fifo", "dev/null", "usr/share/doc/a"):
        env.ov.copy_up(env.f(p))
    link = env.up("etc/link")
    assert stat.S_ISLNK(link.st_mode) and os.readlink(env.scratch / "etc/link") == "passwd"
    assert (link.st_uid, link.st_gid) == (3, 4) and link.st_mtime_ns == MTIME_NS
    fifo = env.up("etc/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    null = env.up("dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3) and stat.S_IMODE(null.st_mode) == 0o666
    d = env.up("usr/share/doc/a")
    assert stat.S_ISDIR(d.st_mode) and d.st_mtime_ns == MTIME_NS
    # copying up a directory does not copy its children: they still come from the image
    assert os.listdir(env.scratch / "usr/share/doc/a") == []
    assert env.names("usr/share/doc/a") == ["README"]
    assert env.read("usr/share/doc/a/README") == b"a\n"


def test_hard_link_group_is_copied_up_together(env: Env) -> None:
    env.write("etc/hl-b", b"LINKED", offset=0)
    ups = {p: env.up(p) for p in ("etc/hl-a", "etc/hl-b", "data/hl-c")}
    assert len({st.st_ino for st in ups.values()}) == 1, "the names of one image inode must stay one inode"
    assert ups["etc/hl-a"].st_nlink == 3
    for p in ups:
        assert env.read(p) == b"LINKED\n"
        assert env.f(p).upper
    st = ups["data/hl-c"]
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o604, 7, 8)
    # data/ was copied up to hold the other name, with its own attributes
    d = env.up("data")
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o750, 5, 6)
    assert env.names("data") == ["hl-c", "keep"]


def test_hard_link_group_copy_up_skips_deleted_and_replaced_names(env: Env) -> None:
    env.unlink("data/hl-c")
    env.unlink("etc/hl-a")
    env.create("etc/hl-a", b"another file\n")
    env.write("etc/hl-b", b"X", offset=0)
    assert env.read("etc/hl-b") == b"Xinked\n"
    assert env.read("etc/hl-a") == b"another file\n"
    assert not env.exists("data/hl-c")
    assert not os.path.exists(env.scratch / "data/hl-c")
    assert env.up("etc/hl-b").st_nlink == 1


def test_copy_up_is_idempotent(env: Env) -> None:
    f = env.ov.copy_up(env.f("etc/passwd"))
    (env.scratch / "etc/passwd").write_bytes(b"changed\n")
    env.ov.copy_up(f)
    env.ov.copy_up(env.f("etc/passwd"))
    assert env.read("etc/passwd") == b"changed\n"


# -- setattr, xattrs, open_upper ---------------------------------------------------------


def test_setattr_chmod_chown_truncate_utimens(env: Env) -> None:
    env.ov.setattr(env.f("etc/passwd"), mode=0o100600)
    env.ov.setattr(env.f("top"), uid=42, gid=43)
    env.ov.setattr(env.f("etc/big"), size=10)
    env.ov.setattr(env.f("data/keep"), atime_ns=5 * 10**9, mtime_ns=6 * 10**9 + 7)
    env.ov.setattr(env.f("usr/share/doc"), mode=0o40700)
    assert stat.S_IMODE(env.up("etc/passwd").st_mode) == 0o600 and env.read("etc/passwd") == PASSWD
    assert (env.up("top").st_uid, env.up("top").st_gid) == (42, 43)
    assert env.read("etc/big") == BIG[:10]
    assert env.up("data/keep").st_mtime_ns == 6 * 10**9 + 7 and env.up("data/keep").st_atime_ns == 5 * 10**9
    assert stat.S_IMODE(env.ov.stat(env.f("usr/share/doc")).mode) == 0o700
    assert env.names("usr/share/doc") == ["a", "b"]
    st = env.ov.stat(env.f("etc/passwd"))
    assert st.size == len(PASSWD) and st.mtime_ns == MTIME_NS


def test_truncate_to_zero_and_extend(env: Env) -> None:
    env.ov.setattr(env.f("etc/conf"), size=0)
    assert env.read("etc/conf") == b""
    env.ov.setattr(env.f("top"), size=100)
    assert env.read("top") == b"a file at the root\n" + bytes(100 - 19)


def test_setxattr_and_removexattr_copy_up(env: Env) -> None:
    env.ov.setxattr(env.f("top"), b"user.new", b"value")
    env.ov.setxattr(env.f("usr"), b"user.d", b"dir")
    env.ov.removexattr(env.f("etc/conf"), b"user.k")
    assert env.ov.xattrs(env.f("top")) == {b"user.new": b"value"}
    assert env.ov.xattrs(env.f("usr")) == {b"user.d": b"dir"}
    assert env.ov.xattrs(env.f("etc/conf")) == {b"user.bin": BINARY}
    assert os.getxattr(env.scratch / "top", "user.new") == b"value"
    assert os.listxattr(env.scratch / "etc/conf") == ["user.bin"]
    assert env.read("etc/conf") == b"a=1\n"


def test_open_upper_for_reading_does_not_copy_up(env: Env) -> None:
    env.ov.copy_up(env.f("top"))
    fd = env.ov.open_upper(env.f("top"), os.O_RDONLY)
    os.close(fd)
    assert env.scratch_paths() == {"top"}


def test_open_upper_for_writing_copies_up_and_o_trunc_empties(env: Env) -> None:
    fd = env.ov.open_upper(env.f("etc/passwd"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new\n")
    os.close(fd)
    assert env.read("etc/passwd") == b"new\n"
    fd = env.ov.open_upper(env.f("top"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"more\n")
    os.close(fd)
    assert env.read("top") == b"a file at the root\nmore\n"


def test_sparse_write_at_a_large_offset(env: Env) -> None:
    off = 1 << 30
    env.write("top", b"end", offset=off)
    st = env.up("top")
    assert st.st_size == off + 3
    assert st.st_blocks * 512 < 1 << 20, "a write at a large offset must leave a hole, not write zeros"
    with open(env.scratch / "top", "rb") as f:
        assert f.read(19) == b"a file at the root\n"
        f.seek(off - 5)
        assert f.read() == bytes(5) + b"end"


# -- deleting ----------------------------------------------------------------------


def test_unlink_image_file_writes_a_whiteout(env: Env) -> None:
    env.unlink("etc/passwd")
    assert not env.exists("etc/passwd") and "passwd" not in env.names("etc")
    assert env.scratch_paths() == {"etc", "etc/.wh.passwd"}
    wh = env.up("etc/.wh.passwd")
    assert stat.S_ISREG(wh.st_mode) and wh.st_size == 0


def test_unlink_new_file_leaves_no_trace(env: Env) -> None:
    env.create("fresh", b"x")
    env.unlink("fresh")
    assert not env.exists("fresh")
    assert env.scratch_paths() == set()


def test_unlink_copied_up_file_removes_the_copy_and_whites_out(env: Env) -> None:
    env.write("top", b"X", offset=0)
    env.unlink("top")
    assert not env.exists("top")
    assert env.scratch_paths() == {".wh.top"}


def test_unlink_symlink_fifo_device(env: Env) -> None:
    for p in ("etc/link", "etc/fifo", "dev/null"):
        env.unlink(p)
        assert not env.exists(p)
    assert {"etc/.wh.link", "etc/.wh.fifo", "dev/.wh.null"} <= env.scratch_paths()
    assert env.read("etc/passwd") == PASSWD  # the link's target is untouched


def test_unlink_errors(env: Env) -> None:
    parent, name = env.parent_name("etc/nothing")
    assert errno_of(env.ov.unlink, parent, name) == errno.ENOENT
    assert errno_of(env.ov.unlink, env.ov.root(), b"etc") == errno.EISDIR
    p, n = env.parent_name("onlywh/gone")  # deleted by the image itself
    assert errno_of(env.ov.unlink, p, n) == errno.ENOENT
    assert errno_of(env.ov.unlink, env.f("opq"), b"old") == errno.ENOENT  # hidden by the opaque marker
    assert env.scratch_paths() == set()


def test_rmdir_counts_image_entries(env: Env) -> None:
    root = env.ov.root()
    assert errno_of(env.ov.rmdir, root, b"etc") == errno.ENOTEMPTY
    assert errno_of(env.ov.rmdir, env.f("usr/share/doc"), b"a") == errno.ENOTEMPTY
    assert errno_of(env.ov.rmdir, env.f("opq"), b"x") == errno.ENOENT
    assert errno_of(env.ov.rmdir, root, b"top") == errno.ENOTDIR
    assert errno_of(env.ov.rmdir, root, b"nothing") == errno.ENOENT
    assert errno_of(env.ov.rmdir, root, b"opq") == errno.ENOTEMPTY  # opq/new (the old one is hidden)
    assert env.exists("etc/passwd") and env.scratch_paths() == set()


def test_rmdir_of_a_directory_the_image_emptied(env: Env) -> None:
    env.rmdir("onlywh")  # its only image entry is deleted by layer 2
    env.rmdir("empty")
    assert not env.exists("onlywh") and not env.exists("empty")
    assert env.scratch_paths() == {".wh.onlywh", ".wh.empty"}


def test_rmdir_counts_whiteouts_as_deleted_entries(env: Env) -> None:
    env.unlink("usr/share/doc/a/README")
    assert env.names("usr/share/doc/a") == []
    assert "usr/share/doc/a/.wh.README" in env.scratch_paths()
    env.rmdir("usr/share/doc/a")  # empty in the merged view, although the image has README there
    assert not env.exists("usr/share/doc/a")
    assert env.names("usr/share/doc") == ["b"]
    paths = env.scratch_paths()
    assert "usr/share/doc/.wh.a" in paths
    assert not any(p.startswith("usr/share/doc/a/") or p == "usr/share/doc/a" for p in paths)
    # the opaque directory: its only visible entry is new in layer 2
    env.unlink("opq/new")
    env.rmdir("opq")
    assert not env.exists("opq") and ".wh.opq" in env.scratch_paths()


def test_rmdir_with_one_entry_left_is_enotempty(env: Env) -> None:
    env.unlink("data/keep")
    assert errno_of(env.ov.rmdir, env.ov.root(), b"data") == errno.ENOTEMPTY  # data/hl-c is still there
    env.create("usr/share/doc/b/extra")
    env.unlink("usr/share/doc/b/README")
    assert errno_of(env.ov.rmdir, env.f("usr/share/doc"), b"b") == errno.ENOTEMPTY  # extra, in DIR only


def test_rm_r_of_an_image_tree_leaves_one_whiteout(env: Env) -> None:
    env.rm_r("usr")
    assert not env.exists("usr")
    assert env.scratch_paths() == {".wh.usr"}


def test_rmdir_of_a_new_directory_leaves_no_trace(env: Env) -> None:
    env.mkdir("newdir")
    env.create("newdir/f")
    assert errno_of(env.ov.rmdir, env.ov.root(), b"newdir") == errno.ENOTEMPTY
    env.unlink("newdir/f")
    env.rmdir("newdir")
    assert env.scratch_paths() == set()


# -- recreating ----------------------------------------------------------------------


def test_mkdir_new_directory_is_not_opaque(env: Env) -> None:
    env.mkdir("etc/new.d", mode=0o750)
    assert env.names("etc/new.d") == []
    assert env.scratch_paths() == {"etc", "etc/new.d"}
    assert stat.S_IMODE(env.up("etc/new.d").st_mode) == 0o750


def test_recreated_directory_is_opaque(env: Env) -> None:
    env.rm_r("usr/share/doc")
    env.mkdir("usr/share/doc")
    assert env.names("usr/share/doc") == []
    paths = env.scratch_paths()
    assert "usr/share/doc/.wh..wh..opq" in paths
    assert "usr/share/.wh.doc" not in paths, "the whiteout is replaced by the opaque directory"
    env.create("usr/share/doc/f", b"f")
    assert env.names("usr/share/doc") == ["f"]
    # the image's old children do not come back by name either
    assert not env.exists("usr/share/doc/a")
    assert env.ov.resolve(b"usr/share/doc/a/README") is None


def test_recreated_nested_directory_stays_empty(env: Env) -> None:
    env.rm_r("usr/share/doc")
    env.mkdir("usr/share/doc")
    env.mkdir("usr/share/doc/a")
    assert env.names("usr/share/doc/a") == []
    env.reopen()
    assert env.names("usr/share/doc/a") == [] and env.names("usr/share/doc") == ["a"]


def test_directory_replacing_a_file_is_opaque_and_file_replacing_a_directory(env: Env) -> None:
    env.unlink("top")
    env.mkdir("top")
    assert env.names("top") == []
    assert "top/.wh..wh..opq" in env.scratch_paths() and ".wh.top" not in env.scratch_paths()
    env.rm_r("usr/share/doc/b")
    env.create("usr/share/doc/b", b"now a file\n")
    assert env.read("usr/share/doc/b") == b"now a file\n"
    assert not env.ov.is_dir(env.f("usr/share/doc/b"))
    assert "usr/share/doc/.wh.b" not in env.scratch_paths()


def test_recreate_file_after_delete_drops_the_whiteout(env: Env) -> None:
    env.unlink("etc/passwd")
    env.create("etc/passwd", b"fresh\n", mode=0o600)
    assert env.read("etc/passwd") == b"fresh\n"
    assert env.scratch_paths() == {"etc", "etc/passwd"}
    env.unlink("etc/link")
    env.ov.symlink(env.f("etc"), b"link", b"elsewhere", 0, 0)
    assert env.ov.readlink(env.f("etc/link")) == b"elsewhere"
    assert "etc/.wh.link" not in env.scratch_paths()


# -- links ---------------------------------------------------------------------------


def test_link_to_an_image_file_copies_it_up(env: Env) -> None:
    env.ov.link(env.f("top"), env.f("etc"), b"top-link")
    assert env.up("top").st_ino == env.up("etc/top-link").st_ino
    assert env.read("etc/top-link") == b"a file at the root\n"
    assert env.scratch_paths() == {"top", "etc", "etc/top-link"}


def test_link_errors(env: Env) -> None:
    assert errno_of(env.ov.link, env.f("usr"), env.ov.root(), b"usr2") == errno.EPERM
    assert errno_of(env.ov.link, env.f("top"), env.ov.root(), b"etc") == errno.EEXIST
    assert errno_of(env.ov.link, env.f("top"), env.f("top"), b"x") == errno.ENOTDIR
    assert env.scratch_paths() == set()  # refused before the source is copied up


def test_link_over_a_deleted_name(env: Env) -> None:
    env.unlink("data/keep")
    env.ov.link(env.f("top"), env.f("data"), b"keep")
    assert env.read("data/keep") == b"a file at the root\n"
    assert "data/.wh.keep" not in env.scratch_paths()


# -- rename --------------------------------------------------------------------------


def test_rename_image_file_over_image_file(env: Env) -> None:
    env.rename("etc/passwd", "top")
    assert env.read("top") == PASSWD and not env.exists("etc/passwd")
    assert env.scratch_paths() == {"etc", "etc/.wh.passwd", "top"}
    assert env.up("top").st_mtime_ns == MTIME_NS


def test_rename_new_file_over_image_file_and_back(env: Env) -> None:
    env.create("etc/passwd.new", b"new passwd\n")
    env.rename("etc/passwd.new", "etc/passwd")
    assert env.read("etc/passwd") == b"new passwd\n" and not env.exists("etc/passwd.new")
    assert env.scratch_paths() == {"etc", "etc/passwd"}


def test_rename_to_a_deleted_name_and_to_a_new_name(env: Env) -> None:
    env.unlink("data/keep")
    env.rename("top", "data/keep")
    env.rename("etc/conf", "data/conf2")
    assert env.read("data/keep") == b"a file at the root\n"
    assert env.read("data/conf2") == b"a=1\n"
    assert env.ov.xattrs(env.f("data/conf2"))[b"user.k"] == b"v"
    paths = env.scratch_paths()
    assert {".wh.top", "etc/.wh.conf", "data/keep", "data/conf2"} <= paths
    assert "data/.wh.keep" not in paths


def test_rename_a_hard_linked_image_file_keeps_the_group(env: Env) -> None:
    env.rename("etc/hl-a", "hl-moved")
    assert not env.exists("etc/hl-a")
    assert env.up("hl-moved").st_ino == env.up("etc/hl-b").st_ino == env.up("data/hl-c").st_ino
    env.write("hl-moved", b"L", offset=0)
    assert env.read("etc/hl-b") == env.read("data/hl-c") == b"Linked\n"


def test_rename_of_an_image_directory_is_exdev(env: Env) -> None:
    assert errno_of(env.rename, "usr/share/doc/a", "usr/share/doc/c") == errno.EXDEV
    assert errno_of(env.rename, "etc", "etc2") == errno.EXDEV
    env.create("usr/share/doc/a/new")  # also once copied up (a merged directory)
    assert errno_of(env.rename, "usr/share/doc/a", "usr/share/doc/c") == errno.EXDEV
    assert env.exists("usr/share/doc/a/README")


def test_rename_new_directory(env: Env) -> None:
    env.mkdir("d1")
    env.create("d1/f", b"f")
    env.rename("d1", "usr/d2")
    assert env.read("usr/d2/f") == b"f" and not env.exists("d1")
    assert env.scratch_paths() == {"usr", "usr/d2", "usr/d2/f"}


def test_rename_new_directory_over_an_empty_image_directory_is_opaque(env: Env) -> None:
    env.mkdir("d1")
    env.create("d1/f", b"f")
    env.rename("d1", "empty")
    assert env.names("empty") == ["f"]
    assert "empty/.wh..wh..opq" in env.scratch_paths()
    env.rm_r("usr/share/doc/b")  # an image directory with contents, deleted
    env.mkdir("d3")
    env.rename("d3", "usr/share/doc/b")
    assert env.names("usr/share/doc/b") == []
    assert "usr/share/doc/b/.wh..wh..opq" in env.scratch_paths()
    assert "usr/share/doc/.wh.b" not in env.scratch_paths()


def test_rename_over_a_directory_emptied_by_whiteouts(env: Env) -> None:
    env.unlink("usr/share/doc/a/README")
    env.mkdir("d1")
    env.create("d1/g", b"g")
    env.rename("d1", "usr/share/doc/a")
    assert env.names("usr/share/doc/a") == ["g"]
    assert env.ov.resolve(b"usr/share/doc/a/README") is None
    assert "usr/share/doc/a/.wh..wh..opq" in env.scratch_paths()


def test_rename_errors(env: Env) -> None:
    assert errno_of(env.rename, "nothing", "x") == errno.ENOENT
    assert errno_of(env.rename, "top", "etc") == errno.EISDIR
    env.mkdir("d1")
    assert errno_of(env.rename, "d1", "top") == errno.ENOTDIR
    assert errno_of(env.rename, "d1", "etc") == errno.ENOTEMPTY
    assert errno_of(env.rename, "d1", "opq") == errno.ENOTEMPTY
    assert errno_of(env.rename, "d1", "d1/sub") == errno.EINVAL
    assert errno_of(env.rename, "top", "etc/passwd", noreplace=True) == errno.EEXIST
    assert env.read("etc/passwd") == PASSWD and env.read("top") == b"a file at the root\n"


def test_rename_to_itself_is_a_no_op(env: Env) -> None:
    env.rename("top", "top")
    assert env.read("top") == b"a file at the root\n" and env.scratch_paths() == set()


def test_rename_noreplace_to_a_free_name(env: Env) -> None:
    env.rename("top", "top2", noreplace=True)
    assert env.read("top2") == b"a file at the root\n" and not env.exists("top")


def test_rename_recreated_directory(env: Env) -> None:
    """A directory made where an image directory was deleted is all DIR's (opaque): kernel
    overlayfs renames it like any new directory, it is not an image directory."""
    env.rm_r("usr/share/doc/a")
    env.mkdir("usr/share/doc/a")
    env.create("usr/share/doc/a/f", b"f")
    env.rename("usr/share/doc/a", "moved")
    assert env.read("moved/f") == b"f" and not env.exists("usr/share/doc/a")


# -- remount and crash safety ------------------------------------------------------------


def test_remount_shows_the_same_tree(env: Env) -> None:
    env.create("etc/new", b"n\n")
    env.write("etc/passwd", b"X", offset=0)
    env.unlink("top")
    env.rm_r("usr/share/doc/a")
    env.rm_r("usr/share/doc/b")
    env.mkdir("usr/share/doc/b")
    env.create("usr/share/doc/b/x")
    env.ov.setxattr(env.f("etc/conf"), b"user.more", b"1")
    env.ov.setattr(env.f("data/keep"), mode=0o100600, uid=9)
    env.write("etc/hl-a", b"H", offset=0)
    env.ov.symlink(env.f("data"), b"sl", b"../top", 0, 0)
    env.ov.mknod(env.f("data"), b"p", stat.S_IFIFO | 0o600, 0, 0, 0)
    env.unlink("opq/new")
    env.mkdir("opq/again")
    before = env.view()
    env.reopen()
    assert env.view() == before


def test_leftover_temporaries_are_ignored_and_cleaned(env: Env) -> None:
    env.create("etc/new", b"n")
    tmp = TMP_PREFIX.decode()
    (env.scratch / f"{tmp}1.0").write_bytes(b"half a copy")
    (env.scratch / "etc" / f"{tmp}1.1").write_bytes(b"half a copy")
    (env.scratch / f"{tmp}1.2").mkdir()
    (env.scratch / f"{tmp}1.2" / "inside").write_bytes(b"x")
    os.symlink("nowhere", env.scratch / "etc" / f"{tmp}1.3")
    before_names = env.names("") , env.names("etc")
    assert not any(n.startswith(".wh.") for n in before_names[0] + before_names[1])
    assert env.ov.resolve(f"{tmp}1.0".encode()) is None
    env.reopen()
    assert env.scratch_paths() == {"etc", "etc/new"}
    assert (env.names(""), env.names("etc")) == before_names


def _crash_after(monkeypatch: pytest.MonkeyPatch, name: str, target: str) -> None:
    """Make ``os.NAME`` raise SystemExit (a simulated crash) when its last argument ends with
    ``target``, or, for ``PREFIX*``, when that argument's last component starts with PREFIX."""
    real = getattr(os, name)

    def hit(arg: object) -> bool:
        path = os.fsencode(arg)  # type: ignore[call-overload]
        if target.endswith("*"):
            return os.path.basename(path).startswith(target[:-1].encode())
        return path.endswith(target.encode())

    def crashing(*a, **kw):
        if hit(a[-1]):
            raise SystemExit("simulated crash")
        return real(*a, **kw)

    monkeypatch.setattr(os, name, crashing)


def test_crash_during_unlink_of_a_copied_up_file_shows_the_old_state(env: Env,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env.write("top", b"CHANGED", offset=0)
    _crash_after(monkeypatch, "unlink", "/top")  # the whiteout is written, the copy not yet removed
    with pytest.raises(SystemExit):
        env.unlink("top")
    monkeypatch.undo()
    env.reopen()
    assert env.read("top") == b"CHANGEDat the root\n"


def test_crash_during_copy_up_leaves_the_image_version(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_after(monkeypatch, "rename", "etc/big")  # the copy is written, not yet renamed into place
    with pytest.raises(SystemExit):
        env.write("etc/big", b"X", offset=0)
    monkeypatch.undo()
    # a SIGKILL would leave the temporary copy behind (the exception handler removed it)
    (env.scratch / "etc" / (TMP_PREFIX.decode() + "99.0")).write_bytes(BIG[:1000])
    assert env.read("etc/big") == BIG
    env.reopen()
    assert env.read("etc/big") == BIG
    assert env.scratch_paths() == {"etc"}


def test_crash_during_mkdir_leaves_nothing_visible(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.rm_r("usr/share/doc/a")
    _crash_after(monkeypatch, "rename", "doc/a")
    with pytest.raises(SystemExit):
        env.mkdir("usr/share/doc/a")
    monkeypatch.undo()
    env.reopen()
    assert not env.exists("usr/share/doc/a")
    assert env.scratch_paths() == {"usr", "usr/share", "usr/share/doc", "usr/share/doc/.wh.a"}


# -- the scratch directory is a layer ----------------------------------------------------------


def test_scratch_dir_is_a_valid_layer(env: Env, tmp_path: Path) -> None:
    """Applying DIR as a layer on top of the image (by imagefs's own reader) gives the overlay view."""
    import subprocess

    env.create("etc/new", b"n\n")
    env.write("etc/passwd", b"X", offset=0)
    env.unlink("top")
    env.rm_r("usr/share/doc/a")
    env.mkdir("usr/share/doc/a")
    env.create("usr/share/doc/a/x", b"x")
    env.write("etc/hl-b", b"H", offset=0)
    env.ov.setxattr(env.f("etc/conf"), b"user.more", b"1")
    view = env.view()
    layer = tmp_path / "layer.tar"
    subprocess.run(["tar", "-C", str(env.scratch), "--xattrs", "--numeric-owner", "-cf", str(layer), "."],
                   check=True, timeout=60)
    out = tmp_path / "stacked.tar"
    b.write_docker_archive(str(out), [LAYER1, LAYER2, layer.read_bytes()])
    with ImageTree.open(str(out), BuildOptions(use_cache=False)) as tree:
        os.mkdir(tmp_path / "empty-scratch")
        other = Overlay(tree, str(tmp_path / "empty-scratch"))
        e2 = Env.__new__(Env)
        e2.ov, e2.scratch = other, tmp_path / "empty-scratch"
        assert e2.view() == view


# -- check_overlay_dir -------------------------------------------------------------------------


def test_check_overlay_dir(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    made = check_overlay_dir(str(tmp_path / "new" / "scratch"), str(mnt))
    assert os.path.isdir(made) and os.path.isabs(made)
    with pytest.raises(MountError, match="inside the mountpoint"):
        check_overlay_dir(str(mnt / "sub"), str(mnt))
    with pytest.raises(MountError, match="inside the mountpoint"):
        check_overlay_dir(str(mnt), str(mnt))
    with pytest.raises(MountError, match="mountpoint .* is inside"):
        check_overlay_dir(str(tmp_path), str(mnt))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(MountError):
        check_overlay_dir(str(tmp_path / "file"), str(mnt))


@pytest.mark.parametrize(("call", "suffix", "state"), [
    ("rename", "usr/share/doc/a", "target hidden"),  # its DIR copy moved aside, d1 not yet moved
    ("unlink", ".wh.a", "new"),  # moved; the whiteout that hid the target not yet dropped
    ("rmdir", TMP_PREFIX.decode() + "*", "new"),  # the old copy half removed
], ids=["before-the-move", "after-the-move", "while-cleaning-up"])
def test_crash_during_rename_over_an_emptied_directory_keeps_deletions(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                                       call: str, suffix: str, state: str) -> None:
    """A directory renamed over an image directory whose files were all deleted:
    a crash at any step must not bring those files back.  Between hiding the
    target and moving the source the view has neither (an empty directory gone
    early), never the image's old files."""
    env.unlink("usr/share/doc/a/README")
    env.mkdir("d1")
    env.create("d1/new", b"n")
    _crash_after(monkeypatch, call, suffix)
    with pytest.raises(SystemExit):
        env.rename("d1", "usr/share/doc/a")
    monkeypatch.undo()
    env.reopen()
    assert not env.exists("usr/share/doc/a/README"), "a deleted file came back after the crash"
    if state == "target hidden":
        assert not env.exists("usr/share/doc/a") and env.read("d1/new") == b"n"
    else:
        assert env.read("usr/share/doc/a/new") == b"n" and not env.exists("d1")
    assert not [p for p in env.scratch.rglob("*") if p.name.startswith(TMP_PREFIX.decode())], "temporaries left"
