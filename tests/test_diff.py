"""`imagefs diff` (issue 5): change kinds, output forms, exit status, shared layers, ARCHIVE@N,
`mount --layer N`, directory and mount sides, agreement with `diff -r`, and the corpus oracles.

Every CLI run is a subprocess (`conftest.run_cli`) with a private ``--cache-dir``; every
mount goes through the `mounted` fixture, which unmounts whatever the test mounted.
The expected lines are written out by hand from the archives each test builds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

import builder as b
from conftest import TIMEOUT, Mounter, assert_one_line_error, corpus_file, run_cli
from imagefs import BuildOptions, ImageTree
from imagefs.diff import DiffOptions, TreeSource, diff, shared_layers

# -- helpers ---------------------------------------------------------------------------------


class Differ:
    """``imagefs diff`` with a private cache directory; results memoised per argument list."""

    def __init__(self, cli: list[str], cache: Path) -> None:
        self.cli = cli
        self.cache = cache
        self._memo: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}

    def __call__(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        key = tuple(map(str, args))
        if key not in self._memo:
            self._memo[key] = run_cli(self.cli, "diff", "--cache-dir", self.cache, *key)
        return self._memo[key]


@pytest.fixture(scope="module")
def idiff(imagefs_bin: list[str], tmp_path_factory: pytest.TempPathFactory) -> Differ:
    return Differ(imagefs_bin, tmp_path_factory.mktemp("diff-cache"))


def lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return r.stdout.splitlines()


def records(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.stdout.splitlines()]


_LINE = re.compile(r"^([ACD]) (/.*?)(?:  \((.*)\))?$")


def parse(line: str) -> tuple[str, str, str | None]:
    m = _LINE.match(line)
    assert m, f"not a diff line: {line!r}"
    return m.group(1), m.group(2), m.group(3)


def unescape(path: str) -> bytes:
    """The raw bytes of an escaped path (``\\xHH`` for bytes outside 0x20-0x7e and ``\\``)."""
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), path.encode("ascii"))


def tree_order(path: str) -> list[bytes]:
    """Paths compared component by component: parents first, each directory's entries by name."""
    return unescape(path).split(b"/")


# -- the pair of archives with one change of each kind ------------------------------------------

MT = b.MTIME
A_LAYER = [
    b.dir("d"), b.file("d/f", b"hello"),                     # unchanged
    b.file("same", b"aaaa"),                                 # content, same size
    b.file("sz", b"12"),                                     # size
    b.file("m", b"m", mode=0o644),                           # mode
    b.file("o", b"o"),                                       # owner
    b.symlink("l", "t1"),                                    # symlink target
    b.file("f2d", b"x"),                                     # file -> dir
    b.dir("d2l"), b.file("d2l/x", b"x"),                     # dir -> symlink
    b.file("xa", b"x", xattrs={"user.a": b"1"}),             # xattr value (file)
    b.dir("dx", xattrs={"user.q": b"1"}),                    # xattr value (dir)
    b.device("dev", "c", 1, 3),                              # device number
    b.file("mt", b"m"),                                      # mtime only
    b.dir("gone"), b.file("gone/a", b"A"), b.dir("gone/sub"), b.file("gone/sub/b", b"BB"),  # deleted dir
    b.file("del", b"z"),                                     # deleted file
    b.symlink("lk", "d"),                                    # unchanged symlink
]
B_LAYER = [
    b.dir("d"), b.file("d/f", b"hello"),
    b.file("same", b"bbbb"),
    b.file("sz", b"123"),
    b.file("m", b"m", mode=0o600),
    b.file("o", b"o", uid=5, gid=6),
    b.symlink("l", "t2"),
    b.dir("f2d"), b.file("f2d/in", b"in"),
    b.symlink("d2l", "d"),
    b.file("xa", b"x", xattrs={"user.a": b"2"}),
    b.dir("dx", xattrs={"user.q": b"2"}),
    b.device("dev", "c", 1, 5),
    b.file("mt", b"m", mtime=MT - 86400 * 365),
    b.file("new", b"12345"),                                 # added file
    b.dir("newd"), b.file("newd/x", b""), b.dir("newd/e"),   # added dir (with a subtree)
    b.symlink("newl", "d/f"),                                # added symlink
    b.symlink("lk", "d"),
]

