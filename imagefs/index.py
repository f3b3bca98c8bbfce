"""The compact on-disk index of a merged image tree, and lookups in it.

An index file is written once and then only ``mmap``-ed, so a mounted image
costs no Python object per file, the kernel shares and evicts its pages, and
a second mount starts as fast as the file can be opened.

Layout (little-endian)::

    header   HEADER: magic, version, counts and section offsets
    inodes   INODE records; inode number N is record N-1; 1 is the root
    dirents  DIRENT records; each directory's entries are contiguous and
             sorted by name bytes, so lookup is a binary search: O(log n)
    pool     names, symlink targets, sparse maps and xattrs, referenced by
             (offset, length) from the records
    meta     JSON: the image, its layers and how to reopen their bytes

Invariants: inode numbers and dirent positions never change for the life of
a file (they are what the FUSE layer hands the kernel); hard links are
several dirents with one inode number.
"""

from __future__ import annotations

import array
import bisect
import itertools
import json
import mmap
import os
import stat
import struct
import sys
from typing import Any, Callable, Iterator, NamedTuple

from .errors import IndexCacheError
from .merge import Node
from .tarscan import Member

try:
    # The inode/dirent/pool sections built in C: a 300k-file index in ~0.2 s
    # instead of ~1.3 s.  Optional, like imagefs._tarfast; _layout gives the same bytes.
    from . import _indexfast
except ImportError:  # pragma: no cover - depends on the build
    _indexfast = None

__all__ = ["FORMAT_VERSION", "Attr", "Index", "SparseMap", "meta_fits", "temp_path", "write_index"]

MAGIC = b"IMGFSIDX"
FORMAT_VERSION = 3
HEADER = struct.Struct("<8sIIIQQQQQQ")
# mode uid gid nlink size mtime_ns rdev layer data_off extra_off extra_len xattr_off xattr_len
# first count parent touched (parent: a directory's parent, for ".."; touched: see merge.Node)
INODE = struct.Struct("<IIIIQqQiQQIQIIIIi")
DIRENT = struct.Struct("<QII")  # name_off name_len ino
# Positions in a raw INODE record (`Index.record`), for the per-entry hot paths.
R_MODE, R_UID, R_GID, R_NLINK, R_SIZE, R_MTIME, R_RDEV = range(7)
R_EXTRA_OFF, R_EXTRA_LEN, R_XATTR_OFF, R_XATTR_LEN, R_FIRST, R_COUNT, R_PARENT = range(9, 16)
# Directory records unpacked per step of `Index.entries`: the kernel takes a
# listing in pieces of a few dozen names, so copying the rest of a 12k-entry
# directory for each piece would be quadratic.
_DIRENT_STEP = 128
ROOT_INO = 1
_XATTR_LEN = struct.Struct("<II")
_SPARSE = struct.Struct("<QQ")
_SPARSE_MARK = b"S"


class Attr(NamedTuple):
    """What the index knows of one inode (``extra``: symlink target or sparse map)."""

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    mtime_ns: int
    rdev: int
    layer: int
    data_offset: int
    first: int
    count: int
    parent: int
    touched: int


class _Sections(NamedTuple):
    """An index file's sections before the header and meta go around them."""

    inodes: bytes
    dirents: bytes
    pool: bytes
    n_inodes: int
    n_dirents: int
    with_xattrs: int


class _Pool:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> int:
        off = self.size
        self.parts.append(data)
        self.size += len(data)
        return off


def _encode_extras(m: Member) -> tuple[bytes, bytes]:
    """The pool blobs of a member's sparse map and xattrs (b"" for none)."""
    # The leading marker keeps a map of zero chunks (all holes) distinct from "dense".
    sparse = b"" if m.sparse is None else _SPARSE_MARK + b"".join(_SPARSE.pack(o, ln) for o, ln in m.sparse)
    xattrs = b"".join(_XATTR_LEN.pack(len(k), len(v)) + k + v for k, v in m.xattrs)
    return sparse, xattrs


