"""Random access to byte streams inside an archive: spans, and (de)compressed layers.

Everything here offers ``pread(n, offset) -> bytes`` over the *uncompressed*
bytes and a ``length`` (``None`` while unknown).  Reads are positional, so
there is no shared file position and no lock: any number of readers may use
one blob at once.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from typing import Any, Protocol

from .errors import ArchiveError

__all__ = [
    "Blob",
    "BlobFile",
    "FileBlob",
    "Span",
    "crc_checked_if",
    "open_stream",
    "shareable",
    "sniff",
]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Blob(Protocol):
    """Random access to uncompressed bytes."""

    @property
    def length(self) -> int | None: ...

    def pread(self, n: int, offset: int) -> bytes: ...


class FileBlob:
    """A whole file, read with ``os.pread`` on one descriptor."""

    __slots__ = ("fd", "length", "path")

    def __init__(self, path: str) -> None:
        try:
            # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever.
            # It changes nothing for the reads of a regular file.
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            st = os.fstat(self.fd)
        except OSError as e:
            raise ArchiveError(f"cannot open {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            # Not a device either: its size is not st_size, and writing to it changes
            # nothing the index cache could notice.
            os.close(self.fd)
            raise ArchiveError(f"{path} is not a regular file")
        self.path = path
        self.length: int | None = st.st_size

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        os.close(self.fd)


class Span:
    """``length`` bytes of ``parent`` starting at ``base``; reads stop at the span's end."""

    __slots__ = ("parent", "base", "length")

    def __init__(self, parent: Blob, base: int, length: int) -> None:
        self.parent = parent
        self.base = base
        self.length: int | None = length

    def pread(self, n: int, offset: int) -> bytes:
        assert self.length is not None
        n = min(n, self.length - offset)
        if n <= 0:
            return b""
        return self.parent.pread(n, self.base + offset)


def shareable(blob: Blob) -> bool:
    """Whether two threads may read ``blob`` at once: a file or a span of one
    (pread has no position to share), not a decompressing stream."""
    while isinstance(blob, Span):
        blob = blob.parent
    return isinstance(blob, FileBlob)


def sniff(blob: Blob) -> str:
    """The compression of a stream by its magic bytes: ``"gzip"``, ``"zstd"`` or ``"none"``.

    Media types lie (Docker writes ``tar`` for gzip layers in some versions),
    so the bytes decide.
    """
    head = blob.pread(4, 0)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_stream(raw: Blob, compression: str, what: str, state: str | None = None) -> Blob:
    """The uncompressed view of ``raw``, whose compression `sniff` found.

    ``state`` is a path prefix where a compressed blob keeps what makes
    random access cheap (seek points, a decompressed copy); None keeps it in
    memory only.
    """
    if compression == "none":
        return raw
    if compression == "gzip":
        from .gzipblob import GzipBlob

        return GzipBlob(raw, what, state)
    if compression == "zstd":
        from .zstdblob import ZstdBlob

        return ZstdBlob(raw, what, state)
    raise ArchiveError(f"{what}: unknown compression {compression}")


def crc_checked_if(compression: str, raw: Blob, stream: Blob, what: str) -> contextlib.AbstractContextManager[Blob]:
    """`gzipblob.crc_checked` for a gzip ``raw``: a context whose reader scans
    ``stream`` while the gzip CRCs are checked; for other compressions just
    ``stream`` (zstd frames check themselves, plain bytes have nothing to check)."""
    if compression != "gzip":
        return contextlib.nullcontext(stream)
    from .gzipblob import crc_checked  # imports indexed_gzip (50 ms)

    return crc_checked(raw, stream, what)


class BlobFile(io.RawIOBase):
    """A read-only file object over a Blob, for libraries that want one."""

    def __init__(self, blob: Blob) -> None:
        super().__init__()
        self.blob = blob
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.pos = offset
        elif whence == io.SEEK_CUR:
            self.pos += offset
        else:
            if self.blob.length is None:
                raise OSError(errno.ESPIPE, "length unknown")
            self.pos = self.blob.length + offset
        return self.pos

    def readinto(self, b: Any) -> int:
        data = self.blob.pread(len(b), self.pos)
        n = len(data)
        b[:n] = data
        self.pos += n
        return n