# What `imagefs diff a.tar b.tar` must print, in order (tree order: parents first).
EXPECTED = [
    "C /d2l  (type d -> l)",
    "D /del",
    "C /dev  (device 1,3 -> 1,5)",
    "C /dx  (xattrs)",
    "C /f2d  (type f -> d)",
    "D /gone",
    "C /l  (target t1 -> t2)",
    "C /m  (mode 0644 -> 0600)",
    "A /new",
    "A /newd",
    "A /newl",
    "C /o  (owner 0:0 -> 5:6)",
    "C /same  (content)",
    "C /sz  (size 2 -> 3)",
    "C /xa  (xattrs)",
]
EXPECTED_ALL = [  # --all: every path below an added or deleted directory, and below a type change
    "C /d2l  (type d -> l)",
    "D /d2l/x",
    "D /del",
    "C /dev  (device 1,3 -> 1,5)",
    "C /dx  (xattrs)",
    "C /f2d  (type f -> d)",
    "A /f2d/in",
    "D /gone",
    "D /gone/a",
    "D /gone/sub",
    "D /gone/sub/b",
    "C /l  (target t1 -> t2)",
    "C /m  (mode 0644 -> 0600)",
    "A /new",
    "A /newd",
    "A /newd/e",
    "A /newd/x",
    "A /newl",
    "C /o  (owner 0:0 -> 5:6)",
    "C /same  (content)",
    "C /sz  (size 2 -> 3)",
    "C /xa  (xattrs)",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pair")
    b.write_docker_archive(str(d / "a.tar"), [A_LAYER])
    b.write_docker_archive(str(d / "b.tar"), [B_LAYER])
    return d / "a.tar", d / "b.tar"


def _only(out: list[str], path: str) -> list[str]:
    return [line for line in out if parse(line)[1] == path]


def test_whole_output(idiff: Differ, pair: tuple[Path, Path]) -> None:
    r = idiff(*pair)
    assert r.returncode == 1, r.stderr
    assert r.stderr == ""
    assert lines(r) == EXPECTED


def test_whole_output_all(idiff: Differ, pair: tuple[Path, Path]) -> None:
    r = idiff("--all", *pair)
    assert r.returncode == 1, r.stderr
    assert lines(r) == EXPECTED_ALL


@pytest.mark.parametrize("path, line", [
    ("/new", "A /new"),
    ("/newl", "A /newl"),
    ("/del", "D /del"),
    ("/same", "C /same  (content)"),
    ("/sz", "C /sz  (size 2 -> 3)"),
    ("/m", "C /m  (mode 0644 -> 0600)"),
    ("/o", "C /o  (owner 0:0 -> 5:6)"),
    ("/l", "C /l  (target t1 -> t2)"),
    ("/f2d", "C /f2d  (type f -> d)"),
    ("/d2l", "C /d2l  (type d -> l)"),
    ("/xa", "C /xa  (xattrs)"),
    ("/dx", "C /dx  (xattrs)"),
    ("/dev", "C /dev  (device 1,3 -> 1,5)"),
], ids=["added-file", "added-symlink", "deleted-file", "content-same-size", "size", "mode", "owner",
        "symlink-target", "type-file-to-dir", "type-dir-to-symlink", "xattr-file", "xattr-dir", "device"])
def test_change_kind(idiff: Differ, pair: tuple[Path, Path], path: str, line: str) -> None:
    assert _only(lines(idiff(*pair)), path) == [line]


def test_added_directory_is_one_line(idiff: Differ, pair: tuple[Path, Path]) -> None:
    out = lines(idiff(*pair))
    assert [x for x in out if parse(x)[1].startswith("/newd")] == ["A /newd"]
    out_all = lines(idiff("--all", *pair))
    assert [x for x in out_all if parse(x)[1].startswith("/newd")] == ["A /newd", "A /newd/e", "A /newd/x"]


def test_deleted_directory_is_one_line_unless_all(idiff: Differ, pair: tuple[Path, Path]) -> None:
    out = lines(idiff(*pair))
    assert [x for x in out if parse(x)[1].startswith("/gone")] == ["D /gone"]
    out_all = lines(idiff("--all", *pair))
    assert [x for x in out_all if parse(x)[1].startswith("/gone")] == [
        "D /gone", "D /gone/a", "D /gone/sub", "D /gone/sub/b"]


def test_type_change_subtrees_only_with_all(idiff: Differ, pair: tuple[Path, Path]) -> None:
    out = lines(idiff(*pair))
    assert not any(parse(x)[1].startswith(("/f2d/", "/d2l/")) for x in out)
    out_all = lines(idiff("--all", *pair))
    assert "A /f2d/in" in out_all and "D /d2l/x" in out_all


def test_unchanged_paths_are_not_listed(idiff: Differ, pair: tuple[Path, Path]) -> None:
    paths = {parse(x)[1] for x in lines(idiff("--all", "--mtime", *pair))}
    assert not paths & {"/d", "/d/f", "/lk"}


def test_mtime_only_with_mtime(idiff: Differ, pair: tuple[Path, Path]) -> None:
    assert _only(lines(idiff(*pair)), "/mt") == []
    r = idiff("--mtime", *pair)
    assert r.returncode == 1
    assert _only(lines(r), "/mt") == ["C /mt  (mtime)"]
    # nothing else changes with --mtime: all other entries have the same mtime on both sides
    assert [x for x in lines(r) if parse(x)[1] != "/mt"] == EXPECTED


def test_mtime_alone_is_no_difference(idiff: Differ, tmp_path: Path) -> None:
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file("f", b"1")]])
    b.write_docker_archive(str(tmp_path / "y.tar"), [[b.file("f", b"1", mtime=MT + 3600)]])
    r = idiff(tmp_path / "x.tar", tmp_path / "y.tar")
    assert (r.returncode, r.stdout) == (0, "")
    r = idiff("--mtime", tmp_path / "x.tar", tmp_path / "y.tar")
    assert (r.returncode, lines(r)) == (1, ["C /f  (mtime)"])


def test_the_root_itself_is_compared(idiff: Differ, tmp_path: Path) -> None:
    """A root made world-writable or given away is a change like any other."""
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file("f", b"1")]])
    b.write_docker_archive(str(tmp_path / "y.tar"), [[b.file("f", b"1")],
                                                      [b.dir(".", mode=0o777, uid=5, xattrs={"user.r": b"1"})]])
    r = idiff(tmp_path / "x.tar", tmp_path / "y.tar")
    assert (r.returncode, lines(r)) == (1, ["C /  (mode 0755 -> 0777, owner 0:0 -> 5:0, xattrs)"])
    r = idiff("--json", "--stat", tmp_path / "x.tar", tmp_path / "y.tar")
    assert r.returncode == 2 and "--json and --stat are alternatives" in r.stderr