def _layout(root: Node, encode_extras: Callable[[Member], tuple[bytes, bytes]]) -> _Sections:
    """The inode, dirent and pool sections for the tree ``root``.

    Breadth-first numbering: every directory's children get consecutive
    dirents.  The reference for ``_indexfast.layout``, which must give the
    same bytes.
    """
    inos: dict[int, int] = {id(root): ROOT_INO}
    nodes: list[Node] = [root]
    parents: list[int] = [ROOT_INO]
    nlinks: list[int] = [2]
    dir_ranges: dict[int, tuple[int, int]] = {}
    # DIRENT fields, flat, packed with one call at the end (this loop runs per name).
    dirent_fields: list[int] = []
    pool = _Pool()
    ndirents = 0
    i = 0
    while i < len(nodes):
        node = nodes[i]
        i += 1
        children = node.children
        if children is None:
            continue
        node_ino = i  # nodes[i - 1] is inode i
        first = ndirents
        subdirs = 0
        for name in sorted(children):
            child = children[name]
            ino = inos.get(id(child))
            if ino is None:
                ino = len(nodes) + 1
                inos[id(child)] = ino
                nodes.append(child)
                parents.append(node_ino)
                nlinks.append(2 if child.children is not None else 1)
            else:
                nlinks[ino - 1] += 1  # another name for a hard-linked inode
            if child.children is not None:
                subdirs += 1
            dirent_fields += (pool.add(name), len(name), ino)
            ndirents += 1
        dir_ranges[node_ino] = (first, ndirents - first)
        nlinks[node_ino - 1] = 2 + subdirs
    dirents = struct.pack("<" + DIRENT.format[1:] * ndirents, *dirent_fields)

    inodes = bytearray(INODE.size * len(nodes))
    with_xattrs = 0
    for n, node in enumerate(nodes):
        m = node.member
        ino = n + 1
        extra_off = extra_len = 0
        xattr_off = xattr_len = 0
        has_sparse = m.kind != stat.S_IFLNK and m.sparse is not None  # a symlink's extra is its target
        if m.kind == stat.S_IFLNK:
            extra_off, extra_len = pool.add(m.linkname), len(m.linkname)
        if has_sparse or m.xattrs:
            sparse, xattrs = encode_extras(m)
            if has_sparse:
                extra_off, extra_len = pool.add(sparse), len(sparse)
            if m.xattrs:
                with_xattrs += 1
                xattr_off, xattr_len = pool.add(xattrs), len(xattrs)
        first, count = dir_ranges.get(ino, (0, 0))
        INODE.pack_into(
            inodes, n * INODE.size,
            # Linux has no mode for a symlink but 0777, whatever the tar header says.
            m.kind | (0o777 if m.kind == stat.S_IFLNK else m.mode), m.uid, m.gid, nlinks[n], m.size, m.mtime_ns,
            m.rdev, node.layer,
            m.offset, extra_off, extra_len, xattr_off, xattr_len, first, count, parents[n], node.touched,
        )
    return _Sections(bytes(inodes), dirents, b"".join(pool.parts), len(nodes), ndirents, with_xattrs)


def temp_path(path: str, pid: int) -> str:
    """Where process ``pid`` writes the index ``path`` before renaming it."""
    return f"{path}.{pid}.tmp"


class SparseMap:
    """A sparse file's chunks of data, in file order (tarscan refuses overlaps):
    ``offsets[i]``, ``lengths[i]``, and ``starts[i]``, where chunk i's bytes start
    in what the archive stores; ``stored`` is their sum.  Arrays, not tuples:
    a hostile map has hundreds of thousands of chunks."""

    __slots__ = ("offsets", "lengths", "starts", "stored")

    def __init__(self, flat: array.array[int]) -> None:
        self.offsets = flat[0::2]
        self.lengths = flat[1::2]
        self.starts = array.array("Q", itertools.accumulate(self.lengths, initial=0))
        self.stored = self.starts.pop()

    def first_at(self, offset: int) -> int:
        """The index of the first chunk that may hold bytes at ``offset`` or after it."""
        return max(bisect.bisect_right(self.offsets, offset) - 1, 0)


