"""Hostile and broken archives through the library (no FUSE): issue 7, part 1.

Every archive here is built by the test, byte by byte where tarfile would refuse.
For each, the library must give either

* an `ImageFSError` whose message is one line, or
* a tree that `fuzztargets.check_tree` accepts: every name resolves to its inode,
  no directory cycles, nlink = the number of names, and every read returns EIO or
  bytes that are in the archive (or decompress out of it);

never another exception, never a hang (every open runs under a deadline), and
nothing written outside the cache directory it is given (the `env` fixture points
$TMPDIR, $XDG_CACHE_HOME and the working directory into a sandbox directory and
checks afterwards that only the cache directory gained files and that the input
archives are unchanged).

Tests marked ``xfail(strict=True, reason="BUG: ...")`` show a bug found by these
tests and still present in imagefs: when it is fixed the test XPASSes, fails the
run, and the marker must go.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import fuzztargets as ft  # noqa: E402
from builder import (  # noqa: E402
    dir, file, hardlink, layer_tar, opaque, raw_header, symlink, whiteout, write_docker_archive,
    write_oci_archive, write_tar,
)
from fuzztargets import EOA, entry, pad, pax, with_checksum, write_blob_archive  # noqa: E402
from imagefs.build import BuildOptions  # noqa: E402
from imagefs.errors import ArchiveError, ImageFormatError, ImageFSError, IntegrityError  # noqa: E402
from imagefs.tree import ImageTree  # noqa: E402

SEED_ARCHIVES = Path(__file__).resolve().parent / "fuzz" / "seeds" / "archives"
OPEN_TIMEOUT = 30.0


# -- the sandbox ------------------------------------------------------------------------


@dataclass
class Loaded:
    """What opening an archive gave: an error, or a checked tree (still open)."""

    error: ImageFSError | None = None
    tree: ImageTree | None = None
    report: ft.TreeReport | None = None
    warnings: list[str] = field(default_factory=list)

    def ok(self) -> ImageTree:
        assert self.error is None, f"expected a tree, got {type(self.error).__name__}: {self.error}"
        assert self.tree is not None
        return self.tree

    def err(self) -> ImageFSError:
        assert self.error is not None, f"expected an ImageFSError, got a tree of {sorted(self.report.paths)}"
        return self.error

    def paths(self) -> set[bytes]:
        assert self.report is not None
        return set(self.report.paths) - {b""}

    def read(self, path: bytes) -> bytes:
        tree = self.ok()
        ino = tree.resolve(path)
        assert ino, f"{path!r} is not in the tree: {sorted(self.paths())}"
        return tree.read(ino, 0, tree.attr(ino).size)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


class Env:
    """Archives under ``in/``, the cache under ``cache/``; nothing may appear anywhere else."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inp = root / "in"
        self.cache = root / "cache"
        self.inp.mkdir()
        self.trees: list[ImageTree] = []
        self.inputs: dict[Path, str] = {}
        self._n = 0

    def path(self, name: str | None = None) -> Path:
        self._n += 1
        return self.inp / (name or f"a{self._n}.tar")

    def written(self, p: Path) -> Path:
        """Record an input archive so the teardown can check it was not modified."""
        self.inputs[p] = hashlib.sha256(p.read_bytes()).hexdigest()
        return p

    def docker(self, *layers: Any, name: str | None = None) -> Path:
        p = self.path(name)
        write_docker_archive(str(p), list(layers))
        return self.written(p)

    def blobs(self, *blobs: bytes, config: bytes = b"{}", extra: tuple[tuple[str, bytes], ...] = ()) -> Path:
        p = self.path()
        write_blob_archive(p, list(blobs), config, extra)
        return self.written(p)

    def raw(self, data: bytes, name: str | None = None) -> Path:
        p = self.path(name)
        p.write_bytes(data)
        return self.written(p)

    def tar(self, members: list[tuple[str, bytes]], symlinks: list[tuple[str, str]] = ()) -> Path:  # type: ignore[assignment]
        p = self.path()
        write_tar(str(p), members, symlinks)
        return self.written(p)

    def load(self, archive: Path, cache: Path | None = None, **opts: Any) -> Loaded:
        """Open ``archive`` under a deadline; an ImageFSError or a checked tree."""
        handler = _Collect()
        logger = logging.getLogger("imagefs")
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)
        try:
            with ft.deadline(OPEN_TIMEOUT):
                try:
                    tree = ImageTree.open(str(archive), BuildOptions(cache_dir=str(cache or self.cache), **opts))
                except ImageFSError as e:
                    ft.check_message(e)
                    return Loaded(error=e, warnings=handler.messages)
                self.trees.append(tree)
                report = ft.check_tree(tree, ft.archive_haystack(archive))
                return Loaded(tree=tree, report=report, warnings=handler.messages)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)

    def close(self) -> None:
        for t in self.trees:
            t.close()
        self.trees.clear()

    def stray_files(self) -> list[str]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            d = Path(dirpath)
            if d == self.inp or self.cache in (d, *d.parents):
                continue
            out += [str(d / f) for f in files]
        for p, digest in self.inputs.items():
            if not p.exists() or hashlib.sha256(p.read_bytes()).hexdigest() != digest:
                out.append(f"{p} (an input archive) was modified")
        return out


SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A sandbox (on tmpfs when there is one: every index written is fsync'ed) whose
    $TMPDIR, $XDG_CACHE_HOME and working directory are inside it; afterwards only its
    cache directory may have gained files, and the input archives must be unchanged."""
    import shutil

    root = Path(tempfile.mkdtemp(prefix="imagefs-hostile-", dir=SCRATCH)) if SCRATCH else tmp_path
    for d in ("systmp", "cwd", "xdg"):
        (root / d).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root / "systmp"))
    monkeypatch.setenv("TMPDIR", str(root / "systmp"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg"))
    monkeypatch.chdir(root / "cwd")
    e = Env(root)
    try:
        yield e
    finally:
        e.close()
        stray = e.stray_files()
        monkeypatch.undo()
        if root != tmp_path:
            shutil.rmtree(root, ignore_errors=True)
            stray += [str(p) for p in tmp_path.rglob("*")]  # pytest's own tmp_path stays empty too
    assert not stray, f"files written outside the cache directory: {stray}"


def layer(*entries: Any) -> bytes:
    return layer_tar(list(entries))


# -- member paths --------------------------------------------------------------------------


def test_dotdot_absolute_dot_slash_and_repeated_slashes_stay_inside(env: Env) -> None:
    raw = b"".join([
        entry(b"../../etc/passwd", b"root:x:0:0:image\n"),
        entry(b"/abs/file", b"absolute\n"),
        entry(b"./dot/file", b"dot\n"),
        entry(b"a//b///c", b"slashes\n"),
        entry(b"a/./b/../d", b"dots\n"),
        entry(b"x/../../../../y", b"climb\n"),
        entry(b"..", typeflag=b"5", mode=0o700),
        entry(b"/", typeflag=b"5", mode=0o711),
        entry(b"../", typeflag=b"5", mode=0o755),
    ]) + EOA
    got = env.load(env.docker(raw))
    assert got.paths() == {b"etc", b"etc/passwd", b"abs", b"abs/file", b"dot", b"dot/file",
                           b"a", b"a/b", b"a/b/c", b"a/d", b"y"}
    assert got.read(b"etc/passwd") == b"root:x:0:0:image\n"
    assert got.read(b"y") == b"climb\n"
    # "..", "/" and "../" all name the root: the last one's attributes win, nothing is added.
    assert stat.S_IMODE(got.ok().attr(1).mode) == 0o755


def test_the_host_file_system_is_never_consulted(env: Env) -> None:
    """Names of host files inside the image give the image's bytes, never the host's."""
    host = Path("/etc/hostname")
    got = env.load(env.docker(layer(file("etc/hostname", b"image-hostname\n"), symlink("h", "/etc/hostname"))))
    assert got.read(b"etc/hostname") == b"image-hostname\n"
    assert got.ok().read(got.ok().resolve(b"h"), 0, 100) == b""  # a symlink has no data; never followed
    if host.exists():
        assert host.read_bytes() != b"image-hostname\n"


def test_overlong_pax_names_and_link_targets(env: Env) -> None:
    deep = b"/".join([b"d%04d" % i + b"-" * 15 for i in range(500)]) + b"/leaf"  # 10 KB, 500 levels
    wide = b"w" * 10240                                                        # one 10 KB component
    target = b"../" * 3000 + b"etc/passwd"                                     # a 9 KB symlink target
    raw = (pax([(b"path", deep)]) + entry(b"ignored", b"deep\n")
           + pax([(b"path", wide)]) + entry(b"ignored2", b"wide\n")
           + pax([(b"linkpath", target)]) + entry(b"lnk", typeflag=b"2")
           + pax([(b"path", b"h"), (b"linkpath", wide)]) + entry(b"ignored3", typeflag=b"1")
           + EOA)
    got = env.load(env.docker(raw))
    assert got.read(deep) == b"deep\n"
    assert got.read(wide) == b"wide\n"
    tree = got.ok()
    assert tree.readlink(tree.resolve(b"lnk")) == target  # verbatim, however long
    assert tree.resolve(b"h") == tree.resolve(wide)
    assert tree.attr(tree.resolve(wide)).nlink == 2


def test_nul_in_a_name_is_skipped_with_a_warning(env: Env) -> None:
    raw = pax([(b"path", b"bad\0name")]) + entry(b"x", b"nul\n") + entry(b"good", b"good\n") + EOA
    got = env.load(env.docker(raw))
    assert got.paths() == {b"good"}
    assert any("NUL" in w for w in got.warnings)


def test_gnu_long_name_with_dotdot(env: Env) -> None:
    long = b"../" * 40 + b"etc/" + b"n" * 200
    raw = (raw_header(b"././@LongLink", size=len(long) + 1, typeflag=b"L") + pad(long + b"\0")
           + entry(b"short", b"gnu long\n") + EOA)
    got = env.load(env.docker(raw))
    assert got.paths() == {b"etc", b"etc/" + b"n" * 200}


# -- symlinks --------------------------------------------------------------------------------


SYMLINKS = {
    b"etc/shadow": b"/etc/shadow",
    b"up": b"../../../../../../etc/passwd",
    b"root": b"/",
    b"dotdot": b"..",
    b"loop1": b"loop2",
    b"loop2": b"loop1",
    b"self": b"self",
    b"deep/er/x": b"../../../../proc/self/root",
    b"empty-ish": b"./",
}


def test_symlinks_out_of_the_root_and_loops_are_shown_verbatim_never_followed(env: Env) -> None:
    got = env.load(env.docker(layer(*(symlink(k, v) for k, v in SYMLINKS.items()))))
    tree = got.ok()
    for path, target in SYMLINKS.items():
        ino = tree.resolve(path)
        assert stat.S_ISLNK(tree.attr(ino).mode), path
        assert tree.readlink(ino) == target, path
        assert tree.read(ino, 0, 1 << 16) == b""
    # Lookups never go through a symlink: nothing "below" one exists.
    for below in (b"root/etc/passwd", b"up/x", b"loop1/a", b"self/self", b"dotdot/etc/shadow"):
        assert tree.resolve(below) == 0


def test_entries_below_a_symlinked_directory_do_not_follow_it(env: Env) -> None:
    """Layer 1: etc -> /etc and lib -> ../../usr/lib; layer 2 writes through them.
    The writes land in directories of the image, never where the links point."""
    got = env.load(env.docker(
        layer(symlink("etc", "/etc"), symlink("lib", "../../usr/lib"), file("usr/lib/keep", b"keep\n")),
        layer(file("etc/passwd", b"evil\n"), file("lib/libc.so", b"evil lib\n")),
    ))
    tree = got.ok()
    assert stat.S_ISDIR(tree.attr(tree.resolve(b"etc")).mode)
    assert got.read(b"etc/passwd") == b"evil\n"
    assert got.read(b"lib/libc.so") == b"evil lib\n"
    assert tree.resolve(b"usr/lib/libc.so") == 0
    assert got.read(b"usr/lib/keep") == b"keep\n"


def test_outer_archive_links_out_of_the_archive_are_not_followed(env: Env) -> None:
    """docker-archive layers are often symlinks inside the outer tar; pointing them at
    host paths must not read the host."""
    lay = layer(file("x", b"x\n"))
    for target in ("/etc/passwd", "../../../../../etc/passwd", "/proc/self/environ"):
        p = env.tar(
            [("manifest.json", json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()),
             ("c.json", b"{}"), ("unused.tar", lay)],
            symlinks=[("l/layer.tar", target)],
        )
        e = env.load(p).err()
        assert isinstance(e, ImageFormatError)
        assert "root:" not in str(e)


# -- hard links -------------------------------------------------------------------------------


def test_hard_link_out_of_the_root_is_capped_at_the_root(env: Env) -> None:
    got = env.load(env.docker(layer(file("etc/passwd", b"image passwd\n"),
                                    hardlink("copy", "../../../etc/passwd"),
                                    hardlink("abs", "/etc/passwd"))))
    tree = got.ok()
    assert tree.resolve(b"copy") == tree.resolve(b"abs") == tree.resolve(b"etc/passwd")
    assert tree.attr(tree.resolve(b"copy")).nlink == 3
    assert got.read(b"copy") == b"image passwd\n"


@pytest.mark.parametrize("links, survivors, warns", [
    ([hardlink("h", "missing")], set(), "missing"),
    ([hardlink("h", "../../../../etc/shadow")], set(), "missing"),
    ([hardlink("h", "later"), file("later", b"later\n")], {b"later"}, "missing"),
    ([dir("d"), hardlink("h", "d")], {b"d"}, "directory"),
    ([hardlink("h", "h")], set(), "missing"),
    ([hardlink("h", "/")], set(), "impossible target"),
    ([hardlink("h", "..")], set(), "impossible target"),
    ([file("a", b"a\n"), hardlink("b", "a"), hardlink("c", "b"), hardlink("d", "c")], {b"a", b"b", b"c", b"d"}, None),
], ids=["missing", "outside-missing", "later", "directory", "itself", "root", "dotdot", "chain"])
def test_hard_link_oddities(env: Env, links: list[Any], survivors: set[bytes], warns: str | None) -> None:
    got = env.load(env.docker(layer(*links)))
    assert got.paths() == survivors
    if warns:
        assert any(warns in w for w in got.warnings), got.warnings
    if survivors == {b"a", b"b", b"c", b"d"}:
        tree = got.ok()
        assert {tree.resolve(p) for p in survivors} == {tree.resolve(b"a")}
        assert tree.attr(tree.resolve(b"a")).nlink == 4


def test_hard_link_to_a_member_of_the_next_layer_is_skipped(env: Env) -> None:
    got = env.load(env.docker(layer(hardlink("h", "f")), layer(file("f", b"f\n"))))
    assert got.paths() == {b"f"}


def test_hard_link_to_itself_over_a_lower_file_keeps_the_file(env: Env) -> None:
    got = env.load(env.docker(layer(file("f", b"lower\n")), layer(hardlink("f", "f"))))
    assert got.read(b"f") == b"lower\n"
    assert got.ok().attr(got.ok().resolve(b"f")).nlink == 1


def test_hard_link_keeps_its_content_when_the_target_is_whited_out(env: Env) -> None:
    got = env.load(env.docker(layer(file("t", b"target\n"), hardlink("h", "t")), layer(whiteout("t"))))
    assert got.paths() == {b"h"}
    assert got.read(b"h") == b"target\n"
    assert got.ok().attr(got.ok().resolve(b"h")).nlink == 1


# -- whiteouts --------------------------------------------------------------------------------


def test_whiteouts_of_the_root_dotdot_and_nothing(env: Env) -> None:
    lower = layer(file("keep", b"k\n"), file("d/x", b"x\n"))
    upper = b"".join([
        entry(b".wh.", mode=0), entry(b".wh..", mode=0), entry(b".wh...", mode=0),
        entry(b"d/.wh..", mode=0), entry(b"d/.wh...", mode=0), entry(b"d/.wh.", mode=0),
        entry(b".wh.does-not-exist", mode=0), entry(b"nodir/.wh.x", mode=0),
        entry(b"../.wh.keep-not", mode=0), entry(b".wh..wh.plnk", mode=0), entry(b".wh..wh.aufs", mode=0),
    ]) + EOA
    got = env.load(env.docker(lower, upper))
    assert got.paths() == {b"keep", b"d", b"d/x"}


def test_opaque_whiteout_of_the_root_hides_every_lower_layer(env: Env) -> None:
    got = env.load(env.docker(layer(file("a", b"a\n"), file("d/b", b"b\n")),
                              layer(opaque(""), file("new", b"new\n"))))
    assert got.paths() == {b"new"}


def test_whiteout_names_in_odd_places(env: Env) -> None:
    got = env.load(env.docker(
        layer(file("a/b", b"b\n"), file("c", b"c\n")),
        layer(dir("a/.wh.b"),                       # a whiteout with a directory's type
              file(".wh.c/inside", b"inside\n"),    # ".wh.c" as a parent directory
              symlink("a/.wh..wh..opq", "/etc"),    # an opaque marker that is a symlink
              hardlink(".wh.x", "c")),              # a whiteout that is a hard link
    ))
    assert got.paths() == {b"a", b"c", b".wh.c", b".wh.c/inside"}


def test_whiteout_hides_only_lower_layers_whatever_the_member_order(env: Env) -> None:
    got = env.load(env.docker(layer(file("f", b"lower\n")),
                              layer(file("f", b"upper\n"), whiteout("f"))))
    assert got.read(b"f") == b"upper\n"


# -- headers -----------------------------------------------------------------------------------


def _patched(name: bytes, data: bytes, lo: int, hi: int, value: bytes) -> bytes:
    h = bytearray(raw_header(name, size=len(data)))
    h[lo:hi] = value
    return with_checksum(h) + pad(data)


def test_bad_checksum_is_a_one_line_error_naming_the_layer(env: Env) -> None:
    good = entry(b"ok", b"fine\n")
    bad = bytearray(entry(b"evil", b"data\n"))
    bad[0] ^= 1
    e = env.load(env.docker(good + bytes(bad) + EOA)).err()
    assert isinstance(e, ArchiveError)
    assert "layer 1" in str(e) and "checksum" in str(e)


@pytest.mark.parametrize("raw, why", [
    (_patched(b"f", b"", 124, 136, b"\xff" * 12) + EOA, "negative size"),
    (_patched(b"f", b"", 124, 136, b"\xff" + b"\x00" * 3 + b"\xff" * 8) + EOA, "negative size"),
    (_patched(b"f", b"", 124, 136, b"77777777777\x00") + EOA, "needs data"),
    (_patched(b"f", b"", 124, 136, b"\x80" + b"\xff" * 11) + EOA, "needs data"),
    (_patched(b"f", b"", 124, 136, b"0000000009z\x00") + EOA, "bad size"),
    (pax([(b"size", b"%d" % 2**62)]) + entry(b"f", b"x") + EOA, "needs data"),
    (pax([(b"size", b"-1")]) + entry(b"f", b"x") + EOA, "negative"),
    (pax([(b"size", b"1" * 5000)]) + entry(b"f", b"x") + EOA, "PAX size"),
    (raw_header(b"f", size=10_000) + b"only a little", "needs data"),
    (raw_header(b"f", size=0)[:300], "ends inside a header"),
    (pax([(b"path", b"x")])[:700], "truncated"),
], ids=["b256-neg", "b256-neg2", "octal-huge", "b256-huge", "octal-garbage", "pax-2**62", "pax-neg",
        "pax-5000-digits", "past-end", "short-header", "short-pax"])
def test_impossible_sizes_are_one_line_errors(env: Env, raw: bytes, why: str) -> None:
    e = env.load(env.docker(raw)).err()
    assert isinstance(e, ArchiveError)
    assert why in str(e), str(e)


@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_huge_pax_size_in_a_compressed_layer(env: Env, comp: str) -> None:
    """The stream length is unknown until decompressed: skipping 2**62 bytes must end fast."""
    raw = pax([(b"size", b"%d" % 2**62)]) + entry(b"f", b"x") + EOA
    p = env.path()
    write_oci_archive(str(p), [raw], compression=comp)
    env.written(p)
    assert isinstance(env.load(p).err(), ArchiveError)


def test_base256_fields_that_fit(env: Env) -> None:
    raw = (_patched(b"neg-uid", b"n\n", 108, 116, b"\xff" * 8)
           + _patched(b"big-uid", b"b\n", 108, 116, b"\x80\x00\x00\x01" + b"\x00" * 4)
           + _patched(b"b256-size", b"", 124, 136, b"\x80" + b"\x00" * 11)
           + _patched(b"b256-mode", b"m\n", 100, 108, b"\x80" + b"\x00" * 6 + b"\x01")
           + EOA)
    got = env.load(env.docker(raw))
    tree = got.ok()
    assert tree.attr(tree.resolve(b"neg-uid")).uid == 0
    assert tree.attr(tree.resolve(b"big-uid")).uid == 0
    assert any("impossible owner -1:0" in w for w in got.warnings)
    assert tree.attr(tree.resolve(b"b256-size")).size == 0


OUT_OF_RANGE = {
    "b256-mtime": _patched(b"f", b"", 136, 148, b"\x80" + b"\xff" * 11) + EOA,
    "b256-negative-mtime": _patched(b"f", b"", 136, 148, b"\xff" + b"\x00" * 11) + EOA,
    "pax-mtime": pax([(b"mtime", b"9" * 30)]) + entry(b"f") + EOA,
    "pax-negative-mtime": pax([(b"mtime", b"-" + b"9" * 30)]) + entry(b"f") + EOA,
    "sparse-offset": pax([(b"GNU.sparse.map", b"%d,1" % 2**70), (b"GNU.sparse.realsize", b"5")])
    + entry(b"f", b"x") + EOA,
    "sparse-realsize": pax([(b"GNU.sparse.map", b"0,1"), (b"GNU.sparse.realsize", b"%d" % 2**70)])
    + entry(b"f", b"x") + EOA,
}


@pytest.mark.parametrize("raw", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_fields_out_of_the_index_range(env: Env, raw: bytes) -> None:
    env.load(env.docker(raw))


def test_sparse_map_longer_than_the_stored_data(env: Env) -> None:
    raw = (pax([(b"GNU.sparse.map", b"0,600"), (b"GNU.sparse.realsize", b"600")]) + entry(b"f", b"A" * 10)
           + entry(b"secret", b"S" * 100) + EOA)
    got = env.load(env.docker(raw))
    if got.error is None:
        try:
            data = got.read(b"f")
        except OSError as e:
            assert e.errno == errno.EIO
            return
        assert b"secret" not in data and b"S" * 100 not in data, "another member's bytes read as this file's"


# -- truncation --------------------------------------------------------------------------------


def _cuts(n: int, every_byte: bool) -> list[int]:
    if every_byte:
        return list(range(n))
    return sorted(set(range(0, n, 512)) | set(range(1, n, 389)) | {n - 1, n - 511, n - 1023})


@dataclass(frozen=True)
class Cut:
    """The outcome of opening one truncation of an archive (the tree already checked)."""

    error: str | None
    paths: frozenset[bytes]
    warned: bool


_SWEEPS: dict[tuple[str, bool], dict[int, Cut]] = {}


def _sweep(key: str, data: bytes, every_byte: bool) -> dict[int, Cut]:
    """Open every cut of ``data`` (each with its own cache, on tmpfs when there is one:
    every index is fsync'ed).  Cached per module so the crash test and the silent-change
    test share one sweep.  Nothing may be written outside the cache directories."""
    if (key, every_byte) in _SWEEPS:
        return _SWEEPS[(key, every_byte)]
    out = {}
    with tempfile.TemporaryDirectory(prefix="imagefs-sweep-", dir=SCRATCH) as tmp:
        env = Env(Path(tmp))
        for cut in _cuts(len(data), every_byte):
            if cut < 0:
                continue
            p = env.raw(data[:cut], name=f"cut-{cut}.tar")
            got = env.load(p, cache=env.cache / f"c{cut}")
            out[cut] = Cut(type(got.error).__name__ if got.error else None,
                           frozenset(got.paths()) if got.error is None else frozenset(),
                           any(w.startswith("WARNING") for w in got.warnings))
            env.close()
            p.unlink()
            env.inputs.pop(p)
        stray = env.stray_files()
        assert not stray, f"files written outside the cache directory: {stray}"
    _SWEEPS[(key, every_byte)] = out
    return out


def _full(data: bytes) -> frozenset[bytes]:
    with tempfile.TemporaryDirectory(prefix="imagefs-sweep-", dir=SCRATCH) as tmp:
        env = Env(Path(tmp))
        try:
            return frozenset(env.load(env.raw(data)).paths())
        finally:
            env.close()


def _built_archive(tmp: Path) -> bytes:
    p = tmp / "built.tar"
    write_docker_archive(str(p), [
        [dir("etc"), file("etc/a", b"a" * 700), symlink("etc/l", "../../etc/a"), hardlink("etc/h", "etc/a")],
        [whiteout("etc/a"), file("etc/b", b"b" * 1500), opaque("var")],
    ])
    data = p.read_bytes()
    p.unlink()
    return data


SWEEPS = {
    "built-docker": (None, False),
    "vfswh.podman-docker.tar": ("vfswh.podman-docker.tar", False),
    "vfswh.podman-docker.tar.gz": ("vfswh.podman-docker.tar.gz", True),   # every byte: 1461 cuts
    "vfswh.podman-oci.tar": ("vfswh.podman-oci.tar", False),
    "vfswh.skopeo-oci-zstd.tar": ("vfswh.skopeo-oci-zstd.tar", False),
}


@pytest.mark.parametrize("which", SWEEPS)
def test_truncated_at_every_offset_is_an_error_or_a_consistent_tree(env: Env, which: str) -> None:
    name, every_byte = SWEEPS[which]
    data = (SEED_ARCHIVES / name).read_bytes() if name else _built_archive(env.inp)
    results = _sweep(which, data, every_byte)
    assert results, "no cuts"
    errors = sum(1 for r in results.values() if r.error is not None)
    assert errors >= len(results) // 2, "most truncations should be refused"


def test_truncation_at_a_member_boundary_never_silently_serves_another_image(env: Env) -> None:
    data = (SEED_ARCHIVES / "vfswh.podman-docker.tar").read_bytes()
    want = _full(data)
    silent = [cut for cut, got in _sweep("vfswh.podman-docker.tar", data, every_byte=False).items()
              if got.error is None and got.paths != want and not got.warned]
    assert not silent, f"cuts served a different tree without a warning: {silent}"


def test_truncated_gzip_outer_archive_never_silently_serves_another_image(env: Env) -> None:
    data = (SEED_ARCHIVES / "vfswh.podman-docker.tar.gz").read_bytes()
    want = _full(data)
    silent = [cut for cut, got in _sweep("vfswh.podman-docker.tar.gz", data, every_byte=True).items()
              if got.error is None and got.paths != want and not got.warned]
    assert not silent, f"{len(silent)} cuts served a different tree without a warning: {silent[:10]}..."


def _compress(comp: str, data: bytes) -> bytes:
    if comp == "gzip":
        return gzip.compress(data, mtime=0)
    import zstandard

    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


LAYER_SEED = Path(__file__).resolve().parent / "fuzz" / "seeds" / "layers" / "small-layered-7d761c3a.tar"


@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_truncated_compressed_layers_never_crash(env: Env, comp: str) -> None:
    blob = _compress(comp, LAYER_SEED.read_bytes())
    for cut in range(0, len(blob), 7):
        env.load(env.blobs(blob[:cut]), cache=env.cache / f"c{cut}")
        env.close()


@pytest.mark.parametrize("comp", [
    "gzip",
    "zstd",
])
def test_truncated_compressed_layer_is_an_error_not_a_shorter_layer(env: Env, comp: str) -> None:
    tar = LAYER_SEED.read_bytes()
    blob = _compress(comp, tar)
    want = env.load(env.blobs(blob)).paths()
    silent = []
    for cut in range(len(blob) // 8, len(blob) - 8, 5):  # leave the trailer/checksum out of it
        got = env.load(env.blobs(blob[:cut]), cache=env.cache / f"c{cut}")
        if got.error is None and got.paths() != want and not any(w.startswith("WARNING") for w in got.warnings):
            silent.append(cut)
        env.close()
    assert not silent, f"{len(silent)} cuts of the {comp} layer gave a shorter tree silently, e.g. {silent[:5]}"


# -- compressed layers: corruption -------------------------------------------------------------


@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_corrupt_compressed_layer_is_an_error_or_eio_never_garbage(env: Env, comp: str) -> None:
    """Flip one bit at every position: a mount-time error, EIO on read, or the original bytes."""
    tar = (SEED_ARCHIVES.parent / "layers" / "vfswh-1.tar").read_bytes()
    blob = _compress(comp, tar)
    garbage = []
    for i in range(10, len(blob)):
        b = bytearray(blob)
        b[i] ^= 0x10
        got = env.load(env.blobs(bytes(b)), cache=env.cache / f"c{i}")
        if got.error is None:
            tree = got.ok()
            for p, ino in got.report.paths.items():  # type: ignore[union-attr]
                a = tree.attr(ino)
                if stat.S_ISREG(a.mode) and a.size:
                    try:
                        data = tree.read(ino, 0, a.size)
                    except OSError as e:
                        assert e.errno == errno.EIO
                        continue
                    if data not in tar:
                        garbage.append((i, p))
        env.close()
    assert not garbage, f"reads returned bytes the original layer does not hold: {garbage[:5]}"


def test_corrupt_zstd_without_checksum_is_caught_by_verify(env: Env) -> None:
    """zstd frames without a content checksum cannot tell corrupt bytes from good ones;
    --verify (the layer digest) must refuse them."""
    import zstandard

    tar = (SEED_ARCHIVES.parent / "layers" / "vfswh-1.tar").read_bytes()
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=False).compress(tar))
    blob[len(blob) // 2] ^= 0x10
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    p = env.blobs(bytes(blob), config=json.dumps({"rootfs": {"diff_ids": [diff_id]}}).encode())
    got = env.load(p, verify=True)
    assert isinstance(got.err(), (IntegrityError, ArchiveError))


def test_corrupt_gzip_layer_is_not_blamed_on_the_cache(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    tar = LAYER_SEED.read_bytes()
    blob = bytearray(gzip.compress(tar, mtime=0))
    for i in range(20, len(blob) - 8, 97):
        blob[i] ^= 0x55
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    temps: list[str] = []
    real = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: temps.append("x") or real(*a, **k))
    got = env.load(env.blobs(bytes(blob), config=json.dumps({"rootfs": {"diff_ids": [diff_id]}}).encode()))
    assert isinstance(got.err(), ArchiveError)
    assert not any("cache" in w for w in got.warnings), got.warnings
    assert not temps, "indexed a second time, outside the cache directory"


def test_the_layer_cache_does_not_change_what_an_archive_shows(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache of scanned layers is used only with the pure-Python scanner.
    from imagefs import tarscan

    monkeypatch.setattr(tarscan, "_tarfast", None)
    rnd = __import__("random").Random(7)
    big = [file(f"pad{i:03d}", rnd.randbytes(1000)) for i in range(80)]
    x = layer(*big, file("z-good", b"good\n"))
    y = layer(*big, file("z-good", b"good\n"), file("z-hidden", b"malware\n"))
    assert x[:1 << 16] == y[:1 << 16]
    config = json.dumps({"rootfs": {"diff_ids": ["sha256:" + hashlib.sha256(x).hexdigest()]}}).encode()
    px, py = env.blobs(x, config=config), env.blobs(y, config=config)
    fresh = env.load(py, cache=env.cache / "fresh").paths()
    assert b"z-hidden" in fresh
    env.load(px)
    assert list(env.cache.rglob("layers/*")), "the scan of x was not kept: this test tests nothing"
    assert env.load(py).paths() == fresh


# -- decompression bombs --------------------------------------------------------------------------


_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
    sys.path[:0] = sys.argv[4].split(os.pathsep)
    from imagefs.build import BuildOptions
    from imagefs.errors import ImageFSError
    from imagefs.tree import ImageTree
    t = time.monotonic()
    out = {}
    try:
        tree = ImageTree.open(sys.argv[1], BuildOptions(cache_dir=sys.argv[2]))
        out["names"] = [n.decode() for n in tree.listdir(tree.root)]
        ino = tree.resolve(b"big")
        if ino:
            size = tree.attr(ino).size
            out["size"] = size
            tail = tree.read(ino, max(0, size - 4096), 4096)
            out["tail_zero"] = tail == bytes(len(tail))
        out["result"] = "tree"
    except ImageFSError as e:
        out["result"] = "ImageFSError: " + str(e)
    except BaseException as e:
        out["result"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.monotonic() - t
    # VmHWM: the peak RSS of this process image.  (ru_maxrss would also count the
    # parent's memory when the child was started with vfork.)
    with open("/proc/self/status") as f:
        hwm = [line for line in f if line.startswith("VmHWM:")]
    out["maxrss_mb"] = (int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
    print(json.dumps(out))
""")


def _run_bomb(env: Env, archive: Path, limit_mb: int = 2048, timeout: float = 120.0) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(archive), str(env.cache), str(limit_mb << 20), str(root)],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _baseline_mb(env: Env) -> float:
    return float(_run_bomb(env, env.docker(layer(file("small", b"s\n"))))["maxrss_mb"])