def test_output_is_sorted_by_path(idiff: Differ, tmp_path: Path) -> None:
    # names that sort differently as whole paths and component by component ('-' and '.' < '/')
    x = [b.dir("p"), b.file("p/z", b"1"), b.file("p-q", b"1"), b.file("p.r", b"1"), b.file("a", b"1"),
         b.dir("q"), b.dir("q/q"), b.file("q/q/q", b"1")]
    y = [b.dir("p"), b.file("p/z", b"22"), b.file("p/a", b""), b.file("p-q", b"22"), b.file("p.r", b"22"),
         b.file("z", b""), b.dir("q"), b.dir("q/q"), b.file("q/q/q", b"22"), b.file("B", b"")]
    b.write_docker_archive(str(tmp_path / "x.tar"), [x])
    b.write_docker_archive(str(tmp_path / "y.tar"), [y])
    r = idiff(tmp_path / "x.tar", tmp_path / "y.tar")
    paths = [parse(line)[1] for line in lines(r)]
    # Tree order, as `diff -r` and a walk give it: '/p' itself is unchanged, its entries come
    # right after it and before '/p-q' and '/p.r' (a sort of the whole paths as bytes would put
    # '/p-q' and '/p.r' first; diff.py's docstring says "sorted by path bytes", which is not this)
    assert paths == ["/B", "/a", "/p/a", "/p/z", "/p-q", "/p.r", "/q/q/q", "/z"]
    assert paths == sorted(paths, key=tree_order)


def test_json_records(idiff: Differ, pair: tuple[Path, Path]) -> None:
    r = idiff("--json", *pair)
    assert r.returncode == 1
    recs = records(r)
    assert len(recs) == len(EXPECTED)
    for rec, line in zip(recs, EXPECTED):
        kind, path, what = parse(line)
        assert set(rec) == {"change", "path", "what", "a", "b"}
        assert (rec["change"], rec["path"]) == (kind, path)
        assert rec["what"] == (what.split(", ") if what else [])
        assert (rec["a"] is None) == (kind == "A") and (rec["b"] is None) == (kind == "D")
    by = {rec["path"]: rec for rec in recs}
    assert by["/m"]["a"]["mode"] == "0644" and by["/m"]["b"]["mode"] == "0600"
    assert (by["/o"]["b"]["uid"], by["/o"]["b"]["gid"]) == (5, 6)
    assert by["/l"]["a"]["target"] == "t1" and by["/l"]["b"]["target"] == "t2"
    assert by["/sz"]["a"]["size"] == 2 and by["/sz"]["b"]["size"] == 3
    assert by["/dev"]["a"]["rdev"] == "1,3" and by["/dev"]["b"]["rdev"] == "1,5"
    assert by["/xa"]["a"]["xattrs"] == {"user.a": b"1".hex()} and by["/xa"]["b"]["xattrs"] == {"user.a": b"2".hex()}
    assert by["/f2d"]["a"]["type"] == "f" and by["/f2d"]["b"]["type"] == "d"
    assert by["/new"]["b"] == {"type": "f", "mode": "0644", "uid": 0, "gid": 0, "size": 5, "mtime": float(MT),
                               "rdev": None, "target": None, "xattrs": {}}
    assert by["/gone"]["a"]["type"] == "d"


def test_json_all_matches_text_all(idiff: Differ, pair: tuple[Path, Path]) -> None:
    recs = records(idiff("--json", "--all", *pair))
    assert [(r["change"], r["path"]) for r in recs] == [parse(x)[:2] for x in EXPECTED_ALL]


def test_stat_summary(idiff: Differ, pair: tuple[Path, Path]) -> None:
    r = idiff("--stat", *pair)
    assert r.returncode == 1
    # added: new 5 + the b side of changed files same 4, sz 3, m 1, o 1, xa 1 = 15
    # removed: del 1 + the a side of changed files same 4, sz 2, m 1, o 1, xa 1, f2d 1 = 11
    assert lines(r) == ["3 added, 2 deleted, 10 changed; 15 B in new or changed files, "
                        "11 B in removed or replaced files"]
    r = idiff("--stat", "--all", *pair)
    # --all adds /newd/e, /newd/x, /f2d/in (2 B); /gone/a (1 B), /gone/sub, /gone/sub/b (2 B), /d2l/x (1 B)
    assert lines(r) == ["6 added, 6 deleted, 10 changed; 17 B in new or changed files, "
                        "15 B in removed or replaced files"]


def test_identical_images_exit_0(idiff: Differ, pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = pair
    b.write_oci_archive(str(tmp_path / "a-oci.tar"), [A_LAYER], compression="gzip")
    for args in ([a, a], [a, tmp_path / "a-oci.tar"], ["--all", "--mtime", tmp_path / "a-oci.tar", a], ["--json", a, a]):
        r = idiff(*args)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), args
    r = idiff("--stat", a, tmp_path / "a-oci.tar")
    assert r.returncode == 0
    assert lines(r) == ["0 added, 0 deleted, 0 changed; 0 B in new or changed files, 0 B in removed or replaced files"]


