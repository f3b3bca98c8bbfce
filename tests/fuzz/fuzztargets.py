"""Fuzz targets and invariant checks shared by tests/test_fuzz.py, tests/test_hostile.py
and the atheris driver (tests/fuzz/atheris_fuzz.py).

A *target* takes one input, runs one part of imagefs on it and raises only if
imagefs misbehaves: an exception that is not the documented one, a broken
invariant (`Violation`), or a runaway (`Runaway`).  Expected refusals
(`TarFormatError`, `ImageFSError`) are part of normal operation.

Targets:
    scan_target(data)          imagefs.tarscan.scan over one layer's bytes
    archive_target(path)       Archive + manifest.read_images + select_image
    build_target(path, cache)  the whole library pipeline: ImageTree.open, then a walk
                               of the tree that reads every file (check_tree)
    merge_target(layers)       merge.merge + index.write_index + Index (check_index)

`KNOWN_BUGS` names the failures already found and reported: `signature(exc)`
maps an exception to the id of the known bug it is, so a fuzzer can keep
going past a known bug while still failing on a new one.  Each known bug also
has an xfail(strict=True) test, so fixing it turns that test into an XPASS
that asks for the entry here to be removed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import struct
import sys
import tempfile
import traceback
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for _p in (str(TESTS.parent), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from imagefs.archive import Archive  # noqa: E402
from imagefs.build import BuildOptions  # noqa: E402
from imagefs.errors import ImageFSError, ImageSelectError, TarFormatError  # noqa: E402
from imagefs.index import ROOT_INO, Index, write_index  # noqa: E402
from imagefs.manifest import Image, describe, read_images, select_image  # noqa: E402
from imagefs.merge import merge  # noqa: E402
from imagefs.tarscan import BLOCK, HARDLINK, Member, scan  # noqa: E402
from imagefs.tree import ImageTree  # noqa: E402

SEEDS = HERE / "seeds"
REGRESSIONS = HERE / "regressions"
KINDS = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, HARDLINK}


class Violation(AssertionError):
    """imagefs broke an invariant (not an exception of its own).  ``kind`` names the
    invariant, so a known violation can be told from a new one."""

    def __init__(self, message: str, kind: str = "invariant") -> None:
        super().__init__(message)
        self.kind = kind


class Runaway(BaseException):
    """A run took more steps or time than its input can justify (a hang)."""


# -- known bugs ------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    id: str
    exc: str            # exception type name
    where: str          # "module.py:function" of the innermost imagefs frame
    summary: str


KNOWN_BUGS: tuple[KnownBug, ...] = (
    # Every bug found so far is fixed; add new ones here (and an xfail test) until they are.
)


def _innermost_imagefs_frame(exc: BaseException) -> str:
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = Path(frame.filename).parts
        if "imagefs" in parts[:-1]:
            where = f"{Path(frame.filename).name}:{frame.name}"
    return where


def signature(exc: BaseException) -> str:
    """``"Type@module.py:function"``: what identifies a distinct failure."""
    if isinstance(exc, Violation):
        return f"Violation@{exc.kind}"
    return f"{type(exc).__name__}@{_innermost_imagefs_frame(exc)}"


def known_bug(exc: BaseException) -> KnownBug | None:
    where = exc.kind if isinstance(exc, Violation) else _innermost_imagefs_frame(exc)
    for bug in KNOWN_BUGS:
        if type(exc).__name__ == bug.exc and where == bug.where:
            return bug
    return None


# -- bounded execution -------------------------------------------------------------


# Which timer `deadline` uses.  Wall-clock by default; the atheris driver switches to
# CPU time (ITIMER_VIRTUAL), because libFuzzer keeps its own ITIMER_REAL/SIGALRM.
DEADLINE_TIMER = (signal.ITIMER_REAL, signal.SIGALRM) if hasattr(signal, "setitimer") else None


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise `Runaway` in this (main) thread if the block runs longer than ``seconds``.

    Nests: an enclosing deadline that expires sooner still fires on time.
    """
    if seconds <= 0 or DEADLINE_TIMER is None:
        yield
        return
    import time

    timer, signum = DEADLINE_TIMER
    outer_left, _ = signal.getitimer(timer)
    start = time.monotonic()
    mine = seconds if not outer_left else min(seconds, outer_left)

    def fire(_sig: int, _frame: object) -> None:
        raise Runaway(f"still running after {mine:g} s")

    old = signal.signal(signum, fire)
    signal.setitimer(timer, mine)
    try:
        yield
    finally:
        signal.setitimer(timer, 0)
        signal.signal(signum, old if old is not None else signal.SIG_DFL)
        if outer_left:
            left = outer_left - (time.monotonic() - start)
            signal.setitimer(timer, max(left, 0.001))