def meta_fits(meta: Any) -> bool:
    """Whether a meta read back from a cached index has the shape its readers
    (`ImageTree`, the overlay, `diff`) take for granted."""
    def is_int(v: Any) -> bool:
        return type(v) is int  # not bool

    if not (isinstance(meta, dict) and isinstance(meta.get("archive"), dict) and isinstance(meta.get("image"), dict)
            and isinstance(meta.get("outer_compression"), str) and isinstance(meta.get("layers"), list)
            and is_int(meta.get("members")) and is_int(meta.get("inodes_with_xattrs"))
            and isinstance(meta["image"].get("id"), str) and is_int(meta["image"].get("layers_total"))):
        return False
    return all(isinstance(layer, dict) and is_int(layer.get("base")) and is_int(layer.get("length"))
               and isinstance(layer.get("compression"), str) for layer in meta["layers"])


def write_index(root: Node, meta: dict[str, Any], path: str) -> None:
    """Serialise the merged tree ``root`` to ``path``, atomically.

    The file appears under its name only when complete and synced, so an
    interrupted build leaves nothing a later mount could use.
    """
    layout = _indexfast.layout if _indexfast is not None else _layout
    inodes, dirents, pool, n_inodes, n_dirents, with_xattrs = layout(root, _encode_extras)
    meta = dict(meta, inodes_with_xattrs=with_xattrs)
    meta_raw = json.dumps(meta, sort_keys=True).encode()
    inode_off = HEADER.size
    dirent_off = inode_off + len(inodes)
    pool_off = dirent_off + len(dirents)
    meta_off = pool_off + len(pool)
    header = HEADER.pack(MAGIC, FORMAT_VERSION, n_inodes, n_dirents, inode_off, dirent_off,
                         pool_off, len(pool), meta_off, len(meta_raw))
    tmp = temp_path(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(inodes)
            f.write(dirents)
            f.write(pool)
            f.write(meta_raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Index:
    """Read-only queries over an index file.

    Raises:
        IndexCacheError: the file is missing, truncated, or of another version.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.from_cache = False  # set by build.open_index when an existing index was reused
        try:
            with open(path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise IndexCacheError(f"cannot read index {path}: {e}") from None
        mm = self._mm
        if len(mm) < HEADER.size:
            raise IndexCacheError(f"index {path} is truncated")
        (magic, version, self.n_inodes, self.n_dirents, self._inodes, self._dirents,
         self._pool, pool_len, meta_off, meta_len) = HEADER.unpack_from(mm, 0)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise IndexCacheError(f"index {path} is of another format or version")
        if meta_off + meta_len != len(mm) or self._inodes + self.n_inodes * INODE.size != self._dirents:
            raise IndexCacheError(f"index {path} is truncated or corrupt")
        try:
            self.meta: dict[str, Any] = json.loads(mm[meta_off:meta_off + meta_len])
        except (ValueError, RecursionError):
            raise IndexCacheError(f"index {path} is corrupt") from None

    def attr(self, ino: int) -> Attr:
        """The attributes of inode ``ino`` (1 <= ino <= n_inodes)."""
        (mode, uid, gid, nlink, size, mtime_ns, rdev, layer, data_off, _eo, _el, _xo, _xl,
         first, count, parent, touched) = self.record(ino)
        return Attr(ino, mode, uid, gid, nlink, size, mtime_ns, rdev, layer, data_off, first, count, parent,
                    touched)

    def record(self, ino: int) -> tuple[int, ...]:
        """The raw INODE record of ``ino``: for hot paths that need a field or two
        (`attr` names them all; field order is INODE's).

        Raises:
            ValueError: there is no inode ``ino`` (FUSE never asks for one; a caller of the library may).
        """
        if not 0 < ino <= self.n_inodes:
            raise ValueError(f"no inode {ino} (the index has 1..{self.n_inodes})")
        return INODE.unpack_from(self._mm, self._inodes + (ino - 1) * INODE.size)

    def readdirplus(self, ino: int, start: int, size: int, timeout: float, blksize: int,
                    dir_size: int) -> bytes | None:
        """Directory ``ino``'s entries from listing position ``start`` as the FUSE
        protocol's readdirplus records, at most ``size`` bytes (made in C, see
        `_indexfast.readdirplus`).  None without the C half or when ``ino`` is
        not a directory: the caller's own readdir answers then."""
        if _indexfast is None:
            return None
        return _indexfast.readdirplus(self._mm, self._inodes, self._dirents, self._pool, self.n_inodes, ino, start,
                                      size, timeout, blksize, dir_size)

    def valid(self, ino: int) -> bool:
        return 1 <= ino <= self.n_inodes

    def _name(self, pos: int) -> tuple[bytes, int]:
        off, ln, ino = DIRENT.unpack_from(self._mm, self._dirents + pos * DIRENT.size)
        start = self._pool + off
        return self._mm[start:start + ln], ino

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode named ``name`` in directory ``parent``, or 0: a binary search."""
        a = self.attr(parent)
        lo, hi = a.first, a.first + a.count
        while lo < hi:
            mid = (lo + hi) // 2
            key, ino = self._name(mid)
            if key < name:
                lo = mid + 1
            elif key > name:
                hi = mid
            else:
                return ino
        return 0

    def entries(self, ino: int, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """``(position, name, inode)`` of directory ``ino`` from ``start`` on.

        Positions are stable, so ``position + 1`` is a valid resume point.
        """
        r = self.record(ino)
        first, count = r[R_FIRST], r[R_COUNT]
        start = max(start, 0)
        if start >= count:
            return
        mm, pool = self._mm, self._pool
        base = self._dirents + first * DIRENT.size
        for step in range(start, count, _DIRENT_STEP):
            lo = base + step * DIRENT.size
            hi = base + min(count, step + _DIRENT_STEP) * DIRENT.size
            for pos, (off, ln, child) in enumerate(DIRENT.iter_unpack(mm[lo:hi]), step):
                yield pos, mm[pool + off:pool + off + ln], child

    def _extra(self, r: tuple[int, ...]) -> bytes:
        start = self._pool + r[R_EXTRA_OFF]
        return self._mm[start:start + r[R_EXTRA_LEN]]

    def readlink(self, ino: int) -> bytes:
        return self._extra(self.record(ino))

    def dirs_with_hard_links(self) -> frozenset[int]:
        """The directories that hold a name of a non-directory with several names.
        One pass over the inode and dirent tables (a few tenths of a second at 300k)."""
        linked: set[int] = set()
        starts: list[tuple[int, int]] = []  # (first dirent, directory) of non-empty directories
        with memoryview(self._mm)[self._inodes:self._inodes + self.n_inodes * INODE.size] as table:
            for ino, r in enumerate(INODE.iter_unpack(table), 1):
                if stat.S_ISDIR(r[R_MODE]):
                    if r[R_COUNT]:
                        starts.append((r[R_FIRST], ino))
                elif r[R_NLINK] > 1:
                    linked.add(ino)
        if not linked:
            return frozenset()
        starts.sort()
        firsts = [first for first, _d in starts]
        out = set()
        with memoryview(self._mm)[self._dirents:self._dirents + self.n_dirents * DIRENT.size] as dirents:
            for k, (_off, _len, child) in enumerate(DIRENT.iter_unpack(dirents)):
                if child in linked:
                    out.add(starts[bisect.bisect_right(firsts, k) - 1][1])
        return frozenset(out)

    def sparse_map(self, ino: int) -> SparseMap | None:
        r = self.record(ino)
        if not stat.S_ISREG(r[R_MODE]) or r[R_EXTRA_LEN] == 0:
            return None
        raw = self._extra(r)[1:]  # after _SPARSE_MARK: _SPARSE pairs, little-endian
        flat = array.array("Q")
        flat.frombytes(raw[:len(raw) // _SPARSE.size * _SPARSE.size])  # whole pairs, even in a damaged index
        if sys.byteorder != "little":
            flat.byteswap()
        return SparseMap(flat)

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        r = self.record(ino)
        start = self._pool + r[R_XATTR_OFF]
        end = start + r[R_XATTR_LEN]
        out = {}
        pos = start
        while pos < end:
            kl, vl = _XATTR_LEN.unpack_from(self._mm, pos)
            pos += _XATTR_LEN.size
            out[self._mm[pos:pos + kl]] = self._mm[pos + kl:pos + kl + vl]
            pos += kl + vl
        return out

    def close(self) -> None:
        self._mm.close()