@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_missing_archive_exit_2(idiff: Differ, pair: tuple[Path, Path], tmp_path: Path, which: str) -> None:
    missing = tmp_path / "no-such.tar"
    a, bb = pair
    args = {"a": (missing, bb), "b": (a, missing), "both": (missing, missing)}[which]
    r = idiff(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    msg = assert_one_line_error(r)
    assert "no-such.tar" in msg


def test_not_an_image_exit_2(idiff: Differ, pair: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "text.tar").write_bytes(b"not a tar\n" * 100)
    r = idiff(pair[0], tmp_path / "text.tar")
    assert r.returncode == 2
    assert_one_line_error(r)


# -- awkward names -----------------------------------------------------------------------------


def test_awkward_paths_are_escaped_on_one_line(idiff: Differ, tmp_path: Path) -> None:
    x = [b.file(b"n\nl\xff", b"1"), b.dir(b"dir-\xe9t\xe9"), b.file(b"dir-\xe9t\xe9/f", b""),
         b.symlink("lnk", b"to\nthere"), b.file("tab\there", b"")]
    y = [b.file(b"n\nl\xff", b"22"), b.dir(b"dir-\xe9t\xe9"), b.file(b"dir-\xe9t\xe9/f", b"x"),
         b.symlink("lnk", b"el\\se"), b.file("back\\slash", b""), b.file("caf\u00e9 \u2603", b""),
         b.file(b"cr\rname", b"")]
    b.write_docker_archive(str(tmp_path / "x.tar"), [x])
    b.write_docker_archive(str(tmp_path / "y.tar"), [y])
    r = idiff(tmp_path / "x.tar", tmp_path / "y.tar")
    assert r.returncode == 1, r.stderr
    assert r.stdout.isascii()
    assert lines(r) == [
        "A /back\\x5cslash",
        "A /caf\\xc3\\xa9 \\xe2\\x98\\x83",
        "A /cr\\x0dname",
        "C /dir-\\xe9t\\xe9/f  (size 0 -> 1)",
        "C /lnk  (target to\\x0athere -> el\\x5cse)",
        "C /n\\x0al\\xff  (size 1 -> 2)",
        "D /tab\\x09here",
    ]
    recs = records(idiff("--json", tmp_path / "x.tar", tmp_path / "y.tar"))
    assert [rec["path"] for rec in recs] == [parse(line)[1] for line in lines(r)]
    assert recs[4]["a"]["target"] == "to\\x0athere"
    assert unescape(recs[5]["path"]) == b"/n\nl\xff"


# -- shared layers -------------------------------------------------------------------------------

BIG = 2000


def _base_layer() -> list[b.Entry]:
    entries: list[b.Entry] = [b.dir("big")]
    for i in range(BIG):
        if i % 250 == 0:
            entries.append(b.dir(f"big/sub{i:04d}"))
            entries.append(b.file(f"big/sub{i:04d}/inner", b"i"))
        else:
            entries.append(b.file(f"big/file-{i:04d}", b"%d" % i))
    entries += [b.dir("etc"), b.file("etc/data", bytes(range(256)) * 1024), b.file("etc/keep", b"keep\n"),
                b.file("top-same", b"shared bytes\n")]
    return entries


LAYER_A = [b.dir("etc"), b.file("etc/a", b"only in a"), b.dir("top"), b.file("top/x", b"xxxx")]
LAYER_B = [b.dir("etc"), b.file("etc/b", b"only in b"), b.dir("top"), b.file("top/x", b"yyyy"),
           b.file("top/same", b"SAME")]
SHARED_EXPECTED = ["D /etc/a", "A /etc/b", "A /top/same", "C /top/x  (content)"]


@pytest.fixture(scope="module")
def shared_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shared")
    base = b.layer_tar(_base_layer())
    # the same base tree as a different layer (one more, unrelated entry): nothing is shared
    other_base = b.layer_tar(_base_layer() + [b.file("unrelated", b"")])
    b.write_docker_archive(str(d / "a.tar"), [base, LAYER_A])
    b.write_docker_archive(str(d / "b.tar"), [base, LAYER_B])
    b.write_docker_archive(str(d / "b-unshared.tar"), [other_base, LAYER_B])
    return {"a": d / "a.tar", "b": d / "b.tar", "b-unshared": d / "b-unshared.tar", "cache": d / "cache"}


class Counting(TreeSource):
    """A TreeSource that records which handles the walk asked about."""

    def __init__(self, tree: ImageTree) -> None:
        super().__init__(tree)
        self.children_of: list[int] = []
        self.meta_of: list[int] = []
        self.read_of: list[int] = []

    def children(self, h: object) -> list[tuple[bytes, object]]:
        self.children_of.append(int(h))  # type: ignore[call-overload]
        return super().children(h)

    def meta(self, h: object) -> Any:
        self.meta_of.append(int(h))  # type: ignore[call-overload]
        return super().meta(h)

    def read(self, h: object, offset: int, n: int) -> bytes:
        self.read_of.append(int(h))  # type: ignore[call-overload]
        return super().read(h, offset, n)


@contextmanager
def _counting_pair(a: Path, b_: Path, cache: Path) -> Iterator[tuple[Counting, Counting]]:
    """Both archives as `Counting` sources; both trees are closed on the way out."""
    opts = BuildOptions(cache_dir=str(cache))
    with ImageTree.open(str(a), opts) as tree_a, ImageTree.open(str(b_), opts) as tree_b:
        yield Counting(tree_a), Counting(tree_b)


def _lines_of(changes: Iterator[Any]) -> list[str]:
    return [c.line() for c in changes]


def test_shared_layers_result(idiff: Differ, shared_pair: dict[str, Path]) -> None:
    r = idiff(shared_pair["a"], shared_pair["b"])
    assert (r.returncode, lines(r)) == (1, SHARED_EXPECTED)
    r = idiff(shared_pair["a"], shared_pair["b-unshared"])
    assert (r.returncode, lines(r)) == (1, SHARED_EXPECTED + ["A /unrelated"])


def test_shared_subtree_is_not_walked(shared_pair: dict[str, Path]) -> None:
    with _counting_pair(shared_pair["a"], shared_pair["b"], shared_pair["cache"]) as (a, bb):
        assert shared_layers(a, bb) == 1
        assert _lines_of(diff(a, bb)) == SHARED_EXPECTED
        for side in (a, bb):
            big = side.tree.resolve(b"big")
            assert big and len(side.tree.listdir(big)) == BIG
            assert big not in side.children_of, "the shared directory /big was listed"
            # nothing below /big was looked at: a handful of entries in all
            assert len(side.meta_of) < 20, f"{len(side.meta_of)} meta() calls"
            assert len(side.children_of) < 10, f"{len(side.children_of)} children() calls"
    # --all and --mtime do not change that
    with _counting_pair(shared_pair["a"], shared_pair["b"], shared_pair["cache"]) as (a, bb):
        assert _lines_of(diff(a, bb, DiffOptions(all=True, mtime=True))) == SHARED_EXPECTED
        assert len(a.meta_of) + len(bb.meta_of) < 40
        assert a.tree.resolve(b"big") not in a.children_of


def test_counting_sees_a_full_walk_when_nothing_is_shared(shared_pair: dict[str, Path]) -> None:
    """The control for the test above: the same trees from layers that are not shared are walked."""
    with _counting_pair(shared_pair["a"], shared_pair["b-unshared"], shared_pair["cache"]) as (a, bb):
        assert shared_layers(a, bb) == 0
        assert _lines_of(diff(a, bb)) == SHARED_EXPECTED + ["A /unrelated"]
        assert a.tree.resolve(b"big") in a.children_of
        assert len(a.meta_of) > BIG
        # and the shared-looking file etc/data (same size, other layer) had to be read
        assert a.tree.resolve(b"etc/data") in a.read_of
        assert bb.tree.resolve(b"etc/data") in bb.read_of


def test_file_from_a_shared_layer_is_not_read(shared_pair: dict[str, Path]) -> None:
    with _counting_pair(shared_pair["a"], shared_pair["b"], shared_pair["cache"]) as (a, bb):
        list(diff(a, bb))
        # /etc is walked (both top layers changed it), so /etc/data and /etc/keep were compared...
        data = (a.tree.resolve(b"etc/data"), bb.tree.resolve(b"etc/data"))
        assert data[0] in a.meta_of and data[1] in bb.meta_of
        # ...but their bytes come from the same shared layer: never read
        assert data[0] not in a.read_of and data[1] not in bb.read_of
        assert a.tree.resolve(b"etc/keep") not in a.read_of
        # top/x (same size, both from the unshared top layers) had to be read
        assert a.read_of == [a.tree.resolve(b"top/x")] and bb.read_of == [bb.tree.resolve(b"top/x")]


def test_same_bytes_in_unshared_layers_are_read_and_equal(tmp_path: Path) -> None:
    # size equal and bytes equal, from different layers: read, and no change reported
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file("f", b"abc" * 1000)], [b.file("g", b"1")]])
    b.write_docker_archive(str(tmp_path / "y.tar"), [[b.file("f", b"abc" * 1000), b.file("h", b"")], [b.file("g", b"1")]])
    with _counting_pair(tmp_path / "x.tar", tmp_path / "y.tar", tmp_path / "cache") as (a, bb):
        assert _lines_of(diff(a, bb)) == ["A /h"]
        assert a.read_of and bb.read_of


