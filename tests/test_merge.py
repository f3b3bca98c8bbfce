"""The union rules of imagefs.merge, one table row per rule.

Each case builds 1-3 layers with the test archive builder, writes a docker
archive, opens it with `ImageTree` and compares the *whole* merged tree with
the expected one (`dump`: path -> (type, mode, uid, gid, size, content or
target)).  Rules that need more than the dump (inode sharing, st_nlink,
mtimes, xattrs) add a ``check`` callable.

The rules are those of merge.py's docstring (OCI image spec ``layer.md`` as
containerd/umoci extract it) plus the real-world quirks listed in
/work/shared/corpus/README.md ("Quirks of the tools").
"""

from __future__ import annotations

import os
import random
import stat
import struct
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pytest

from builder import Entry, dir, fifo, file, hardlink, opaque, raw_header, symlink, whiteout, write_docker_archive
from conftest import c_half_or_python
from imagefs import BuildOptions, ImageTree
from imagefs.index import ROOT_INO, Index, write_index
from imagefs.merge import Node, implicit_dir
from imagefs.tarscan import Member

Tree = dict[str, tuple]

_TYPES = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
          stat.S_IFCHR: "c", stat.S_IFBLK: "b"}


@pytest.fixture(autouse=True, params=["c", "python"])
def index_writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every rule is checked through both index writers: the C one
    (imagefs._indexfast) and the pure-Python reference."""
    from imagefs import index

    return c_half_or_python(request, monkeypatch, index, "_indexfast")


# -- helpers -------------------------------------------------------------------


def open_tree(tmp_path, layers: Sequence[Sequence[Entry] | bytes]) -> ImageTree:
    path = tmp_path / "image.tar"
    write_docker_archive(str(path), layers)
    return ImageTree.open(str(path), BuildOptions(use_cache=False))


def dump(tree: ImageTree) -> Tree:
    """Every path of the merged tree (root excluded) -> (type, mode, uid, gid, size, data).

    ``size`` and ``data`` (content) are for regular files; ``data`` is the
    target for symlinks; both are None otherwise.
    """
    out: Tree = {}
    todo = [(ROOT_INO, b"")]
    while todo:
        ino, prefix = todo.pop()
        for _pos, name, child in tree.entries(ino):
            path = prefix + name
            a = tree.attr(child)
            kind = _TYPES[stat.S_IFMT(a.mode)]
            size = data = None
            if kind == "f":
                size = a.size
                data = tree.read(child, 0, a.size + 1)
            elif kind == "l":
                data = tree.readlink(child)
            elif kind == "d":
                todo.append((child, path + b"/"))
            out[path.decode("utf-8", "surrogateescape")] = (kind, stat.S_IMODE(a.mode), a.uid, a.gid, size, data)
    return out


def F(data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> tuple:
    return ("f", mode, uid, gid, len(data), data)


def D(mode: int = 0o755, uid: int = 0, gid: int = 0) -> tuple:
    return ("d", mode, uid, gid, None, None)


def L(target: str, uid: int = 0, gid: int = 0) -> tuple:
    return ("l", 0o777, uid, gid, None, target.encode())


def P(mode: int = 0o644) -> tuple:
    return ("p", mode, 0, 0, None, None)


def ino_of(tree: ImageTree, path: str) -> int:
    ino = tree.resolve(path.encode())
    assert ino, f"{path} is missing"
    return ino


def same_inode(*paths: str) -> Callable[[ImageTree], None]:
    """All ``paths`` are one inode whose st_nlink is exactly len(paths)."""
    def check(tree: ImageTree) -> None:
        inos = {p: ino_of(tree, p) for p in paths}
        assert len(set(inos.values())) == 1, inos
        assert tree.attr(inos[paths[0]]).nlink == len(paths)
    return check


def alone(*paths: str) -> Callable[[ImageTree], None]:
    """Each of ``paths`` is its own inode with st_nlink 1 (no hard-link group)."""
    def check(tree: ImageTree) -> None:
        inos = [ino_of(tree, p) for p in paths]
        assert len(set(inos)) == len(inos)
        for p, ino in zip(paths, inos):
            assert tree.attr(ino).nlink == 1, p
    return check


def both(*checks: Callable[[ImageTree], None]) -> Callable[[ImageTree], None]:
    def check(tree: ImageTree) -> None:
        for c in checks:
            c(tree)
    return check


def raw_layer(*headers: bytes) -> bytes:
    """A layer made of hand-built headers (data-less members) and the end-of-archive blocks."""
    return b"".join(headers) + bytes(1024)


@dataclass
class Case:
    id: str
    layers: list[list[Entry] | bytes]
    expected: Tree
    check: Callable[[ImageTree], None] | None = None
    xfail: str | None = None
    marks: list = field(default_factory=list)


# -- checks that need more than the dump ----------------------------------------


def _topmost_dir_attrs(tree: ImageTree) -> None:
    ino = ino_of(tree, "d")
    a = tree.attr(ino)
    assert a.mtime_ns == 1_700_000_222 * 10**9
    assert tree.xattrs(ino) == {b"user.top": b"2"}  # the lower directory's xattr went with its entry


def _dir_nlink(tree: ImageTree) -> None:
    # root: ., .., d  -- d: ., .., a, b (plain file, symlink and fifo do not count)
    assert tree.attr(ROOT_INO).nlink == 3
    assert tree.attr(ino_of(tree, "d")).nlink == 4
    assert tree.attr(ino_of(tree, "d/a")).nlink == 2
    assert tree.attr(ino_of(tree, "d/b")).nlink == 3
    assert tree.attr(ino_of(tree, "d/b/c")).nlink == 2


def _dir_nlink_after_whiteout(tree: ImageTree) -> None:
    assert tree.attr(ino_of(tree, "d")).nlink == 3  # d/a went, d/c became a file: only d/b is left
    assert tree.attr(ROOT_INO).nlink == 3


def _lower_link_reads_lower_bytes(tree: ImageTree) -> None:
    same_inode("a", "b")(tree)
    ino = ino_of(tree, "b")
    assert tree.read(ino, 0, 100) == b"lower bytes"
    assert tree.read(ino, 6, 100) == b"bytes"


# -- the table ---------------------------------------------------------------------

CASES = [
    # .wh.NAME hides ...
    Case("whiteout-hides-file",
         [[file("a", b"A"), file("b", b"B")], [whiteout("a")]],
         {"b": F(b"B")}),
    Case("whiteout-hides-dir-and-subtree",
         [[dir("d"), file("d/x", b"x"), dir("d/e"), file("d/e/y", b"y"), symlink("d/e/l", "x"), file("k")],
          [whiteout("d")]],
         {"k": F()}),
    Case("whiteout-hides-symlink-not-its-target",
         [[symlink("s", "t"), file("t", b"T")], [whiteout("s")]],
         {"t": F(b"T")}),
    Case("whiteout-hides-nested-name-only",
         [[dir("d", mode=0o750), file("d/x"), file("d/y", b"y")], [dir("d", mode=0o750), whiteout("d/x")]],
         {"d": D(0o750), "d/y": F(b"y")}),
    Case("whiteout-hides-fifo",
         [[fifo("p"), file("q")], [whiteout("p")]],
         {"q": F()}),
    # a whiteout never hides an entry of its own layer, whatever the member order
    Case("whiteout-before-own-entry",
         [[file("foo", b"old")], [whiteout("foo"), file("foo", b"new")]],
         {"foo": F(b"new")}),
    Case("whiteout-after-own-entry",
         [[file("foo", b"old")], [file("foo", b"new"), whiteout("foo")]],
         {"foo": F(b"new")}),
    Case("whiteout-after-own-dir-hides-only-lower-children",
         [[dir("d"), file("d/x")], [dir("d", mode=0o700), file("d/y", b"y"), whiteout("d")]],
         {"d": D(0o700), "d/y": F(b"y")}),
    Case("whiteout-in-first-layer-is-harmless-and-invisible",
         [[whiteout("ghost"), file("a", b"A"), whiteout("a")]],
         {"a": F(b"A")}),
    # whiteout entries never appear (every case also asserts no .wh. name anywhere)
    Case("whiteout-and-opaque-names-never-appear",
         [[dir("d"), file("d/x")], [opaque("d"), whiteout("d/x"), whiteout("nothing"), opaque("")]],
         {}),
    # opaque directories
    Case("opaque-hides-lower-children-keeps-dir",
         [[dir("d", mode=0o700, uid=5, gid=6), file("d/x"), dir("d/sub"), file("d/sub/y"), file("other", b"o")],
          [opaque("d"), file("d/new", b"n")]],
         {"d": D(0o700, 5, 6), "d/new": F(b"n"), "other": F(b"o")}),
    Case("opaque-keeps-same-layer-children-in-any-order",
         [[dir("d"), file("d/x"), file("d/keep", b"lower")],
          [dir("d", mode=0o750), file("d/new", b"n"), file("d/keep", b"upper"), opaque("d")]],
         {"d": D(0o750), "d/new": F(b"n"), "d/keep": F(b"upper")}),
    Case("opaque-only-hides-lower-layers-not-deeper-same-layer",
         [[dir("d"), dir("d/e"), file("d/e/x")],
          [file("d/e/y", b"y"), opaque("d")]],
         {"d": D(), "d/e": D(), "d/e/y": F(b"y")}),
    Case("opaque-at-root",
         [[file("a"), dir("b"), file("b/c")], [opaque(""), file("z", b"z")]],
         {"z": F(b"z")}),
    Case("opaque-of-missing-dir-is-harmless",
         [[file("a")], [opaque("nothere")]],
         {"a": F()}),
    Case("opaque-under-file-is-harmless",
         [[file("f", b"F")], [opaque("f")]],
         {"f": F(b"F")}),
    Case("opaque-marker-on-file-to-dir",  # overlayfs marks a dir created over a file opaque
         [[file("etc/motd", b"M")], [dir("etc"), dir("etc/motd"), opaque("etc/motd"), file("etc/motd/10", b"x")]],
         {"etc": D(), "etc/motd": D(), "etc/motd/10": F(b"x")}),
    # directories in several layers
    Case("dir-in-several-layers-topmost-attrs-lower-children",
         [[dir("d", mode=0o700, uid=1, gid=2, mtime=1_700_000_111, xattrs={"user.low": b"1"}), file("d/x", b"x")],
          [dir("d", mode=0o751, uid=3, gid=4, mtime=1_700_000_222, xattrs={"user.top": b"2"}), file("d/y", b"y")],
          [file("d/z", b"z")]],
         {"d": D(0o751, 3, 4), "d/x": F(b"x"), "d/y": F(b"y"), "d/z": F(b"z")},
         check=_topmost_dir_attrs),
    # type changes
    Case("file-replaces-lower-dir-and-subtree",
         [[dir("d"), file("d/x"), dir("d/e"), file("d/e/y")], [file("d", b"F", mode=0o600)]],
         {"d": F(b"F", 0o600)}),
    Case("dir-replaces-lower-file",
         [[file("d", b"F")], [dir("d", mode=0o711), file("d/x", b"x")]],
         {"d": D(0o711), "d/x": F(b"x")}),
    Case("symlink-replaces-file",
         [[file("a", b"A")], [symlink("a", "/etc/passwd")]],
         {"a": L("/etc/passwd")}),
    Case("symlink-replaces-dir-and-subtree",
         [[dir("d"), file("d/x"), dir("d/e")], [symlink("d", "/opt")]],
         {"d": L("/opt")}),
    Case("file-replaces-lower-symlink",
         [[symlink("etc/os-release", "../usr/lib/os-release")], [file("etc/os-release", b"ID=x\n")]],
         {"etc": D(), "etc/os-release": F(b"ID=x\n")}),
    Case("dir-replaces-lower-symlink",
         [[symlink("rmt", "/etc/rmt")], [dir("rmt"), file("rmt/x")]],
         {"rmt": D(), "rmt/x": F()}),
    # within one layer the later member of a path wins
    Case("same-layer-later-file-wins",
         [[file("a", b"first", mode=0o600), file("a", b"second", mode=0o640)]],
         {"a": F(b"second", 0o640)}),
    Case("same-layer-later-dir-attrs-win",
         [[dir("d", mode=0o700), file("d/x"), dir("d", mode=0o755, uid=9)]],
         {"d": D(0o755, 9), "d/x": F()}),
    Case("same-layer-later-file-replaces-dir",
         [[dir("d"), file("d/x"), file("d", b"F")]],
         {"d": F(b"F")}),
    Case("same-layer-later-symlink-replaces-file",
         [[file("a", b"A"), symlink("a", "b")]],
         {"a": L("b")}),
    # implicit parent directories
    Case("implicit-parents-0755-root",
         [[file("x/y/z", b"z", uid=7)]],
         {"x": D(), "x/y": D(), "x/y/z": F(b"z", uid=7)}),
    Case("implicit-parent-described-later-in-layer",
         [[file("x/y", b"y"), dir("x", mode=0o700, uid=3)]],
         {"x": D(0o700, 3), "x/y": F(b"y")}),
    Case("implicit-parent-under-existing-lower-dir-keeps-it",
         [[dir("x", mode=0o750, uid=2), file("x/a")], [file("x/b", b"b")]],
         {"x": D(0o750, 2), "x/a": F(), "x/b": F(b"b")}),
    Case("implicit-parent-replaces-lower-file",  # merge.py: a non-directory in the way becomes a directory
         [[file("x", b"F")], [file("x/y", b"y")]],
         {"x": D(), "x/y": F(b"y")}),
    # hard links
    Case("hardlink-same-layer-shares-inode",
         [[file("a", b"A", mode=0o600, uid=5), hardlink("b", "a")]],
         {"a": F(b"A", 0o600, 5), "b": F(b"A", 0o600, 5)},
         check=same_inode("a", "b")),
    Case("hardlink-across-dirs-and-chain",
         [[file("x/a", b"A"), hardlink("y/b", "x/a"), hardlink("z", "y/b")]],
         {"x": D(), "x/a": F(b"A"), "y": D(), "y/b": F(b"A"), "z": F(b"A")},
         check=same_inode("x/a", "y/b", "z")),
    Case("hardlink-target-deleted-by-later-layer-keeps-content",
         [[file("a", b"A"), hardlink("b", "a")], [whiteout("a")]],
         {"b": F(b"A")},
         check=alone("b")),
    Case("hardlink-target-replaced-by-later-layer-keeps-content",
         [[file("a", b"A"), hardlink("b", "a")], [file("a", b"new")]],
         {"a": F(b"new"), "b": F(b"A")},
         check=alone("a", "b")),
    Case("hardlink-to-lower-layer-file",
         [[file("a", b"lower bytes", mode=0o755)], [hardlink("b", "a")]],
         {"a": F(b"lower bytes", 0o755), "b": F(b"lower bytes", 0o755)},
         check=_lower_link_reads_lower_bytes),
    Case("hardlink-names-inode-at-that-moment",  # target replaced later in the same layer
         [[file("a", b"old"), hardlink("b", "a"), file("a", b"new")]],
         {"a": F(b"new"), "b": F(b"old")},
         check=alone("a", "b")),
    Case("later-layer-replacing-a-linked-name-breaks-group",
         [[file("a", b"A"), hardlink("b", "a"), hardlink("c", "a")], [file("b", b"B")]],
         {"a": F(b"A"), "b": F(b"B"), "c": F(b"A")},
         check=both(same_inode("a", "c"), alone("b"))),
    Case("later-layer-whiteout-of-a-linked-name-shrinks-group",
         [[file("a", b"A"), hardlink("b", "a"), hardlink("c", "a")], [whiteout("b")]],
         {"a": F(b"A"), "c": F(b"A")},
         check=same_inode("a", "c")),
    Case("hardlink-to-missing-target-skipped",
         [[file("keep"), hardlink("b", "nope")]],
         {"keep": F()}),
    Case("hardlink-to-dir-skipped",
         [[dir("d"), hardlink("b", "d")]],
         {"d": D()}),
    Case("hardlink-to-target-whited-out-in-same-layer-skipped",  # whiteouts apply first
         [[file("a", b"A")], [hardlink("b", "a"), whiteout("a")]],
         {}),
    Case("hardlink-to-symlink-links-the-symlink",
         [[symlink("s", "target"), hardlink("h", "s")]],
         {"s": L("target"), "h": L("target")},
         check=same_inode("s", "h")),
    # harmless whiteouts
    Case("whiteout-of-missing-name-is-harmless",
         [[file("a", b"A")], [whiteout("zz"), whiteout("q/r/s")]],
         {"a": F(b"A")}),
    Case("whiteout-under-lower-file-is-harmless",
         [[file("f", b"F")], [whiteout("f/x")]],
         {"f": F(b"F")}),
    Case("whiteout-under-lower-symlink-is-harmless",
         [[dir("d"), file("d/x", b"x"), symlink("s", "d"), symlink("abs", "/d")], [whiteout("s/x"), whiteout("abs/x")]],
         {"d": D(), "d/x": F(b"x"), "s": L("d"), "abs": L("/d")}),
    # aufs metadata
    Case("aufs-metadata-names-dropped",
         [[file("a"), dir(".wh..wh.plnk", mode=0o700), file(".wh..wh.aufs"), dir(".wh..wh.orph", mode=0o700)]],
         {"a": F()}),
    Case("aufs-plnk-contents-dropped",
         [[file("a"), dir(".wh..wh.plnk", mode=0o700), file(".wh..wh.plnk/1234.5678", b"linked")]],
         {"a": F()}),
    Case("aufs-plnk-hardlink-resolves",  # Docker's UnpackLayer links to the plnk file's content
         [[dir(".wh..wh.plnk", mode=0o700), file(".wh..wh.plnk/1234.5678", b"linked"), hardlink("usr/x", ".wh..wh.plnk/1234.5678")]],
         {"usr": D(), "usr/x": F(b"linked")}),
    # overlay-driver quirks
    Case("overlay-whiteout-is-type-0-with-bogus-linkname",
         [[file("etc/cron", b"C"), file("etc/issue", b"I"), file("etc/alternatives/which", b"W"), file("keep", b"K")],
          raw_layer(raw_header(b"etc/alternatives/.wh.which", mode=0),
                    raw_header(b"etc/.wh.cron", mode=0, linkname=b"etc/alternatives/which"),
                    raw_header(b"etc/.wh.issue", mode=0, linkname=b"keep"))],
         {"etc": D(), "etc/alternatives": D(), "keep": F(b"K")},
         check=alone("keep")),
    Case("whiteout-with-hardlink-type-is-still-a-whiteout",
         [[file("a", b"A"), file("b", b"B")],
          raw_layer(raw_header(b".wh.x", mode=0), raw_header(b".wh.a", typeflag=b"1", linkname=b".wh.x"))],
         {"b": F(b"B")}),
    Case("non-opaque-dir-over-lower-whiteout-keeps-hiding",
         [[dir("a"), file("a/x", b"x")], [whiteout("a")], [dir("a"), file("a/y", b"y")]],
         {"a": D(), "a/y": F(b"y")}),
    Case("non-opaque-implicit-dir-over-lower-whiteout-keeps-hiding",
         [[file("a/x", b"x")], [whiteout("a")], [file("a/y", b"y")]],
         {"a": D(), "a/y": F(b"y")}),
    Case("vfs-per-entry-whiteouts-instead-of-opaque",
         [[dir("a"), dir("a/dir"), file("a/dir/f1"), file("a/dir/f2"), dir("a/dir/sub"), file("a/dir/sub/s")],
          [dir("a"), dir("a/dir"), whiteout("a/dir/f2"), whiteout("a/dir/sub"), file("a/dir/f1", b"new")]],
         {"a": D(), "a/dir": D(), "a/dir/f1": F(b"new")}),
    # directory link counts
    Case("dir-nlink-is-2-plus-subdirs",
         [[dir("d"), dir("d/a"), dir("d/b"), dir("d/b/c"), file("d/f"), symlink("d/l", "a"), fifo("d/p")]],
         {"d": D(), "d/a": D(), "d/b": D(), "d/b/c": D(), "d/f": F(), "d/l": L("a"), "d/p": P()},
         check=_dir_nlink),
    Case("dir-nlink-after-whiteout-and-type-change",
         [[dir("d"), dir("d/a"), dir("d/b"), dir("d/c")], [whiteout("d/a"), file("d/c", b"now a file")]],
         {"d": D(), "d/b": D(), "d/c": F(b"now a file")},
         check=_dir_nlink_after_whiteout),
]


def _params():
    for c in CASES:
        marks = list(c.marks)
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_union_rule(tmp_path, case: Case) -> None:
    with open_tree(tmp_path, case.layers) as tree:
        got = dump(tree)
        assert not [p for p in got if p.rsplit("/", 1)[-1].startswith(".wh.")], "whiteout names leaked"
        assert got == case.expected
        if case.check is not None:
            case.check(tree)


# -- rules that are not about one small tree --------------------------------------------


def test_a_symlink_is_0777_whatever_its_header_says(tmp_path) -> None:
    """Linux has no other mode for a symlink: tar, podman and umoci extract one as
    0777 (lrwxrwxrwx), so the mount shows that too, not the header's 0644."""
    tree = open_tree(tmp_path, [[file("t", b"x"), symlink("l644", "t", mode=0o644), symlink("l000", "t", mode=0)]])
    got = dump(tree)
    assert got["l644"][:2] == got["l000"][:2] == ("l", 0o777)
    assert got["t"][:2] == ("f", 0o644)