def test_gzip_of_10_mb_of_zeros_as_a_layer(env: Env) -> None:
    """10 MB of gzip is 10 GiB of zeros: an empty tar (its first block is zero), read at once."""
    bomb = ft.gzip_bomb(b"", 10 * 1024)
    assert 9 << 20 < len(bomb) < 12 << 20
    base = _baseline_mb(env)
    out = _run_bomb(env, env.blobs(bomb))
    assert out["result"] == "tree" and out["names"] == []
    assert out["seconds"] < 10
    assert out["maxrss_mb"] - base < 64, out
    assert sum(f.stat().st_size for f in env.cache.rglob("*") if f.is_file()) < 16 << 20


def test_gzip_of_zeros_after_a_broken_header_fails_at_once(env: Env) -> None:
    """The scan fails at its second header; the CRC check beside it must stop near
    there too, not inflate the 10 GiB of zeros that follow to reach the trailer."""
    broken = bytearray(raw_header(b"second", size=3))
    broken[148:156] = b"0000000\0"  # a checksum that does not match
    bomb = ft.gzip_bomb(entry(b"first", b"1") + bytes(broken), 10 * 1024)
    out = _run_bomb(env, env.blobs(bomb))
    assert out["result"].startswith("ImageFSError: ") and "checksum mismatch" in out["result"], out
    assert out["seconds"] < 10, out