# -- ARCHIVE@N and mount --layer N ------------------------------------------------------------------

HIST = [
    [b.file("a", b"1"), b.file("b", b"b"), b.dir("d"), b.file("d/x", b"x")],
    [b.file("a", b"22"), b.file("c", b"c"), b.whiteout("b")],
    [b.whiteout("d"), b.file("e", b"e")],
]
TREE_AFTER = {  # path -> content (None: a directory) after each layer
    1: {"a": b"1", "b": b"b", "d": None, "d/x": b"x"},
    2: {"a": b"22", "c": b"c", "d": None, "d/x": b"x"},
    3: {"a": b"22", "c": b"c", "e": b"e"},
}


@pytest.fixture(scope="module")
def hist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hist") / "hist.tar"
    b.write_docker_archive(str(path), HIST)
    return path


@pytest.mark.parametrize("a, b_, expected", [
    ("1", "2", ["C /a  (size 1 -> 2)", "D /b", "A /c"]),
    ("2", "3", ["D /d", "A /e"]),
    ("1", "3", ["C /a  (size 1 -> 2)", "D /b", "A /c", "D /d", "A /e"]),
    ("3", "1", ["C /a  (size 2 -> 1)", "A /b", "D /c", "A /d", "D /e"]),
    ("3", "", []),
    ("2", "2", []),
])
def test_archive_at_layer(idiff: Differ, hist: Path, a: str, b_: str, expected: list[str]) -> None:
    side_b = f"{hist}@{b_}" if b_ else str(hist)
    r = idiff(f"{hist}@{a}", side_b)
    assert r.stderr == ""
    assert (r.returncode, lines(r)) == (1 if expected else 0, expected)