def test_whiteout_member_order_is_irrelevant(tmp_path) -> None:
    """Every permutation of one layer's members gives the same tree (whiteouts apply first)."""
    lower = [dir("d"), file("d/x", b"x"), file("d/y", b"y"), file("f", b"f")]
    upper = [whiteout("d/x"), file("d/x", b"X2"), opaque("d"), file("d/z", b"z"), whiteout("f")]
    expected = {"d": D(), "d/x": F(b"X2"), "d/z": F(b"z")}
    rng = random.Random(1234)
    for i in range(6):
        order = upper[:]
        rng.shuffle(order)
        sub = tmp_path / str(i)
        sub.mkdir()
        with open_tree(sub, [lower, order]) as tree:
            assert dump(tree) == expected, [e.path for e in order]


def test_big_directory_listed_fully_and_binary_searched(tmp_path) -> None:
    """100,000 children: readdir gives all of them in name order, lookups are O(log n)."""
    n = 100_000
    names = [b"n%d" % i for i in range(n)]  # not zero-padded: byte order != numeric order
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    # The tree is built directly (merge() of 100,000 members is the slow part and not under test).
    root = Node(implicit_dir(b""), -1)
    big_dir = Node(implicit_dir(b"big"), 0)
    root.children[b"big"] = big_dir
    member = Member(b"big/x", stat.S_IFREG, 0o644, 0, 0, 0, 0, b"", 0, 0, (), None)
    for name in shuffled:
        big_dir.children[name] = Node(member, 0)  # one Node per name: 100,000 distinct inodes
    idx_path = str(tmp_path / "big.idx")
    write_index(root, {}, idx_path)
    idx = Index(idx_path)
    try:
        big = idx.lookup(ROOT_INO, b"big")
        assert big and stat.S_ISDIR(idx.attr(big).mode)
        listed = list(idx.entries(big))
        assert [pos for pos, _n, _i in listed] == list(range(n))
        assert [name for _p, name, _i in listed] == sorted(names)
        inos = {name: ino for _p, name, ino in listed}
        assert len(set(inos.values())) == n
        # resuming a listing from any position continues exactly there
        assert [name for _p, name, _i in idx.entries(big, 54_321)][:3] == sorted(names)[54_321:54_324]

        calls = 0
        real_name = idx._name

        def counting(pos: int):
            nonlocal calls
            calls += 1
            return real_name(pos)

        idx._name = counting  # type: ignore[method-assign]
        probes = [names[0], names[-1], sorted(names)[0], sorted(names)[-1]] + random.Random(3).sample(names, 2000)
        for name in probes:
            calls = 0
            assert idx.lookup(big, name) == inos[name]
            assert calls <= 18  # ceil(log2(100_000)) + 1
        for missing in (b"", b"a", b"n", b"n-1", b"n99999x", b"n5000000", b"zzz", b"n1\x00"):
            calls = 0
            assert idx.lookup(big, missing) == 0
            assert calls <= 18
    finally:
        idx.close()