def test_gzip_bomb_behind_a_huge_member_stays_within_bounds(env: Env) -> None:
    """512 KiB of gzip declaring a 512 MiB file: the scan must skip it by decompressing,
    the memory it keeps (seek points) stays a small fraction of that, reads work."""
    mib = 512
    bomb = ft.gzip_bomb(raw_header(b"big", size=(mib << 20) - 4096), mib)
    base = _baseline_mb(env)
    out = _run_bomb(env, env.blobs(bomb))
    assert out["result"] == "tree", out
    assert out["size"] == (mib << 20) - 4096 and out["tail_zero"]
    assert out["maxrss_mb"] - base < 64, out   # seek points: ~32 KiB per MiB decompressed
    assert out["seconds"] < 60, out


def _zstd_zeros(prefix: bytes, mib: int) -> bytes:
    import zstandard

    buf = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(buf, closefd=False, size=len(prefix) + (mib << 20)) as w:
        w.write(prefix)
        zero = bytes(1 << 20)
        for _ in range(mib):
            w.write(zero)
    return buf.getvalue()


def test_zstd_bomb_stays_within_bounds(env: Env) -> None:
    bomb = _zstd_zeros(b"", 512)
    assert len(bomb) < 64 << 10
    base = _baseline_mb(env)
    out = _run_bomb(env, env.blobs(bomb), limit_mb=1536)
    assert out["result"] == "tree", out
    assert out["maxrss_mb"] - base < 128, out