def test_archive_at_minus_one_is_the_top(idiff: Differ, hist: Path) -> None:
    r = idiff(f"{hist}@-1", hist)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_archive_at_minus_n_is_the_base(idiff: Differ, hist: Path) -> None:
    r = idiff(f"{hist}@-3", f"{hist}@1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_cli_example_what_the_top_layer_changed(idiff: Differ, hist: Path) -> None:
    r = idiff(f"{hist}@-2", hist)
    assert lines(r) == ["D /d", "A /e"]


def test_negative_layers_agree_with_positive_ones(idiff: Differ, hist: Path) -> None:
    """Whatever the offset, @-k is some @m: never a tree of its own."""
    for k in (1, 2):
        outs = {m: idiff(f"{hist}@-{k}", f"{hist}@{m}").returncode for m in (1, 2, 3)}
        assert sorted(outs.values()) == [0, 1, 1], (k, outs)


@pytest.mark.parametrize("n", ["0", "4", "-4", "99"])
def test_archive_at_layer_out_of_range(idiff: Differ, hist: Path, n: str) -> None:
    r = idiff(f"{hist}@{n}", hist)
    assert r.returncode == 2
    msg = assert_one_line_error(r)
    assert f"{hist}@{n}: layer {n} is out of range" in msg and "3 layers" in msg
    assert "--layer" not in msg  # diff has no such option


def test_trees_deeper_than_the_recursion_limit(idiff: Differ, tmp_path: Path) -> None:
    """Paths may have 1,000 components; the walk is a loop, and an error would be
    exit 2 with one line, not a traceback and exit 1 ("different")."""
    deep = "/".join(["d"] * 990)
    b.write_docker_archive(str(tmp_path / "a.tar"), [[b.file(f"{deep}/f", b"1")]])
    b.write_docker_archive(str(tmp_path / "b.tar"), [[b.file(f"{deep}/f", b"22")]])
    (tmp_path / "empty").mkdir()
    r = idiff(tmp_path / "a.tar", tmp_path / "b.tar")
    assert (r.returncode, r.stderr) == (1, "") and [parse(x)[:2] for x in lines(r)] == [("C", f"/{deep}/f")]
    r = idiff("--all", tmp_path / "a.tar", tmp_path / "empty")
    assert (r.returncode, r.stderr) == (1, "") and len(lines(r)) == 991


def test_archive_named_with_at_sign(idiff: Differ, hist: Path, tmp_path: Path) -> None:
    """An existing file whose name has an '@' is that archive, not a layer selector."""
    odd = tmp_path / "img@2"
    odd.write_bytes(hist.read_bytes())
    r = idiff(odd, hist)
    assert (r.returncode, r.stdout) == (0, "")
    r = idiff(f"{odd}@1", f"{hist}@1")
    assert (r.returncode, r.stdout) == (0, "")


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = None
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


@pytest.mark.fuse
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_mount_layer(mounted: Mounter, hist: Path, idiff: Differ, layer: int) -> None:
    m = mounted(hist, "--layer", str(layer))
    assert _tree(m.mountpoint) == TREE_AFTER[layer]
    # the mount and ARCHIVE@N are the same tree
    r = idiff(f"{hist}@{layer}", m.mountpoint)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.fuse
def test_mount_layer_minus_one_is_the_top(mounted: Mounter, hist: Path) -> None:
    m = mounted(hist, "--layer", "-1")
    assert _tree(m.mountpoint) == TREE_AFTER[3]


@pytest.mark.fuse
@pytest.mark.parametrize("n", ["0", "4", "-4"])
def test_mount_layer_out_of_range(mounted: Mounter, hist: Path, n: str) -> None:
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", mounted.cache_dir, "--layer", n, hist, mp, mountpoint=mp)
    msg = assert_one_line_error(r, mp)
    assert f"--layer {n}" in msg and "out of range" in msg


# -- directory sides --------------------------------------------------------------------------------

DIR_LAYER = [
    b.dir("etc"), b.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
    b.file("etc/shadow", b"root:*:19000::::::\n", mode=0o640, gid=42),
    b.symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
    b.file("etc/motd", b"hello\n", xattrs={"user.note": b"hi"}),
    b.dir("home"), b.dir("home/bob", mode=0o750, uid=1000, gid=1000),
    b.file("home/bob/.profile", b"PATH=/bin\n", mode=0o600, uid=1000, gid=1000),
    b.dir("usr"), b.dir("usr/bin"), b.file("usr/bin/tool", b"\x7fELF tool", mode=0o4755),
    b.hardlink("usr/bin/tool2", "usr/bin/tool"),
    b.dir("tmp", mode=0o1777), b.file("empty", b""),
]


def extract(entries: Sequence[b.Entry], dest: Path) -> None:
    """A by-hand extraction of one layer (no whiteouts): what `tar -xp --xattrs` would leave."""
    dest.mkdir()
    dirs = []
    for e in entries:
        path = os.path.join(os.fsencode(dest), os.fsencode(e.path) if isinstance(e.path, str) else e.path)
        if e.kind == tarfile.DIRTYPE:
            os.mkdir(path)
            dirs.append((path, e))
        elif e.kind == tarfile.SYMTYPE:
            os.symlink(os.fsencode(e.linkname), path)
        elif e.kind == tarfile.LNKTYPE:
            os.link(os.path.join(os.fsencode(dest), os.fsencode(e.linkname)), path)
            continue
        else:
            with open(path, "wb") as f:
                f.write(e.data)
        os.chown(path, e.uid, e.gid, follow_symlinks=False)
        if e.kind != tarfile.SYMTYPE:
            os.chmod(path, e.mode)
        for k, v in e.xattrs.items():
            os.setxattr(path, k, v, follow_symlinks=False)
        os.utime(path, ns=(int(e.mtime * 1e9),) * 2, follow_symlinks=False)
    for path, e in reversed(dirs):  # directories last: creating entries moved their mtimes
        os.utime(path, ns=(int(e.mtime * 1e9),) * 2)


@pytest.fixture
def dir_case(tmp_path: Path) -> tuple[Path, Path]:
    archive = tmp_path / "x.tar"
    b.write_docker_archive(str(archive), [DIR_LAYER])
    extract(DIR_LAYER, tmp_path / "rootfs")
    return archive, tmp_path / "rootfs"


def test_archive_against_its_extraction(idiff: Differ, dir_case: tuple[Path, Path]) -> None:
    archive, rootfs = dir_case
    for args in ([archive, rootfs], [rootfs, archive], ["--all", "--mtime", archive, rootfs]):
        r = idiff(*args)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), args


def test_archive_against_a_changed_extraction(idiff: Differ, dir_case: tuple[Path, Path]) -> None:
    archive, rootfs = dir_case
    (rootfs / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/zz\n")  # same size
    os.chmod(rootfs / "etc/shadow", 0o600)
    os.chown(rootfs / "etc/motd", 7, 8)
    os.setxattr(rootfs / "etc/motd", "user.note", b"ho")
    (rootfs / "home/bob/.profile").unlink()
    (rootfs / "etc/new").write_bytes(b"new")
    (rootfs / "etc/localtime").unlink()
    os.symlink("/usr/share/zoneinfo/Europe/Paris", rootfs / "etc/localtime")
    with open(rootfs / "empty", "ab") as f:
        f.write(b"!")
    r = idiff(archive, rootfs)
    assert r.stderr == ""
    assert (r.returncode, lines(r)) == (1, [
        "C /empty  (size 0 -> 1)",
        "C /etc/localtime  (target /usr/share/zoneinfo/UTC -> /usr/share/zoneinfo/Europe/Paris)",
        "C /etc/motd  (owner 0:0 -> 7:8, xattrs)",
        "A /etc/new",
        "C /etc/passwd  (content)",
        "C /etc/shadow  (mode 0640 -> 0600)",
        "D /home/bob/.profile",
    ])


@pytest.mark.fuse
def test_archive_against_a_mount(idiff: Differ, mounted: Mounter, pair: tuple[Path, Path]) -> None:
    a, bb = pair
    mb = mounted(bb)
    ma = mounted(a)
    for x, y in ((a, mb.mountpoint), (ma.mountpoint, bb), (ma.mountpoint, mb.mountpoint)):
        for opts in ([], ["--all"], ["--json"]):
            got, want = idiff(*opts, x, y), idiff(*opts, a, bb)
            assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr), (x, y, opts)
    r = idiff(a, ma.mountpoint)
    assert (r.returncode, r.stdout) == (0, "")


