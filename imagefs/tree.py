"""The library face: a merged image tree you can look up, list and read without FUSE.

    >>> from imagefs import ImageTree
    >>> with ImageTree.open("ubuntu.tar") as tree:
    ...     ino = tree.resolve(b"etc/os-release")
    ...     tree.read(ino, 0, 4096)

Inode numbers are those of the index (1 is the root) and are stable for the
life of the object.  Reads go to the layer bytes inside the archive with
positional reads; nothing is extracted.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Iterator, NamedTuple

from . import blobs
from .blobs import Blob, FileBlob, Span
from .build import BuildOptions, open_index
from .errors import ArchiveError
from .index import (R_EXTRA_LEN, R_GID, R_MODE, R_MTIME, R_NLINK, R_RDEV, R_SIZE, R_UID, ROOT_INO, Attr,
                    Index, SparseMap)
from .lru import SizedLRU
from .progress import Progress

__all__ = ["ImageTree", "Stat"]

# Chunks of decoded sparse maps kept (24 bytes each): real maps have a few chunks,
# a hostile one millions; the one in use is kept whatever its size.
_SPARSE_CHUNKS_KEPT = 1 << 20

# The size a directory reports (as most file systems do; it is not image content).
DIR_SIZE = 4096


class Stat(NamedTuple):
    """What stat(2) shows of an entry: for the image, and for an overlay's entries alike."""

    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    blocks: int


class ImageTree:
    """A read-only merged image filesystem, addressed by inode number."""

    def __init__(self, index: Index) -> None:
        self.index = index
        # Decoded once while in use: a read of 128 KiB must not walk a map of 200,000
        # chunks from its start, nor decode it again.
        self._sparse_maps: SizedLRU[int, SparseMap] = SizedLRU(_SPARSE_CHUNKS_KEPT, lambda m: len(m.offsets))
        meta = index.meta
        path = meta["archive"]["path"]
        self.archive = FileBlob(path)
        self._identity = (meta["archive"]["size"], meta["archive"]["mtime_ns"], meta["archive"]["ctime_ns"])
        if self._archive_changed():
            self.archive.close()
            raise ArchiveError(f"{path} changed while it was being opened")
        outer = blobs.open_stream(self.archive, meta["outer_compression"], path, meta.get("outer_state"))
        self.layers: list[Blob] = []
        for i, layer in enumerate(meta["layers"]):
            span = Span(outer, layer["base"], layer["length"])
            self.layers.append(
                blobs.open_stream(span, layer["compression"], f"{path}: layer {i + 1}", layer.get("state")))

    @classmethod
    def open(cls, archive_path: str, options: BuildOptions | None = None,
             progress: Progress | None = None) -> "ImageTree":
        """Index (or reuse the cached index of) ``archive_path`` and open its tree.

        Raises:
            ImageFSError: the archive cannot be read as an image.
        """
        index, tmp = open_index(archive_path, options or BuildOptions(), progress)
        try:
            return cls(index)
        finally:
            if tmp is not None:
                os.unlink(tmp)  # the mmap keeps the file alive as long as it is needed

    def __enter__(self) -> "ImageTree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.index.close()
        self.archive.close()

    # -- lookups -------------------------------------------------------------

    root = ROOT_INO

    def attr(self, ino: int) -> Attr:
        return self.index.attr(ino)

    def stat(self, ino: int) -> Stat:
        """stat(2) of inode ``ino``: symlinks are as long as their target, ``st_blocks``
        counts the bytes stored (holes of sparse files excluded), times are the mtime."""
        # From the raw record: this runs for every entry of every listing.
        r = self.index.record(ino)
        mode = r[R_MODE]
        fmt = mode & 0o170000
        if fmt == stat.S_IFREG:
            size = r[R_SIZE]
            # A regular file's extra is its sparse map; holes are not stored.
            sparse = self._sparse_map(ino) if r[R_EXTRA_LEN] else None
            stored = size if sparse is None else sparse.stored
            blocks = (stored + 511) // 512
        elif fmt == stat.S_IFDIR:
            size, blocks = DIR_SIZE, DIR_SIZE // 512
        elif fmt == stat.S_IFLNK:
            size, blocks = r[R_EXTRA_LEN], 0  # a symlink's extra is its target
        else:
            size, blocks = 0, 0
        t = r[R_MTIME] if r[R_MTIME] > 0 else 0
        return Stat(mode, r[R_UID], r[R_GID], r[R_NLINK], size, t, t, t, r[R_RDEV], blocks)

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode of ``name`` in directory ``parent``, or 0 if there is none."""
        if not stat.S_ISDIR(self.index.attr(parent).mode):
            return 0
        return self.index.lookup(parent, name)

    def resolve(self, path: bytes) -> int:
        """The inode at image path ``path`` (symlinks are not followed), or 0."""
        ino = ROOT_INO
        for part in path.strip(b"/").split(b"/"):
            if part:
                ino = self.lookup(ino, part)
                if not ino:
                    return 0
        return ino

    def entries(self, ino: int, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """``(position, name, inode)`` of a directory, from position ``start``."""
        return self.index.entries(ino, start)

    def listdir(self, ino: int) -> list[bytes]:
        return [name for _pos, name, _ino in self.index.entries(ino)]

    def readlink(self, ino: int) -> bytes:
        return self.index.readlink(ino)

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.index.xattrs(ino)

    # -- data ----------------------------------------------------------------

    def _archive_changed(self) -> bool:
        # One fstat per read: a rewritten archive must give EIO, not other bytes.
        st = os.fstat(self.archive.fd)
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != self._identity

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of regular file ``ino`` from ``offset``.

        Raises:
            OSError: EIO if the archive no longer holds the bytes the index promised.
            ValueError: a negative offset, or no inode ``ino``.
        """
        if offset < 0:
            raise ValueError(f"negative offset {offset}")  # it would read the bytes before the file's
        a = self.index.attr(ino)
        if offset >= a.size or size <= 0:
            return b""
        size = min(size, a.size - offset)
        sparse = self._sparse_map(ino)
        if sparse is not None:
            data = self._read_sparse(a, sparse, offset, size)
        else:
            data = self.layers[a.layer].pread(size, a.data_offset + offset)
            if len(data) != size:
                raise OSError(errno.EIO, "archive data is missing (truncated or changed archive?)")
        # Checked after the read: a rewrite racing it changes the archive's
        # identity before or while its bytes change, so these bytes are dropped.
        if self._archive_changed():
            raise OSError(errno.EIO, f"{self.index.meta['archive']['path']} changed since it was mounted")
        return data

    def _sparse_map(self, ino: int) -> SparseMap | None:
        return self._sparse_maps.get(ino, self.index.sparse_map)

    def _read_sparse(self, a: Attr, sparse: SparseMap, offset: int, size: int) -> bytes:
        out = bytearray(size)
        end = offset + size
        for i in range(sparse.first_at(offset), len(sparse.offsets)):
            chunk_off = sparse.offsets[i]
            if chunk_off >= end:
                break
            lo, hi = max(offset, chunk_off), min(end, chunk_off + sparse.lengths[i])
            if lo < hi:
                data = self.layers[a.layer].pread(hi - lo, a.data_offset + sparse.starts[i] + lo - chunk_off)
                if len(data) != hi - lo:
                    raise OSError(errno.EIO, "archive data is missing (truncated or changed archive?)")
                out[lo - offset:hi - offset] = data
        return bytes(out)
