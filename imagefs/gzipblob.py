"""Random access into gzip streams (gzip layers, ``docker save | gzip`` archives).

Built on indexed_gzip: while the layer is scanned once from start to end,
zlib's state is saved every ``SPACING`` bytes of output (a seek point: bit
offset plus the 32 KiB window).  A later read at any offset restarts from the
nearest seek point before it, so it costs at most ``SPACING`` bytes of
inflate (about 3 ms), never a decompression from the start.  The seek points
are exported next to the index (``<state>.gzidx``), so a later mount does not
rescan; each costs about 32 KiB on disk and in memory, about 32 MiB per GiB
of uncompressed layer.
"""

from __future__ import annotations

import errno
import logging
import os

import indexed_gzip

from .blobs import Blob, BlobFile
from .errors import ArchiveError

__all__ = ["GzipBlob"]

log = logging.getLogger(__name__)

SPACING = 1 << 20
_READBUF = 1 << 20


class GzipBlob:
    """The uncompressed bytes of a gzip stream inside ``raw``.

    Not thread-safe (one inflate state): the FUSE loop is single-threaded.
    """

    def __init__(self, raw: Blob, what: str, state: str | None) -> None:
        self.what = what
        self.state = state
        self.length: int | None = None
        index_file = f"{state}.gzidx" if state else None
        self._gz = self._open(raw, index_file)
        self._imported = False
        if index_file and os.path.exists(index_file):
            try:
                self._gz.import_index(filename=index_file)
                self._imported = True
            except Exception as e:  # a foreign or damaged file: rebuild lazily
                log.info("%s: ignoring unusable seek points %s: %s", what, index_file, e)
                self._gz = self._open(raw, None)

    def _open(self, raw: Blob, _index: str | None) -> indexed_gzip.IndexedGzipFile:
        self._file = BlobFile(raw)
        return indexed_gzip.IndexedGzipFile(
            fileobj=self._file, spacing=SPACING, readbuf_size=_READBUF, buffer_size=_READBUF,
        )

    @property
    def raw_position(self) -> int:
        """How far into the compressed bytes decompression has come (for progress)."""
        return self._file.pos

    def pread(self, n: int, offset: int) -> bytes:
        try:
            self._gz.seek(offset)
            return self._gz.read(n)
        except (indexed_gzip.ZranError, ValueError, EOFError, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise OSError(errno.EIO, f"{self.what}: corrupt gzip data ({e})") from None

    def save_state(self) -> None:
        """Export the seek points built so far (atomically) for later mounts."""
        if not self.state or self._imported:
            return
        tmp = f"{self.state}.gzidx.{os.getpid()}.tmp"
        try:
            self._gz.export_index(filename=tmp)
            os.replace(tmp, f"{self.state}.gzidx")
        except Exception as e:
            log.warning("%s: cannot save gzip seek points: %s", self.what, e)
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def check(self) -> None:
        """Raise ArchiveError if the stream does not even start as gzip."""
        try:
            self.pread(1, 0)
        except OSError as e:
            raise ArchiveError(str(e)) from None