# -- diff -r across two real mounts ------------------------------------------------------------------

R_A = [
    b.dir("etc"), b.file("etc/conf", b"one\n"), b.file("etc/same size", b"aaaa"), b.file("etc/keep", b"k"),
    b.file("etc/chmod", b"c", mode=0o644), b.file("etc/chown", b"c"), b.symlink("etc/link", "conf"),
    b.dir("var"), b.dir("var/lib"), b.file("var/lib/db", b"db"), b.dir("var/lib/deep"), b.file("var/lib/deep/f", b""),
    b.file("f2d", b"x"), b.dir("d2f"), b.file("d2f/inner", b"i"), b.symlink("l2f", "etc"),
    b.file("gone", b"bye"), b.file("xattr", b"x", xattrs={"user.k": b"1"}),
]
R_B = [
    b.dir("etc"), b.file("etc/conf", b"one\ntwo\n"), b.file("etc/same size", b"bbbb"), b.file("etc/keep", b"k"),
    b.file("etc/chmod", b"c", mode=0o600), b.file("etc/chown", b"c", uid=1, gid=1), b.symlink("etc/link", "keep"),
    b.dir("var"), b.dir("var/lib"), b.file("var/lib/db", b"db"),
    b.dir("f2d"), b.file("f2d/now", b""), b.file("d2f", b"i"), b.file("l2f", b"etc"),
    b.dir("new dir"), b.file("new dir/f", b"new"), b.file("xattr", b"x", xattrs={"user.k": b"2"}),
]


def _diff_r_paths(out: str, ma: str, mb: str) -> set[str]:
    """The relative paths `diff -rq --no-dereference MA MB` names."""
    paths = set()
    for line in out.splitlines():
        for pattern in (rf"^Only in (?:{re.escape(ma)}|{re.escape(mb)})(/.*)?: (.*)$",):
            m = re.match(pattern, line)
            if m:
                paths.add(f"{m.group(1) or ''}/{m.group(2)}")
                break
        else:
            m = re.match(rf"^(?:Files|Symbolic links|File) {re.escape(ma)}(/.*?) (?:and|is a .*? while file) ", line)
            assert m, f"unexpected diff -r line: {line!r}"
            paths.add(m.group(1))
    return paths


