"""The outer archive: a tar of image files, as a map from member name to bytes.

`Archive` scans the outer tar's headers once and answers "where are the bytes
of member X" without reading them.  Members that are symlinks or hard links
inside the archive (podman and Docker write ``<id>/layer.tar -> ../<diffid>.tar``)
are followed.
"""

from __future__ import annotations

import logging
import stat
from typing import Callable

from . import blobs
from .blobs import Blob, FileBlob, Span
from .errors import ArchiveError, ImageFormatError, TarFormatError
from .paths import normalize, split
from .tarscan import BLOCK, HARDLINK, Member, is_tar_header, scan

log = logging.getLogger(__name__)

__all__ = ["Archive"]

# Manifests and configs are small; refuse to slurp a multi-GB "manifest".
MAX_JSON = 64 << 20
_MAX_LINK_HOPS = 16


class Archive:
    """An image archive opened for random access.

    Attributes:
        path: the file name given.
        blob: the (uncompressed) bytes of the outer tar.
        members: normalised member path -> its tar `Member` (later duplicates win).
    """

    def __init__(self, path: str, state: str | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.path = path
        self.file = FileBlob(path)
        try:
            self._scan(state, on_progress)
        except BaseException:
            self.file.close()
            raise

    def _scan(self, state: str | None, on_progress: Callable[[int, int], None] | None) -> None:
        path = self.path
        if self.file.length == 0:
            raise ArchiveError(f"{path} is empty, not an image archive")
        self.compression = blobs.sniff(self.file)
        self.state = state if self.compression != "none" else None
        self.blob: Blob = blobs.open_stream(self.file, self.compression, path, self.state)
        self.members: dict[bytes, Member] = {}
        try:
            first = self.blob.pread(BLOCK, 0)
        except OSError as e:
            raise ArchiveError(f"{path} is not a tar archive ({e.strerror or e})") from None
        if not is_tar_header(first):
            if len(first) == BLOCK and first == bytes(BLOCK):
                raise ArchiveError(f"{path} is an empty tar archive, not an image")
            raise ArchiveError(f"{path} is not a tar archive")

        def progress(offset: int, count: int) -> None:
            if on_progress is not None:
                on_progress(offset, count)

        with blobs.crc_checked_if(self.compression, self.file, self.blob, path) as reader:  # see build
            try:
                for m in scan(reader, reader.length, lambda msg: log.warning("%s: %s", path, msg), progress):
                    self.members[m.path] = m
            except (TarFormatError, OSError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                if isinstance(e, OSError) and self.compression == "none":
                    raise ArchiveError(f"cannot read {path}: {why}") from None
                raise ArchiveError(f"{path} is damaged: {why}") from None
        if not self.members:
            raise ArchiveError(f"{path} is an empty tar archive, not an image")

    def resolve(self, name: bytes) -> Member | None:
        """The member holding the data of ``name``, links followed, or None."""
        seen = 0
        m = self.members.get(name)
        while m is not None and m.kind in (stat.S_IFLNK, HARDLINK):
            seen += 1
            if seen > _MAX_LINK_HOPS:
                raise ImageFormatError(f"archive member {name.decode(errors='replace')} is a link loop")
            if m.kind == HARDLINK:
                target = m.linkname
            else:
                parent, _ = split(m.path)
                target = normalize(m.linkname if m.linkname.startswith(b"/") else parent + b"/" + m.linkname) or b""
            m = self.members.get(target)
        return m

    def exists(self, name: bytes) -> bool:
        return self.resolve(name) is not None

    def open(self, name: bytes) -> Span:
        """Random access to the bytes of member ``name`` (links followed).

        Raises:
            ImageFormatError: no such member, it is not a regular file, or it is stored sparse.
        """
        m = self.resolve(name)
        if m is None or m.kind != stat.S_IFREG:
            raise ImageFormatError(
                f"{self.path}: the image refers to {name.decode(errors='replace')}, which the archive does not hold"
            )
        if m.sparse is not None:
            # Its bytes are not one run in the archive.  No image tool writes these; `tar --sparse`
            # over a saved image does, and reading it as one run would serve garbage.
            raise ImageFormatError(f"{self.path}: {name.decode(errors='replace')} is stored as a sparse file, "
                                   "which imagefs cannot read in place (re-create the archive without --sparse)")
        return Span(self.blob, m.offset, m.size)

    def read(self, name: bytes, limit: int = MAX_JSON) -> bytes:
        """The whole content of a small member (manifests, configs)."""
        span = self.open(name)
        assert span.length is not None
        if span.length > limit:
            raise ImageFormatError(f"{self.path}: {name.decode(errors='replace')} is implausibly large")
        data = span.pread(span.length, 0)
        if len(data) != span.length:
            raise ArchiveError(f"{self.path}: {name.decode(errors='replace')} is truncated")
        return data

    def close(self) -> None:
        self.file.close()
