"""Property: ImageTree's merged view equals extracting the layers onto a real directory.

Hypothesis generates 1-4 layers over a small name space (a, a/b, a/b/c, ...)
of files, directories, symlinks, FIFOs, hard links, whiteouts (plain, and the
overlay driver's type-'0'-with-a-bogus-linkname form) and opaque markers.  The
reference applies them bottom-up to a temporary directory the way
containerd/umoci extraction does:

* per layer, first that layer's whiteouts and opaque markers, against what the
  lower layers made (``.wh.NAME``: rm -rf NAME; ``.wh..wh..opq``: empty the
  directory);
* then the entries in member order: missing parents are created 0755; a
  non-directory replaces whatever is at its path (rm -rf); a directory over a
  directory only updates its mode; a directory over a non-directory replaces
  it; a hard link is ``link(2)`` to the target path as it is on disk at that
  moment, skipped if the target is missing or a directory.

Paths are resolved without following symlinks, both for whiteouts and for
parents (a whiteout below a symlink or a file is harmless; a parent that is a
symlink or a file is replaced by a directory).  That is imagefs.merge's
documented choice and what layer-by-layer overlay extraction shows; umoci and
containerd's naive applier resolve parent symlinks inside the root instead,
so the generated cases deliberately do not depend on that corner.

Compared for every path: type, mode, size and content (files), symlink target,
st_nlink of non-directories, and hard-link grouping (same st_ino in the
reference <=> same inode number in ImageTree); directory st_nlink must be
2 + subdirectories.

Profiles: ``union-ci`` (default; 200 derandomized examples, a few seconds) and
``union-random`` (1,000 fresh random examples, off by default):
``IMAGEFS_UNION_PROFILE=union-random pytest tests/test_union_property.py``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
from unittest import mock

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from builder import ByteReader, Entry, dir, fifo, file, hardlink, layer_tar, opaque, symlink, whiteout, write_docker_archive
from conftest import require_c_half
from imagefs import BuildOptions, ImageTree
from imagefs.index import ROOT_INO
from imagefs.merge import merge
from imagefs.tarscan import scan

settings.register_profile(
    "union-ci", max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "union-random", max_examples=1000, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("IMAGEFS_UNION_PROFILE", "union-ci")

# tmpfs when there is one: on a disk, the reference's rmdir()s and the index's fsync()
# are most of an example's time.
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None

NAMES = ["a", "a/b", "a/b/c", "a/d", "b", "b/a", "b/a/c", "c"]
SYMLINK_TARGETS = ["a", "a/b", "../a", "/b/a", "c", ".", "nowhere"]
CONTENTS = [b"", b"x", b"hello\n", bytes(range(256)) * 5]
# Owner-accessible modes only, so the reference works unprivileged too.
FILE_MODES = [0o644, 0o600, 0o755, 0o640, 0o4755]
DIR_MODES = [0o755, 0o700, 0o750, 0o2775]

# -- generation ------------------------------------------------------------------

names = st.sampled_from(NAMES)


def _link_targets(path: str) -> list[str]:
    # Not itself nor into its own subtree: containerd and umoci remove the path first
    # and then fail the whole layer; no answer is "right", so it is not generated.
    return [t for t in NAMES if t != path and not t.startswith(path + "/")]


files = st.tuples(st.just("file"), names, st.sampled_from(CONTENTS), st.sampled_from(FILE_MODES))
hardlinks = st.tuples(st.just("hardlink"), names, st.just(""))  # the target is drawn in layers_strategy
ops = st.one_of(
    files, files, files,  # repeated: more files (and so more hard links that find their target)
    hardlinks, hardlinks,
    st.tuples(st.just("dir"), names, st.sampled_from(DIR_MODES)),
    st.tuples(st.just("symlink"), names, st.sampled_from(SYMLINK_TARGETS)),
    st.tuples(st.just("fifo"), names),
    st.tuples(st.just("whiteout"), names, st.sampled_from([None] + NAMES)),  # None: plain; else the bogus linkname
    st.tuples(st.just("opaque"), st.sampled_from([""] + NAMES)),
)


@st.composite
def layers_strategy(draw: st.DrawFn) -> list[list[tuple]]:
    """1-4 layers; a hard link targets, half of the time, a name some earlier entry wrote."""
    layers = []
    written: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        layer = []
        for op in draw(st.lists(ops, max_size=8)):
            if op[0] == "hardlink":
                allowed = _link_targets(op[1])
                likely = [t for t in written if t in allowed]
                pool = likely if likely and draw(st.booleans()) else allowed
                op = ("hardlink", op[1], draw(st.sampled_from(pool)))
            if op[0] in ("file", "symlink", "fifo", "hardlink"):
                written.append(op[1])
            layer.append(op)
        layers.append(layer)
    return layers


def to_entry(op: tuple) -> Entry:
    kind = op[0]
    if kind == "file":
        return file(op[1], op[2], mode=op[3])
    if kind == "dir":
        return dir(op[1], mode=op[2])
    if kind == "symlink":
        return symlink(op[1], op[2])
    if kind == "hardlink":
        return hardlink(op[1], op[2])
    if kind == "fifo":
        return fifo(op[1])
    if kind == "whiteout":
        e = whiteout(op[1])
        # overlay driver: a regular-file header (mode 0) whose linkname names an unrelated path
        return e if op[2] is None else dataclasses.replace(e, linkname=op[2])
    if kind == "opaque":
        return opaque(op[1])
    raise AssertionError(op)


# -- the reference: extraction onto a real directory ------------------------------------


def _lstat(root: str, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` below ``root``, reached through real directories only (no symlink followed)."""
    cur = root
    parts = rel.split("/")
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        try:
            st_ = os.lstat(cur)
        except FileNotFoundError:
            return None
        if i < len(parts) - 1 and not stat.S_ISDIR(st_.st_mode):
            return None
    return st_