@pytest.mark.fuse
def test_diff_r_agrees(idiff: Differ, mounted: Mounter, tmp_path: Path) -> None:
    b.write_docker_archive(str(tmp_path / "ra.tar"), [R_A])
    b.write_docker_archive(str(tmp_path / "rb.tar"), [R_B])
    ma, mb = mounted(tmp_path / "ra.tar"), mounted(tmp_path / "rb.tar")
    r = subprocess.run(["diff", "-rq", "--no-dereference", str(ma.mountpoint), str(mb.mountpoint)],
                       capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    from_diff_r = _diff_r_paths(r.stdout, str(ma.mountpoint), str(mb.mountpoint))
    for x, y in ((tmp_path / "ra.tar", tmp_path / "rb.tar"), (ma.mountpoint, mb.mountpoint)):
        out = idiff(x, y)
        assert out.returncode == 1
        # diff -r sees names, types, bytes and link targets; not modes, owners or xattrs
        seen = {path for kind, path, what in map(parse, lines(out))
                if kind != "C" or any(w.split()[0] in ("type", "size", "content", "target") for w in what.split(", "))}
        assert seen == from_diff_r
        assert seen == {"/etc/conf", "/etc/same size", "/etc/link", "/var/lib/deep", "/f2d", "/d2f", "/l2f",
                        "/gone", "/new dir"}
        assert {parse(x)[1] for x in lines(out)} - seen == {"/etc/chmod", "/etc/chown", "/xattr"}


# -- the corpus --------------------------------------------------------------------------------------

COLUMNS = ("type", "mode", "uid", "gid", "size", "sha256", "target", "xattrs")


def _oracle(corpus: Path, image: str) -> dict[str, dict[str, str]]:
    with open(corpus / f"{image}.oracle.tsv", encoding="ascii") as f:
        header = f.readline().lstrip("#").rstrip("\n").split("\t")
        return {row[0]: dict(zip(header, row)) for row in (line.rstrip("\n").split("\t") for line in f)}


def _mtimes(corpus: Path, image: str) -> dict[str, str]:
    with open(corpus / f"{image}.oracle.mtime.tsv", encoding="ascii") as f:
        next(f)
        return {row[0]: row[2] for row in (line.rstrip("\n").split("\t") for line in f)}


def _expected(a: dict[str, dict[str, str]], b_: dict[str, dict[str, str]], all_: bool) -> dict[str, str]:
    """path -> A/D/C from two oracle listings; without --all, nothing below an added or
    deleted directory or below a path that is not a directory on both sides."""
    out = {}
    for p in a.keys() | b_.keys():
        if p not in b_:
            out[p] = "D"
        elif p not in a:
            out[p] = "A"
        elif any(a[p][c] != b_[p][c] for c in COLUMNS):
            out[p] = "C"
    if not all_:
        def both_dirs(q: str) -> bool:
            return a.get(q, {}).get("type") == "d" and b_.get(q, {}).get("type") == "d"

        def hidden(p: str) -> bool:
            parts = p.split("/")
            return any(not both_dirs("/".join(parts[:i])) for i in range(2, len(parts)))

        out = {p: k for p, k in out.items() if not hidden(p)}
    return out


def _expected_what(ra: dict[str, str], rb: dict[str, str]) -> set[str]:
    """The first words of the `what` of a C line, from the oracle columns."""
    if ra["type"] != rb["type"]:
        return {"type"}
    t, what = ra["type"], set()
    if t == "f":
        if ra["size"] != rb["size"]:
            what.add("size")
        elif ra["sha256"] != rb["sha256"]:
            what.add("content")
    if t in "cb" and ra["size"] != rb["size"]:
        what.add("device")
    if ra["target"] != rb["target"]:
        what.add("target")
    if ra["mode"] != rb["mode"] and t != "l":
        what.add("mode")
    if (ra["uid"], ra["gid"]) != (rb["uid"], rb["gid"]):
        what.add("owner")
    if ra["xattrs"] != rb["xattrs"]:
        what.add("xattrs")
    return what


CROSS = [
    ("small-base.podman-docker.tar", "small-layered.podman-docker.tar"),
    ("small-base.podman-docker.tar", "small-layered.skopeo-oci-gzip.tar"),
    ("small-base.skopeo-oci-zstd.tar", "small-layered.skopeo-docker.tar"),
    ("small-layered.podman-oci.tar", "small-base.podman-docker.tar.gz"),
]


@pytest.mark.corpus
@pytest.mark.parametrize("a, b_", CROSS, ids=[f"{x}-vs-{y}" for x, y in CROSS])
def test_corpus_matches_the_oracles(idiff: Differ, corpus_dir: Path, a: str, b_: str) -> None:
    pa, pb = corpus_file(corpus_dir, a), corpus_file(corpus_dir, b_)
    oa, ob = _oracle(corpus_dir, a.split(".")[0]), _oracle(corpus_dir, b_.split(".")[0])
    for all_ in (True, False):
        r = idiff("--json", *(["--all"] if all_ else []), pa, pb)
        assert r.returncode == 1 and r.stderr == "", r.stderr
        recs = records(r)
        got = {rec["path"]: rec["change"] for rec in recs}
        assert len(got) == len(recs), "a path is listed twice"
        want = _expected(oa, ob, all_)
        missing = {p: k for p, k in want.items() if got.get(p) != k}
        extra = {p: k for p, k in got.items() if want.get(p) != k}
        assert not missing and not extra, f"--all={all_}: expected but not listed: {sorted(missing.items())[:20]}; " \
                                          f"listed but not expected: {sorted(extra.items())[:20]}"
        for rec in recs:
            if rec["change"] == "C":
                words = {w.split()[0] for w in rec["what"]}
                assert words == _expected_what(oa[rec["path"]], ob[rec["path"]]), rec
        paths = [rec["path"] for rec in recs]
        assert paths == sorted(paths, key=tree_order)


@pytest.mark.corpus
def test_corpus_mtime_changes_match_the_oracles(idiff: Differ, corpus_dir: Path) -> None:
    pa = corpus_file(corpus_dir, "small-base.podman-docker.tar")
    pb = corpus_file(corpus_dir, "small-layered.podman-oci.tar")
    oa, ob = _oracle(corpus_dir, "small-base"), _oracle(corpus_dir, "small-layered")
    ta, tb = _mtimes(corpus_dir, "small-base"), _mtimes(corpus_dir, "small-layered")
    r = idiff("--json", "--all", "--mtime", pa, pb)
    got = {rec["path"] for rec in records(r) if "mtime" in rec["what"]}
    want = {p for p in oa.keys() & ob.keys()
            if oa[p]["type"] == ob[p]["type"] != "d" and ta[p] != tb[p]}
    assert got == want
    assert "/etc/debian_version" in got  # the metadata-only mtime change of step 2


@pytest.mark.corpus
@pytest.mark.parametrize("a, b_", [
    ("small-base.podman-docker.tar", "small-base.skopeo-oci-zstd.tar"),
    ("small-base.podman-oci.tar", "small-base.legacy-v1.tar"),
    ("small-layered.podman-docker.tar", "small-layered.skopeo-oci-gzip.tar"),
    ("small-layered.skopeo-oci-zstd.tar", "small-layered.podman-docker.tar.gz"),
    ("small-layered.legacy-v1.tar", "small-layered.podman-oci.tar"),
])
def test_corpus_image_against_itself_in_another_format(idiff: Differ, corpus_dir: Path, a: str, b_: str) -> None:
    pa, pb = corpus_file(corpus_dir, a), corpus_file(corpus_dir, b_)
    r = idiff("--all", "--mtime", pa, pb)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.corpus
@pytest.mark.fuse
def test_corpus_archive_against_a_mount(idiff: Differ, mounted: Mounter, corpus_dir: Path) -> None:
    """DirSource over a real mount of small-layered (devices, a FIFO, xattrs, mode 0000, odd names)."""
    base = corpus_file(corpus_dir, "small-base.podman-docker.tar")
    layered = corpus_file(corpus_dir, "small-layered.podman-docker.tar")
    m = mounted(corpus_file(corpus_dir, "small-layered.skopeo-oci-zstd.tar"))
    r = idiff("--all", "--mtime", layered, m.mountpoint)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    got, want = idiff("--all", "--mtime", "--json", base, m.mountpoint), idiff("--all", "--mtime", "--json", base, layered)
    assert (got.returncode, got.stdout) == (1, want.stdout)


@pytest.mark.corpus
def test_corpus_multi_archive_images(idiff: Differ, corpus_dir: Path) -> None:
    multi = corpus_file(corpus_dir, "multi.podman-docker.tar")
    layered = corpus_file(corpus_dir, "small-layered.podman-docker.tar")
    r = idiff("--image", "localhost/small-layered:latest", multi, layered)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = idiff("--image", "localhost/small-base:latest", "--image-b", "localhost/small-layered:alias", multi, multi)
    want = idiff(corpus_file(corpus_dir, "small-base.podman-docker.tar"), layered)
    assert (r.returncode, r.stdout) == (1, want.stdout)