# -- manifests ------------------------------------------------------------------------------------


def _docker_members(manifest: Any, config: bytes = b"{}", layers: dict[str, bytes] | None = None) -> list[tuple[str, bytes]]:
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    members = [("manifest.json", raw), ("config.json", config)]
    members += list((layers if layers is not None else {"l.tar": layer(file("x", b"x\n"))}).items())
    return members


@pytest.mark.parametrize("manifest", [
    b"", b"{not json", b"\xff\xfe\x00", b"null", b"1e999999", b"[]", b"{}", b'"a string"', b"[1, 2]",
    b'[{"Config": "config.json"}]', b'[{"Layers": ["l.tar"]}]', b'[{"Config": "config.json", "Layers": "l.tar"}]',
    b'[{"Config": "config.json", "Layers": [1]}]', b'[{"Config": "config.json", "Layers": [null]}]',
    b'[{"Config": "config.json", "Layers": ["l.tar"], "RepoTags": {"a": 1}}]', b"NaN", b"[" * 50 + b"]" * 50,
], ids=lambda b: b[:24].decode("ascii", "replace"))
def test_manifest_json_that_is_not_json_or_of_the_wrong_shape(env: Env, manifest: bytes) -> None:
    e = env.load(env.tar(_docker_members(manifest))).err()
    assert isinstance(e, ImageFormatError)