def _rm_rf(path: str) -> None:
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _mkdir(path: str, mode: int) -> None:
    os.mkdir(path)
    os.chmod(path, mode)  # exact mode: no umask, no setgid inherited from the parent


def _ensure_parents(root: str, rel: str) -> None:
    parts = rel.split("/")[:-1]
    cur = root
    for part in parts:
        cur = os.path.join(cur, part)
        try:
            st_ = os.lstat(cur)
        except FileNotFoundError:
            _mkdir(cur, 0o755)
            continue
        if not stat.S_ISDIR(st_.st_mode):
            os.unlink(cur)
            _mkdir(cur, 0o755)


def reference_apply(root: str, layers: list[list[tuple]]) -> None:
    for layer in layers:
        for op in layer:
            if op[0] == "whiteout":
                if _lstat(root, op[1]) is not None:
                    _rm_rf(os.path.join(root, op[1]))
            elif op[0] == "opaque":
                d = os.path.join(root, op[1]) if op[1] else root
                st_ = _lstat(root, op[1]) if op[1] else os.lstat(root)
                if st_ is not None and stat.S_ISDIR(st_.st_mode):
                    for child in os.listdir(d):
                        _rm_rf(os.path.join(d, child))
        for op in layer:
            kind, rel = op[0], op[1]
            if kind in ("whiteout", "opaque"):
                continue
            _ensure_parents(root, rel)
            path = os.path.join(root, rel)
            existing = _lstat(root, rel)
            if kind == "dir":
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    os.chmod(path, op[2])
                else:
                    if existing is not None:
                        _rm_rf(path)
                    _mkdir(path, op[2])
                continue
            if kind == "hardlink":
                target = _lstat(root, op[2])
                if target is None or stat.S_ISDIR(target.st_mode):
                    continue  # skipped: nothing (or a directory) to link to
                if existing is not None:
                    _rm_rf(path)
                os.link(os.path.join(root, op[2]), path, follow_symlinks=False)
                continue
            if existing is not None:
                _rm_rf(path)
            if kind == "file":
                with open(path, "wb") as f:
                    f.write(op[2])
                os.chmod(path, op[3])
            elif kind == "symlink":
                os.symlink(op[2], path)
            elif kind == "fifo":
                os.mkfifo(path)
                os.chmod(path, 0o644)
            else:
                raise AssertionError(op)


# -- the two views, in one shape ---------------------------------------------------------