class BytesReader:
    """A PReader over bytes that counts its reads and stops a scan that loops."""

    def __init__(self, data: bytes, max_reads: int | None = None) -> None:
        self.data = data
        self.reads = 0
        # Every read advances by at least one block, plus the end-of-stream probe.
        self.max_reads = max_reads if max_reads is not None else 2 * (len(data) // BLOCK) + 16

    def pread(self, n: int, offset: int) -> bytes:
        self.reads += 1
        if self.reads > self.max_reads:
            raise Runaway(f"{self.reads} reads over {len(self.data)} bytes: the scan does not advance")
        if n < 0 or offset < 0:
            raise Violation(f"pread({n}, {offset}) with a negative argument")
        return self.data[offset:offset + n]


# -- tarscan ---------------------------------------------------------------------------


def check_path(path: bytes, what: str = "path") -> None:
    if b"\0" in path:
        raise Violation(f"{what} {path!r} has a NUL byte")
    if path == b"":
        return
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise Violation(f"{what} {path!r} is not normalised (component {part!r})")


def check_members(members: Sequence[Member], length: int | None) -> None:
    last = -1
    for m in members:
        if m.offset <= last:
            raise Violation(f"member {m.path!r}: data offset {m.offset} does not increase (previous {last})")
        last = m.offset
        check_path(m.path)
        if m.kind not in KINDS:
            raise Violation(f"member {m.path!r} has kind {m.kind:o}")
        if m.kind == HARDLINK:
            if not m.linkname:
                raise Violation(f"hard link {m.path!r} has an empty target")
            check_path(m.linkname, "hard link target")
        elif m.kind != stat.S_IFLNK and m.linkname:
            raise Violation(f"non-link {m.path!r} has a linkname")
        if m.size < 0 or (m.kind != stat.S_IFREG and m.size):
            raise Violation(f"member {m.path!r} has size {m.size}")
        if not (0 <= m.uid <= 0xFFFFFFFF and 0 <= m.gid <= 0xFFFFFFFF):
            raise Violation(f"member {m.path!r} has owner {m.uid}:{m.gid}")
        if m.mode & ~0o7777:
            raise Violation(f"member {m.path!r} has mode {m.mode:o}")
        if length is not None and m.kind == stat.S_IFREG and m.sparse is None and m.offset + m.size > length:
            raise Violation(f"member {m.path!r}: data [{m.offset}, +{m.size}) runs past the stream ({length})")
        if m.sparse is not None and any(o < 0 or n < 0 for o, n in m.sparse):
            raise Violation(f"member {m.path!r} has a negative sparse chunk {m.sparse}")


def scan_target(data: bytes, length_known: bool = True) -> list[Member] | TarFormatError:
    """Scan ``data`` as a layer; returns the members, or the TarFormatError it raised."""
    src = BytesReader(data)
    length = len(data) if length_known else None
    warnings: list[str] = []
    out: list[Member] = []
    try:
        for m in scan(src, length, warnings.append):
            out.append(m)
            if len(out) > len(data) // BLOCK + 1:
                raise Runaway(f"{len(out)} members from {len(data)} bytes")
    except TarFormatError as e:
        check_members(out, length)
        check_message(e)
        return e
    check_members(out, length)
    return out


def check_message(e: BaseException) -> None:
    """The user's line: one line, no control characters (names from the archive are
    untrusted: a raw newline or ESC in them must not reach the terminal)."""
    msg = str(e)
    if not msg.strip():
        raise Violation(f"{type(e).__name__} with an empty message", "empty-message")
    bad = sorted({c for c in msg if ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        raise Violation(f"{type(e).__name__} message has control characters {bad!r}: {msg[:300]!r}",
                        "message-control-chars")


# -- the archive and its manifests ---------------------------------------------------------


def check_images(archive: Archive, images: Sequence[Image]) -> None:
    if not images:
        raise Violation("read_images returned no images without raising")
    for img in images:
        if not isinstance(img.id, str):
            raise Violation(f"image id {img.id!r} is not a string")
        for t in img.tags:
            if not isinstance(t, str):
                raise Violation(f"image {img.id} has a tag that is not a string: {t!r}", "non-string-tag")
        for layer in img.layers:
            if not isinstance(layer.member, bytes):
                raise Violation(f"layer member {layer.member!r} is not bytes")
            if not archive.exists(layer.member):
                raise Violation(f"read_images accepted layer {layer.member!r}, which the archive does not hold")


def archive_target(path: str) -> list[Image] | ImageFSError:
    """Open the outer archive and read its images as the CLI would (images, then a choice)."""
    try:
        archive = Archive(path)
    except ImageFSError as e:
        check_message(e)
        return e
    try:
        images = read_images(archive)
        check_images(archive, images)
        describe(images)
        try:
            select_image(images, None, path)
        except ImageSelectError:
            pass
        for img in images:
            for ref in (*img.tags, img.id, "1"):
                try:
                    select_image(images, ref, path)
                except ImageSelectError:
                    pass
        return images
    except ImageFSError as e:
        check_message(e)
        return e
    finally:
        archive.close()


# -- the merged tree -----------------------------------------------------------------------


def check_index(idx: Index) -> dict[int, list[bytes]]:
    """Structural invariants of an index; returns inode -> the paths naming it."""
    names: dict[int, list[bytes]] = {}
    seen_dirs = {ROOT_INO}
    todo = [(ROOT_INO, b"")]
    root = idx.attr(ROOT_INO)
    if not stat.S_ISDIR(root.mode):
        raise Violation("the root is not a directory")
    while todo:
        ino, path = todo.pop()
        a = idx.attr(ino)
        if a.first < 0 or a.count < 0 or a.first + a.count > idx.n_dirents:
            raise Violation(f"directory {path!r}: dirents [{a.first}, +{a.count}) outside the table")
        prev = None
        subdirs = 0
        for pos, name, child in idx.entries(ino):
            if not idx.valid(child):
                raise Violation(f"{path!r}/{name!r} names inode {child}, not in 1..{idx.n_inodes}")
            if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                raise Violation(f"directory {path!r} has an impossible entry {name!r}")
            if prev is not None and not prev < name:
                raise Violation(f"directory {path!r}: entries not sorted/unique: {prev!r} then {name!r}")
            prev = name
            if idx.lookup(ino, name) != child:
                raise Violation(f"lookup of {name!r} in {path!r} does not find inode {child}")
            full = path + b"/" + name if path else name
            names.setdefault(child, []).append(full)
            ca = idx.attr(child)
            if stat.S_ISDIR(ca.mode):
                subdirs += 1
                if child in seen_dirs:
                    raise Violation(f"directory inode {child} has two names (a cycle or a directory hard link)")
                seen_dirs.add(child)
                if ca.parent != ino:
                    raise Violation(f"directory {full!r}: parent {ca.parent}, listed in {ino}")
                todo.append((child, full))
            elif ca.count:
                raise Violation(f"non-directory {full!r} has {ca.count} entries")
        if a.nlink != 2 + subdirs:
            raise Violation(f"directory {path!r}: nlink {a.nlink}, expected {2 + subdirs}")
    for ino, paths in names.items():
        a = idx.attr(ino)
        if not stat.S_ISDIR(a.mode) and a.nlink != len(paths):
            raise Violation(f"inode {ino} ({paths[0]!r}): nlink {a.nlink} but {len(paths)} names")
    reachable = len(names) + 1
    if reachable != idx.n_inodes:
        raise Violation(f"{idx.n_inodes} inodes, {reachable} reachable from the root")
    return names


def merge_target(layers: Sequence[Sequence[Member]], workdir: str) -> dict[int, list[bytes]]:
    """Merge, write the index, reopen it and check it; returns inode -> paths."""
    warnings: list[str] = []
    root = merge(layers, warnings.append)
    path = os.path.join(workdir, "fuzz.idx")
    write_index(root, {"fuzz": True}, path)
    idx = Index(path)
    try:
        names = check_index(idx)
        global LAST_INDEX_ATTRS
        LAST_INDEX_ATTRS = {ino: (idx.attr(ino), idx.readlink(ino)) for ino in range(1, idx.n_inodes + 1)}
        return names
    finally:
        idx.close()
        os.unlink(path)


# inode -> (Attr, symlink target) of the index merge_target checked last (for model comparisons).
LAST_INDEX_ATTRS: dict[int, tuple[Any, bytes]] = {}


def _inflate_all(data: bytes, limit: int = 1 << 28) -> list[bytes]:
    """What ``data`` decompresses to, if it is gzip or zstd (every member/frame, best
    effort: a truncated or corrupt stream gives what comes out before the damage)."""
    out = bytearray()
    if data[:2] == b"\x1f\x8b":
        rest = data
        while rest[:2] == b"\x1f\x8b" and len(out) < limit:
            d = zlib.decompressobj(wbits=31)
            try:
                out += d.decompress(rest, limit - len(out))
            except zlib.error:
                break
            if not d.eof:
                break
            rest = d.unused_data
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        try:
            while len(out) < limit:
                chunk = reader.read(1 << 20)
                if not chunk:
                    break
                out += chunk
        except zstandard.ZstdError:
            pass
    else:
        return []
    return [bytes(out)]


def _tar_payloads(data: bytes) -> list[bytes]:
    """The data of every member of a tar, by a lenient walk of its headers."""
    out, pos = [], 0
    while pos + BLOCK <= len(data):
        h = data[pos:pos + BLOCK]
        if h == bytes(BLOCK):
            break
        try:
            size = int(h[124:136].split(b"\0")[0].strip() or b"0", 8)
        except ValueError:
            break
        if h[156:157] in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0
        out.append(data[pos + BLOCK:pos + BLOCK + size])
        pos += BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK
    return out


def archive_haystack(path: str | os.PathLike[str]) -> bytes:
    """The bytes a read from ``path`` may return: the file and what decompresses out of it."""
    raw = Path(path).read_bytes()
    pieces = [raw]
    for outer in [raw, *_inflate_all(raw)]:
        pieces.append(outer)
        for payload in _tar_payloads(outer):
            pieces.extend(_inflate_all(payload))
    return b"\xff\x00SEP\x00\xff".join(pieces)


@dataclass
class TreeReport:
    paths: dict[bytes, int]          # path -> inode
    files: int
    eio: list[bytes]                 # files whose read failed with EIO


def _sparse_ok(data: bytes, haystack: bytes) -> bool:
    return all(run in haystack for run in data.split(b"\0") if run)


def check_tree(tree: ImageTree, haystack: bytes, read_limit: int = 1 << 20) -> TreeReport:
    """Walk the whole tree: every name resolves to its inode, no cycles, every read is
    EIO or bytes that exist in the archive (``haystack``, see `archive_haystack`)."""
    names = check_index(tree.index)
    paths: dict[bytes, int] = {b"": ROOT_INO}
    eio: list[bytes] = []
    files = 0
    for ino, plist in names.items():
        for p in plist:
            paths[p] = ino
            if tree.resolve(p) != ino:
                raise Violation(f"resolve({p!r}) gives {tree.resolve(p)}, the walk found {ino}")
        a = tree.attr(ino)
        if stat.S_ISLNK(a.mode):
            target = tree.readlink(ino)
            if not isinstance(target, bytes):
                raise Violation(f"readlink({plist[0]!r}) is not bytes")
            continue
        if not stat.S_ISREG(a.mode):
            continue
        files += 1
        if not 0 <= a.layer < len(tree.layers) and a.size:
            raise Violation(f"file {plist[0]!r} has layer {a.layer} of {len(tree.layers)}")
        sparse = tree.index.sparse_map(ino) is not None
        for off in sorted({0, max(0, a.size - 4096)}):
            try:
                data = tree.read(ino, off, min(read_limit, a.size - off))
            except OSError as e:
                if e.errno != 5:
                    raise Violation(f"read of {plist[0]!r} failed with {e!r}, not EIO") from None
                eio.append(plist[0])
                break
            want = min(read_limit, a.size - off)
            if len(data) != want:
                raise Violation(f"read of {plist[0]!r} at {off} returned {len(data)} bytes, not {want}")
            if data and data not in haystack and not (sparse and _sparse_ok(data, haystack)):
                raise Violation(f"read of {plist[0]!r} at {off} returned bytes that are not in the archive")
    return TreeReport(paths, files, eio)


def build_target(path: str, cache_dir: str, timeout: float = 20.0) -> TreeReport | ImageFSError:
    """The library pipeline on one archive: an ImageFSError, or a consistent tree."""
    with deadline(timeout):
        try:
            tree = ImageTree.open(path, BuildOptions(cache_dir=cache_dir))
        except ImageFSError as e:
            check_message(e)
            return e
        try:
            return check_tree(tree, archive_haystack(path))
        finally:
            tree.close()


# -- crafting tar bytes by hand ------------------------------------------------------------

EOA = bytes(2 * BLOCK)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def with_checksum(hdr: bytes | bytearray) -> bytes:
    """Recompute the (unsigned) checksum after patching header bytes."""
    h = bytearray(hdr)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def pax(records: Sequence[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    """A PAX extended ('x') or global ('g') header with its data blocks."""
    from builder import pax_records, raw_header

    data = pax_records(records)
    return raw_header(b"PaxHeader/x", size=len(data), typeflag=typeflag) + pad(data)


def entry(name: bytes, data: bytes = b"", **kw: Any) -> bytes:
    """A ustar header plus its padded data (``raw_header`` keywords pass through)."""
    from builder import raw_header

    return raw_header(name, size=len(data), **kw) + pad(data)


def write_blob_archive(path: str | os.PathLike[str], blobs: Sequence[bytes], config: bytes = b"{}",
                       extra: Sequence[tuple[str, bytes]] = ()) -> None:
    """A docker-style archive whose layers are the given (possibly compressed/corrupt) blobs."""
    import hashlib

    from builder import write_tar

    names = [f"blobs/sha256/{hashlib.sha256(b).hexdigest()}" for b in blobs]
    manifest = [{"Config": "config.json", "RepoTags": ["hostile:latest"], "Layers": names}]
    members = {"manifest.json": json.dumps(manifest).encode(), "config.json": config}
    members.update(zip(names, blobs))
    members.update(extra)
    write_tar(str(path), list(members.items()))


# -- decompression bombs ------------------------------------------------------------------


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib's crc32_combine: the CRC of A+B from crc(A), crc(B) and len(B)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = [_gf2_times(odd, odd[n]) for n in range(32)]
    odd = [_gf2_times(even, even[n]) for n in range(32)]
    while True:
        even = [_gf2_times(odd, odd[n]) for n in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = [_gf2_times(even, even[n]) for n in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def gzip_bomb(prefix: bytes, mib: int) -> bytes:
    """A valid gzip stream of ``prefix`` followed by ``mib`` MiB of zeros, built in
    O(compressed size): one full-flushed deflate block of 1 MiB of zeros, repeated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)
    chunk = bytes(1 << 20)
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    assert block == again, "deflate blocks after a full flush should repeat"
    tail = co.flush(zlib.Z_FINISH)
    crc_chunk = zlib.crc32(chunk)
    crc_zeros, n = 0, 0  # the CRC of (n MiB of zeros), by binary expansion
    unit_crc, unit_len = crc_chunk, 1 << 20
    k = mib
    while k:
        if k & 1:
            crc_zeros = crc32_combine(crc_zeros, unit_crc, unit_len) if n else unit_crc
            n += unit_len
        unit_crc = crc32_combine(unit_crc, unit_crc, unit_len)
        unit_len *= 2
        k >>= 1
    crc = crc32_combine(zlib.crc32(prefix), crc_zeros, n) if n else zlib.crc32(prefix)
    size = len(prefix) + (mib << 20)
    body = head + block * mib
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + tail
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


# -- regression files -----------------------------------------------------------------------


def member_to_json(m: Member) -> list[Any]:
    return [m.path.hex(), m.kind, m.mode, m.uid, m.gid, m.size, m.mtime_ns, m.linkname.hex(), m.rdev,
            m.offset, [[k.hex(), v.hex()] for k, v in m.xattrs],
            None if m.sparse is None else [list(c) for c in m.sparse]]


def member_from_json(v: list[Any]) -> Member:
    return Member(bytes.fromhex(v[0]), v[1], v[2], v[3], v[4], v[5], v[6], bytes.fromhex(v[7]), v[8], v[9],
                  tuple((bytes.fromhex(k), bytes.fromhex(x)) for k, x in v[10]),
                  None if v[11] is None else tuple(tuple(c) for c in v[11]))


def replay(path: Path, workdir: str) -> object:
    """Run the target a regression file belongs to (by its name prefix)."""
    name = path.name
    if name.startswith("scan-"):
        data = path.read_bytes()
        return scan_target(data, True), scan_target(data, False)
    if name.startswith("archive-"):
        return archive_target(str(path))
    if name.startswith("build-"):
        return build_target(str(path), os.path.join(workdir, "cache"))
    if name.startswith("merge-"):
        layers = [[member_from_json(m) for m in layer] for layer in json.loads(path.read_text())]
        return merge_target(layers, workdir)
    raise ValueError(f"unknown regression kind: {name}")


def save_regression(kind: str, payload: bytes, directory: Path = REGRESSIONS, suffix: str = ".tar") -> Path:
    """Keep a failing input as ``<kind>-<sha>.<suffix>`` (idempotent)."""
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    p = directory / f"{kind}-{hashlib.sha256(payload).hexdigest()[:16]}{suffix}"
    if not p.exists():
        p.write_bytes(payload)
    return p


def save_smallest(kind: str, sig: str, payload: bytes, directory: Path = REGRESSIONS,
                  suffix: str = ".tar") -> Path:
    """Keep one input per (target, failure signature): the smallest seen so far."""
    import re

    directory.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", sig).strip("_")[:60]
    p = directory / f"{kind}-{slug}{suffix}"
    if not p.exists() or len(payload) < p.stat().st_size:
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, p)
    return p


def known_regressions() -> dict[str, dict[str, str]]:
    """regressions/KNOWN.json: file name -> {"bug": id, "reason": ...} for the unfixed ones."""
    f = REGRESSIONS / "KNOWN.json"
    return json.loads(f.read_text()) if f.exists() else {}


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="imagefs-fuzz-")


__all__ = [
    "EOA", "crc32_combine", "entry", "gzip_bomb", "pad", "pax", "with_checksum", "write_blob_archive",
    "BytesReader", "KNOWN_BUGS", "KnownBug", "Runaway", "TreeReport", "Violation", "archive_haystack",
    "archive_target", "build_target", "check_images", "check_index", "check_members", "check_tree",
    "deadline", "known_bug", "known_regressions", "member_from_json", "member_to_json", "merge_target",
    "replay", "save_regression", "save_smallest", "scan_target", "signature",
]