@pytest.mark.parametrize("name", [
    "../l.tar", "/l.tar", "../../../../etc/passwd", "/etc/passwd", "/proc/self/environ", "./l.tar/",
    "missing.tar", "", ".", "..", "l.tar/../../x",
])
def test_manifest_layers_pointing_outside_or_at_nothing(env: Env, name: str) -> None:
    e = env.load(env.tar(_docker_members([{"Config": "config.json", "Layers": [name]}]))).err()
    assert isinstance(e, ImageFormatError)
    assert "\n" not in str(e) and "root:" not in str(e)


@pytest.mark.parametrize("name", ["../config.json", "/etc/passwd", "../../../../etc/hostname", "", "l.tar/"])
def test_manifest_config_pointing_outside(env: Env, name: str) -> None:
    e = env.load(env.tar(_docker_members([{"Config": name, "Layers": ["l.tar"]}]))).err()
    assert isinstance(e, ImageFormatError)


def test_manifest_listing_a_layer_twice_applies_it_twice(env: Env) -> None:
    got = env.load(env.tar(_docker_members([{"Config": "config.json", "Layers": ["l.tar", "l.tar", "./l.tar"[2:]]}])))
    assert got.paths() == {b"x"}


def test_config_that_is_not_json(env: Env) -> None:
    for config in (b"{bad", b"\xff", b""):
        e = env.load(env.tar(_docker_members([{"Config": "config.json", "Layers": ["l.tar"]}], config=config))).err()
        assert isinstance(e, ImageFormatError)


