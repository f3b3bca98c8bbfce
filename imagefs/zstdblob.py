"""Random access into zstd streams (``tar+zstd`` layers, ``.tar.zst`` archives).

zstd has no equivalent of gzip's resumable inflate state, so random access
comes from frame boundaries: while the layer is scanned, the start of every
frame (compressed and uncompressed offset) is recorded, and a read restarts
from the frame that holds its offset.  Writers that emit many frames (zstd
``--long`` chunked, or seekable zstd) therefore get cheap random reads.

A layer written as one big frame (what skopeo and podman produce) would need
decompressing from its start for every backward read; so the first time a
read has to go back further than ``REWIND_LIMIT``, the layer is decompressed
once to ``<state>.raw`` (a plain file next to the index, written atomically)
and every later read, in this mount and the next ones, is a ``pread`` on it.
That costs the layer's uncompressed size on local disk.
"""

from __future__ import annotations

import bisect
import errno
import json
import logging
import os
import tempfile

import zstandard

from .blobs import Blob, FileBlob

__all__ = ["ZstdBlob"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # for the one-off flat copy
# Going back further than this inside one frame decompresses the layer to disk.
REWIND_LIMIT = 8 << 20


class _Cursor:
    """Sequential decompression from one frame start; tracks frame boundaries."""

    def __init__(self, raw: Blob, c_off: int, d_off: int, frames: list[tuple[int, int]]) -> None:
        self.raw = raw
        self.c_pos = c_off  # next compressed byte to feed
        self.d_pos = d_off  # uncompressed offset of buf[0]
        self.buf = b""
        self.frames = frames
        self.dobj = zstandard.ZstdDecompressor().decompressobj()
        self.eof = False
        self.at_frame_start = True
        self.checksum = False

    def _piece_end(self) -> int:
        """Where the next frame header or whole block ends in the compressed bytes.

        Feeding the decompressor one block at a time bounds what one call can
        produce to a block's maximum (128 KiB), whatever the compression ratio:
        a decompression bomb costs time, never memory.
        """
        pos = self.c_pos
        if self.at_frame_start:
            head = self.raw.pread(14, pos)
            if len(head) < 5:
                return pos + len(head)
            magic = int.from_bytes(head[:4], "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # a skippable frame: its size follows
                return pos + 8 + int.from_bytes(head[4:8], "little")
            fhd = head[4]
            single = fhd >> 5 & 1
            self.checksum = bool(fhd >> 2 & 1)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            self.at_frame_start = False
            return pos + 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
        hdr = self.raw.pread(3, pos)
        if len(hdr) < 3:
            return pos + len(hdr)
        v = int.from_bytes(hdr, "little")
        end = pos + 3 + (1 if (v >> 1) & 3 == 1 else v >> 3)  # an RLE block stores one byte
        if v & 1:  # the last block, then the optional checksum
            end += 4 if self.checksum else 0
            self.at_frame_start = True
        return end

    def _more(self) -> bool:
        """Decompress the next piece into buf (dropping what was before). False at the end."""
        if self.eof:
            return False
        self.d_pos += len(self.buf)
        self.buf = b""
        while not self.buf:
            start = self.c_pos
            was_frame_start = self.at_frame_start
            end = self._piece_end()
            head = self.raw.pread(4, start) if was_frame_start else b""
            if len(head) == 4 and 0x184D2A50 <= int.from_bytes(head, "little") <= 0x184D2A5F:
                self.c_pos = end  # skippable frames hold no data
                self.at_frame_start = True
                continue
            chunk = self.raw.pread(max(end - start, 1), start)
            if not chunk:
                self.eof = True
                if self.c_pos > self.frames[-1][0]:
                    # Input ended inside a frame: the stream was cut short.
                    raise OSError(errno.EIO, "truncated zstd data (the stream ends inside a frame)")
                return False
            try:
                out = self.dobj.decompress(chunk)
            except zstandard.ZstdError as e:
                raise OSError(errno.EIO, f"corrupt zstd data: {e}") from None
            self.c_pos += len(chunk)
            if self.dobj.eof:
                unused = self.dobj.unused_data
                self.c_pos -= len(unused)
                frame_start = (self.c_pos, self.d_pos + len(out))
                if not self.frames or self.frames[-1] < frame_start:
                    self.frames.append(frame_start)
                self.dobj = zstandard.ZstdDecompressor().decompressobj()
                if not self.raw.pread(1, self.c_pos):
                    self.eof = True
                    self.buf = out
                    return bool(out)
            self.buf = out
        return True

    def read(self, n: int, offset: int) -> bytes:
        parts = []
        while n > 0:
            rel = offset - self.d_pos
            if rel >= len(self.buf):
                if not self._more():
                    break
                continue
            piece = self.buf[rel:rel + n]
            parts.append(piece)
            n -= len(piece)
            offset += len(piece)
        return b"".join(parts)


def _load_frames(path: str) -> list[tuple[int, int]] | None:
    """Frame starts saved by an earlier mount, or None if the file is not what
    `ZstdBlob.save_state` writes (then they are found again as reads go)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, list) or not doc or doc[0] != [0, 0]:
        return None
    frames: list[tuple[int, int]] = []
    for x in doc:
        if not (isinstance(x, list) and len(x) == 2 and all(type(v) is int and v >= 0 for v in x)):
            return None
        if frames and not (x[0] > frames[-1][0] and x[1] >= frames[-1][1]):
            return None
        frames.append((x[0], x[1]))
    return frames


class ZstdBlob:
    """The uncompressed bytes of a zstd stream inside ``raw``."""

    def __init__(self, raw: Blob, what: str, state: str | None) -> None:
        self.raw = raw
        self.what = what
        self.state = state
        self.length: int | None = None
        self.frames: list[tuple[int, int]] = [(0, 0)]  # (compressed, uncompressed) frame starts
        self._flat: FileBlob | None = None
        self._cursor: _Cursor | None = None
        if state:
            if os.path.exists(f"{state}.raw"):
                self._flat = FileBlob(f"{state}.raw")
            elif os.path.exists(f"{state}.zframes"):
                self.frames = _load_frames(f"{state}.zframes") or self.frames

    @property
    def raw_position(self) -> int:
        """How far into the compressed bytes decompression has come (for progress)."""
        return self._cursor.c_pos if self._cursor is not None else 0

    def pread(self, n: int, offset: int) -> bytes:
        if self._flat is not None:
            return self._flat.pread(n, offset)
        cur = self._cursor
        if cur is None or offset < cur.d_pos:
            i = bisect.bisect_right([d for _c, d in self.frames], offset) - 1
            c_off, d_off = self.frames[max(i, 0)]
            if cur is not None and offset - d_off > REWIND_LIMIT and self.state:
                try:
                    self._materialize()
                    return self.pread(n, offset)
                except OSError as e:
                    # The cache is gone, full or read-only: slower, but the data is intact.
                    log.warning("%s: %s; decompressing from the frame start instead", self.what, e.strerror or e)
                    self.state = None
            cur = self._cursor = _Cursor(self.raw, c_off, d_off, self.frames)
        return cur.read(n, offset)

    def _materialize(self) -> None:
        """Decompress the whole stream once to ``<state>.raw`` and read from it from now on."""
        assert self.state
        final = f"{self.state}.raw"
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".zraw-")
        self._flat = None
        try:
            with os.fdopen(fd, "wb") as out:
                dctx = zstandard.ZstdDecompressor()
                reader = dctx.stream_reader(_RawFile(self.raw), read_across_frames=True)
                while True:
                    chunk = reader.read(_CHUNK * 4)
                    if not chunk:
                        break
                    out.write(chunk)
            os.replace(tmp, final)
        except (OSError, zstandard.ZstdError) as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, zstandard.ZstdError):
                raise OSError(errno.EIO, f"{self.what}: corrupt zstd data: {e}") from None
            raise OSError(e.errno, f"cannot keep a decompressed copy in {os.path.dirname(final)}: {e.strerror}") from None
        self._flat = FileBlob(final)
        self._cursor = None

    def save_state(self) -> None:
        """Keep the frame table for later mounts (atomically)."""
        if not self.state or self._flat is not None:
            return
        tmp = f"{self.state}.zframes.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.frames, f)
            os.replace(tmp, f"{self.state}.zframes")
        except OSError as e:
            log.warning("%s: cannot save zstd frame table: %s", self.what, e)


class _RawFile:
    """Minimal sequential file object over a Blob for zstandard's stream reader."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self.blob.pread(n if n >= 0 else 1 << 30, self.pos)
        self.pos += len(data)
        return data