@pytest.mark.parametrize("index_writer", ["c"], indirect=True)
def test_c_index_writer_gives_the_python_bytes(index_writer: str) -> None:
    """Symlinks, sparse maps, xattrs, hard links, empty names of the pool, the
    root's own attributes: the C sections equal the Python reference's."""
    from imagefs import index

    def member(path: bytes, kind: int, **kw: object) -> Member:
        fields = dict(path=path, kind=kind, mode=0o644, uid=1, gid=2, size=0, mtime_ns=-5, linkname=b"", rdev=0,
                      offset=512, xattrs=(), sparse=None)
        fields.update(kw)
        return Member(**fields)  # type: ignore[arg-type]

    root = Node(member(b"", stat.S_IFDIR, mode=0o700, xattrs=((b"user.root", b"r"),)), 0)
    d = Node(member(b"d", stat.S_IFDIR, uid=2**32 - 1), 1)
    d.touched = 3
    root.children.update({b"d": d, b"z": Node(member(b"z", stat.S_IFLNK, linkname=b""), 2)})
    shared = Node(member(b"d/f", stat.S_IFREG, size=10, xattrs=((b"security.capability", b"\0\1"),
                                                               (b"user.k", b""))), 1)
    holes = Node(member(b"d/s", stat.S_IFREG, size=1 << 40, sparse=((0, 1), (1 << 39, 4096))), 1)
    empty_map = Node(member(b"d/e", stat.S_IFREG, size=100, sparse=()), 1)
    d.children.update({b"f": shared, b"g": shared, b"s": holes, b"e": empty_map,
                       b"l": Node(member(b"d/l", stat.S_IFLNK, linkname=b"../z" * 50), 1),
                       b"c": Node(member(b"d/c", stat.S_IFCHR, rdev=os.makedev(4, 64)), 1),
                       b"\xff": Node(member(b"d/\xff", stat.S_IFIFO), 1), b"sub": Node(implicit_dir(b"d/sub"), -1)})
    root.children[b"again"] = shared  # a hard link across directories
    c = index._indexfast.layout(root, index._encode_extras)
    assert tuple(c) == tuple(index._layout(root, index._encode_extras))
    assert c[3:] == (10, 11, 2)  # inodes, names, inodes with xattrs