@pytest.mark.parametrize("config", [b"[]", b"null", b"7", b'{"rootfs": 1}', b'{"rootfs": {"diff_ids": 5}}',
                                    b'{"rootfs": {"diff_ids": "sha256:abc"}}', b'{"rootfs": {"diff_ids": [[], {}]}}'])
def test_config_of_the_wrong_shape_is_tolerated(env: Env, config: bytes) -> None:
    got = env.load(env.tar(_docker_members([{"Config": "config.json", "Layers": ["l.tar"]}], config=config)))
    assert got.paths() == {b"x"}


def test_image_with_no_layers(env: Env) -> None:
    got = env.load(env.tar(_docker_members([{"Config": "config.json", "Layers": []}])))
    assert got.error is not None or got.paths() == set()


@pytest.mark.parametrize("where", ["manifest", "config"])
def test_deeply_nested_json(env: Env, where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    members = _docker_members(deep) if where == "manifest" else _docker_members(
        [{"Config": "config.json", "Layers": ["l.tar"]}], config=deep)
    env.load(env.tar(members))


@pytest.mark.parametrize("field", ["Layers", "Config"])
def test_surrogate_escapes_in_manifest_names(env: Env, field: str) -> None:
    manifest = ('[{"Config": "config.json", "Layers": ["\\ud800"]}]' if field == "Layers"
                else '[{"Config": "\\udc80", "Layers": ["l.tar"]}]').encode()
    env.load(env.tar(_docker_members(manifest)))


def _legacy(env: Env, metas: dict[str, Any], repositories: Any = None) -> Path:
    members = []
    for layer_id, meta in metas.items():
        members += [(f"{layer_id}/json", json.dumps(meta).encode()), (f"{layer_id}/layer.tar", layer(file(layer_id, b"l\n")))]
    if repositories is not None:
        members.append(("repositories", json.dumps(repositories).encode()))
    return env.tar(members)


@pytest.mark.parametrize("repos", [None, {"r": {"t": "a"}}], ids=["no-repositories", "repositories"])
@pytest.mark.parametrize("metas", [
    {"a": {"parent": "b"}, "b": {"parent": "a"}},
    {"a": {"parent": "a"}},
    {"a": {"parent": "b"}, "b": {"parent": "c"}, "c": {"parent": "b"}},
], ids=["two", "self", "tail-loop"])
def test_legacy_parent_loops(env: Env, metas: dict[str, Any], repos: Any) -> None:
    e = env.load(_legacy(env, metas, repos)).err()
    assert isinstance(e, ImageFormatError)
    assert "loop" in str(e) or "every layer is a parent" in str(e)


@pytest.mark.parametrize("repos", [
    {"r": {"t": "../../etc"}}, {"r": {"t": "/etc/passwd"}}, {"r": {"t": "missing"}}, {"r": "x"}, [], {"r": {"t": None}},
])
def test_legacy_repositories_pointing_outside(env: Env, repos: Any) -> None:
    e = env.load(_legacy(env, {"a": {}}, repos)).err()
    assert isinstance(e, ImageFormatError)


def test_legacy_parent_of_the_wrong_type(env: Env) -> None:
    env.load(_legacy(env, {"a": {"parent": ["b"]}}))


def test_legacy_layer_id_with_a_surrogate(env: Env) -> None:
    p = env.tar([("repositories", b'{"r": {"t": "\\ud800"}}'), ("a/layer.tar", layer(file("x")))])
    env.load(p)


def _oci(env: Env, mutate: Any) -> Path:
    src = env.path()
    write_oci_archive(str(src), [layer(file("x", b"x\n"))])
    with tarfile.open(src) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]
    src.unlink()
    index = json.loads(members["index.json"])
    mutate(index, members)
    members["index.json"] = json.dumps(index).encode()
    return env.tar(list(members.items()))


@pytest.mark.parametrize("digest", ["sha256:../../../etc/passwd", "sha256:/etc/passwd", "../x", "sha256:",
                                    ":", "sha256:abc/../def", 7, None, "sha256:" + "0" * 64])
def test_oci_digests_pointing_outside(env: Env, digest: Any) -> None:
    def mutate(index: Any, _m: Any) -> None:
        index["manifests"][0]["digest"] = digest
    e = env.load(_oci(env, mutate)).err()
    assert isinstance(e, ImageFormatError)


def test_oci_index_that_contains_itself(env: Env) -> None:
    def mutate(index: Any, members: dict[str, bytes]) -> None:
        loop = {"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
        raw = json.dumps(loop).encode()
        # An index blob that names itself: its digest must be known before writing it,
        # so name it by a made-up digest and point the blob at that name.
        fake = "sha256:" + "ab" * 32
        loop["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": fake}]
        members["blobs/sha256/" + "ab" * 32] = json.dumps(loop).encode()
        index["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": fake}]
        del raw
    e = env.load(_oci(env, mutate)).err()
    assert "nest too deep" in str(e)


def test_oci_media_type_of_the_wrong_type(env: Env) -> None:
    def mutate(index: Any, _m: Any) -> None:
        index["manifests"][0]["mediaType"] = ["application/vnd.oci.image.index.v1+json"]
    env.load(_oci(env, mutate))