def _type(mode: int) -> str:
    return {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p"}[stat.S_IFMT(mode)]


def _groups(inodes: dict[str, int]) -> dict[str, frozenset[str]]:
    by_ino: dict[int, set[str]] = {}
    for p, ino in inodes.items():
        by_ino.setdefault(ino, set()).add(p)
    return {p: frozenset(by_ino[ino]) for p, ino in inodes.items()}


def view_of_disk(root: str) -> tuple[dict, dict]:
    out: dict[str, tuple] = {}
    inodes: dict[str, int] = {}
    todo = [("", root)]
    while todo:
        rel, d = todo.pop()
        for name in os.listdir(d):
            p = os.path.join(d, name)
            rp = f"{rel}/{name}" if rel else name
            st_ = os.lstat(p)
            t = _type(st_.st_mode)
            if t == "d":
                out[rp] = (t, stat.S_IMODE(st_.st_mode), None, None, None)
                todo.append((rp, p))
                continue
            if t == "f":
                with open(p, "rb") as f:
                    data = f.read()
                out[rp] = (t, stat.S_IMODE(st_.st_mode), st_.st_size, data, st_.st_nlink)
            elif t == "l":
                out[rp] = (t, stat.S_IMODE(st_.st_mode), None, os.readlink(p).encode(), st_.st_nlink)
            else:
                out[rp] = (t, stat.S_IMODE(st_.st_mode), None, None, st_.st_nlink)
            inodes[rp] = st_.st_ino
    return out, _groups(inodes)


def view_of_tree(tree: ImageTree) -> tuple[dict, dict]:
    out: dict[str, tuple] = {}
    inodes: dict[str, int] = {}
    todo = [(ROOT_INO, "")]
    while todo:
        ino, rel = todo.pop()
        subdirs = 0
        for _pos, name, child in tree.entries(ino):
            rp = f"{rel}/{name.decode()}" if rel else name.decode()
            a = tree.attr(child)
            t = _type(a.mode)
            if t == "d":
                subdirs += 1
                out[rp] = (t, stat.S_IMODE(a.mode), None, None, None)
                todo.append((child, rp))
                continue
            if t == "f":
                out[rp] = (t, stat.S_IMODE(a.mode), a.size, tree.read(child, 0, a.size + 1), a.nlink)
            elif t == "l":
                out[rp] = (t, stat.S_IMODE(a.mode), None, tree.readlink(child), a.nlink)
            else:
                out[rp] = (t, stat.S_IMODE(a.mode), None, None, a.nlink)
            inodes[rp] = child
        assert tree.attr(ino).nlink == 2 + subdirs, f"directory /{rel}: st_nlink is not 2 + subdirectories"
    return out, _groups(inodes)


@settings(settings.get_profile(PROFILE))
@given(layers=layers_strategy())
def test_imagetree_matches_extraction(layers: list[list[tuple]]) -> None:
    with (tempfile.TemporaryDirectory(prefix="imagefs-union-", dir=_SCRATCH) as tmp,
          mock.patch.object(tempfile, "tempdir", _SCRATCH or tempfile.gettempdir())):  # the index's temp file
        archive = os.path.join(tmp, "image.tar")
        write_docker_archive(archive, [[to_entry(op) for op in layer] for layer in layers])
        root = os.path.join(tmp, "rootfs")
        os.mkdir(root)
        reference_apply(root, layers)
        want, want_groups = view_of_disk(root)
        with ImageTree.open(archive, BuildOptions(use_cache=False)) as tree:
            got, got_groups = view_of_tree(tree)
        note(f"reference: {sorted(want.items())}")
        note(f"imagefs:   {sorted(got.items())}")
        assert got == want
        assert got_groups == want_groups


@settings(settings.get_profile(PROFILE))
@given(layers=layers_strategy())
def test_c_index_writer_agrees_with_the_python_one(layers: list[list[tuple]]) -> None:
    """imagefs._indexfast lays out the merged tree of any generated image byte
    for byte as index._layout, the Python reference, does."""
    from imagefs import index

    require_c_half(index, "_indexfast")
    tars = [layer_tar([to_entry(op) for op in layer]) for layer in layers]
    root = merge([list(scan(ByteReader(t), len(t))) for t in tars])
    assert tuple(index._indexfast.layout(root, index._encode_extras)) == tuple(
        index._layout(root, index._encode_extras))