@pytest.mark.parametrize("index_writer", ["c"], indirect=True)
def test_c_index_writer_refuses_what_struct_refuses(index_writer: str) -> None:
    from imagefs import index

    root = Node(implicit_dir(b""), -1)
    root.children[b"big"] = Node(Member(b"big", stat.S_IFREG, 0o644, 2**32, 0, 0, 0, b"", 0, 0, (), None), 0)
    with pytest.raises(OverflowError):
        index._indexfast.layout(root, index._encode_extras)
    with pytest.raises(struct.error):
        index._layout(root, index._encode_extras)


@pytest.mark.parametrize("layers, want", [
    ([[dir("a"), file("a/x", b"1"), dir("b"), hardlink("b/y", "a/x"), dir("c"), file("c/z", b"z"), dir("e"),
       dir("a/sub"), hardlink("a/sub/w", "a/x")]], ["a", "a/sub", "b"]),
    ([[dir("a"), file("a/x", b"1"), dir("b"), file("b/y", b"2"), dir("e")]], []),  # none
    # a link whose other name a later layer deleted: one name left, no directory holds a link
    ([[dir("a"), file("a/x", b"1"), dir("b"), hardlink("b/y", "a/x")], [whiteout("b/y")]], []),
    ([[file("x", b"1"), hardlink("y", "x"), dir("e")]], [""]),  # the root
])
def test_dirs_with_hard_links(tmp_path: object, layers: list[list[Entry]], want: list[str]) -> None:
    """What the overlay mount lists in Python rather than from the index (rwops._holds_hard_links)."""
    path = os.path.join(str(tmp_path), "a.tar")
    write_docker_archive(path, layers)
    tree = ImageTree.open(path, BuildOptions(use_cache=False))
    try:
        assert tree.index.dirs_with_hard_links() == frozenset(tree.resolve(p.encode()) for p in want)
    finally:
        tree.close()