def test_oci_ref_name_of_the_wrong_type(env: Env) -> None:
    def mutate(index: Any, _m: Any) -> None:
        index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": ["x"]}
    p = _oci(env, mutate)
    env.load(p, image="x")


# -- inputs whose cost grows faster than their size ------------------------------------------------


@pytest.fixture
def budget() -> Any:
    """``with budget(s):`` fails the test (instead of hanging it) if the block takes longer."""
    from contextlib import contextmanager

    @contextmanager
    def within(seconds: float) -> Iterator[None]:
        try:
            with ft.deadline(seconds):
                yield
        except ft.Runaway:
            pytest.fail(f"did not finish within {seconds} s", pytrace=False)

    return within


def test_linear_controls_finish_fast(env: Env, budget: Any) -> None:
    """The same shapes as the quadratic cases below, at sizes where the cost is linear."""
    from imagefs.tarscan import scan

    data = (pax([(b"k%d" % i, b"v") for i in range(200)], typeflag=b"g")
            + b"".join(entry(b"f%d" % i) for i in range(800)) + EOA)
    with budget(2.0):
        assert len(list(scan(ft.BytesReader(data), len(data)))) == 800
        got = env.load(env.docker(pax([(b"path", b"a/" * 300 + b"leaf")]) + entry(b"x", b"x\n") + EOA))
    assert got.error is None


def test_member_path_with_many_components_is_not_quadratic(env: Env, budget: Any) -> None:
    raw = pax([(b"path", b"a/" * 32768 + b"leaf")]) + entry(b"x", b"x\n") + EOA
    p = env.docker(raw)
    with budget(3.0):
        env.load(p)


def test_pax_global_records_are_not_reapplied_per_member(budget: Any) -> None:
    from imagefs.tarscan import scan

    data = (pax([(b"k%d" % i, b"v") for i in range(20000)], typeflag=b"g")
            + b"".join(entry(b"f%d" % i) for i in range(800)) + EOA)
    with budget(3.0):
        assert len(list(scan(ft.BytesReader(data), len(data)))) == 800


def test_sparse_map_parsing_is_not_quadratic(budget: Any) -> None:
    from imagefs.errors import TarFormatError
    from imagefs.tarscan import scan

    body = pad(b"999999999\n" + b"1\n" * (1 << 19))
    data = (pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", b"f"),
                 (b"GNU.sparse.realsize", b"10")])
            + entry(b"GNUSparseFile.0/f", body) + EOA)
    with budget(3.0):
        with pytest.raises(TarFormatError):
            list(scan(ft.BytesReader(data), len(data)))


def test_the_library_refuses_inodes_and_offsets_that_are_not_there(env: Env) -> None:
    """FUSE never passes these, a library caller may: a negative offset read the tar
    header before the file's data, an inode out of range read past the inode table."""
    tree = ImageTree.open(str(env.docker(entry(b"f", b"data") + EOA)), BuildOptions(use_cache=False))
    try:
        ino = tree.resolve(b"f")
        assert tree.read(ino, 0, 10) == b"data"
        with pytest.raises(ValueError, match="negative offset"):
            tree.read(ino, -512, 512)
        for bad in (0, -1, tree.index.n_inodes + 1, tree.resolve(b"missing")):
            with pytest.raises(ValueError, match="no inode"):
                tree.attr(bad)
            with pytest.raises(ValueError, match="no inode"):
                tree.read(bad, 0, 10)
    finally:
        tree.close()


def test_reading_a_sparse_file_of_many_chunks_is_not_quadratic(env: Env, budget: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """200,000 one-byte chunks over 64 MiB (a 3 MB archive): each 128 KiB read finds its
    chunks by bisection, and stat does not decode the map again, or `cat` stalls the daemon
    for minutes (every read walked the whole map)."""
    n, stride = 200_000, 320
    sparse_map = b",".join(b"%d,1" % (i * stride) for i in range(n))
    stored = bytes(range(256)) * (n // 256) + bytes(n % 256)
    raw = (pax([(b"GNU.sparse.map", sparse_map), (b"GNU.sparse.realsize", b"%d" % (n * stride))])
           + entry(b"f", stored) + EOA)
    tree = ImageTree.open(str(env.docker(raw)), BuildOptions(use_cache=False))
    decoded = []
    real = tree.index.sparse_map
    monkeypatch.setattr(tree.index, "sparse_map", lambda ino: decoded.append(ino) or real(ino))
    try:
        ino = tree.resolve(b"f")
        size = tree.attr(ino).size
        assert size == n * stride
        with budget(10.0):
            for off in range(0, size, 128 << 10):
                tree.stat(ino)
                data = tree.read(ino, off, 128 << 10)
                first = -off % stride  # where the first chunk in this read is
                chunks = data[first::stride]
                k = (off + first) // stride
                assert chunks == stored[k:k + len(chunks)] and data.count(0) >= len(data) - len(chunks)
        assert decoded == [ino]  # once, for all the stats and reads
    finally:
        tree.close()


def test_oci_index_fan_out_is_bounded(env: Env, budget: Any) -> None:
    from imagefs.archive import Archive
    from imagefs.manifest import read_images

    def mutate(index: Any, members: dict[str, bytes]) -> None:
        child = index["manifests"][0]
        for _ in range(7):
            blob = json.dumps({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "manifests": [child] * 5}).encode()
            digest = hashlib.sha256(blob).hexdigest()
            members[f"blobs/sha256/{digest}"] = blob
            child = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}"}
        index["manifests"] = [child]
    p = _oci(env, mutate)
    with budget(3.0):
        archive = Archive(str(p))
        try:
            try:
                read_images(archive)
            except ImageFSError:
                pass
        finally:
            archive.close()


# -- error messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("members", [
    [("manifest.json", b'[{"Config": "config.json", "Layers": ["\\u001b[2Jx.tar"]}]'), ("config.json", b"{}")],
    [("manifest.json", b'[{"Config": "no\\nsuch.json", "Layers": []}]')],
    [("repositories", b'{"\\u001b]0;owned\\u0007": "x"}'), ("a/layer.tar", b"")],
], ids=["layer-name-esc", "config-name-newline", "repositories-key-osc"])
def test_error_messages_do_not_echo_control_characters(env: Env, members: list[tuple[str, bytes]]) -> None:
    env.load(env.tar(members)).err()  # load() checks every error message it sees
