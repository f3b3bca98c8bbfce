"""Random access into gzip streams (gzip layers, ``docker save | gzip`` archives).

Built on indexed_gzip: while the layer is scanned once from start to end,
zlib's state is saved every ``SPACING`` bytes of output (a seek point: bit
offset plus the 32 KiB window).  A later read at any offset restarts from the
nearest seek point before it, so it costs at most ``SPACING`` bytes of
inflate (about 3 ms), never a decompression from the start.  The seek points
are exported next to the index (``<state>.gzidx``), so a later mount does not
rescan; each costs about 32 KiB on disk and in memory, about 32 MiB per GiB
of uncompressed layer.

Once the seek points exist, reads that continue where the last one ended
(``cat``, ``cp``, reading a layer's files in order) inflate on with zlib
directly instead: twice indexed_gzip's throughput, faster than ``gzip -dc``.

indexed_gzip inflates raw deflate data and checks no gzip trailer, so a
flipped byte in a layer would reach readers as wrong bytes.  `check_gzip`
inflates the whole stream once with zlib, which checks every member's CRC-32
and length; the first mount runs it beside the scan (`crc_checked`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import zlib
from typing import Any, Callable, Iterator

import indexed_gzip

from .blobs import GZIP_MAGIC, Blob, BlobFile, shareable
from .errors import ArchiveError, TarFormatError

__all__ = ["GzipBlob", "check_gzip", "crc_checked"]

log = logging.getLogger(__name__)

SPACING = 1 << 20
_READBUF = 1 << 20
# Sequential reads (cat, cp, a whole layer in order) inflate with zlib straight
# on: 2x faster than indexed_gzip's read, which copies through its own buffers.
# A read up to _AHEAD past the stream's position continues it; others seek.
_AHEAD = 4 << 20
_CHUNK = 256 << 10  # compressed bytes per step
_OUT_MAX = 4 << 20  # decompressed bytes per step, however well the input compresses


class _Inflater:
    """zlib over a gzip stream of one member or several, from its start.

    What follows the last member and does not start another one (zero
    padding, say) is ignored, as gzip(1) does.
    """

    __slots__ = ("_read", "_inflate", "_tail", "raw_pos", "ended")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read  # read(offset): up to _CHUNK compressed bytes there
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""  # compressed input not consumed yet
        self.raw_pos = 0
        self.ended = False

    def step(self) -> bytes:
        """The next decompressed bytes: at most _OUT_MAX, however well the input
        compresses, and maybe none.  ``ended`` is set after the last member.

        Raises:
            zlib.error: corrupt data, a CRC-32 or length that does not match.
            EOFError: the stream ends inside a member.
        """
        if not self._tail:
            self._tail = self._more()
            if not self._tail:
                raise EOFError("the stream ends inside a member")
        out = self._inflate.decompress(self._tail, _OUT_MAX)
        self._tail = self._inflate.unconsumed_tail
        if self._inflate.eof:  # the end of a member: another may follow
            rest = self._inflate.unused_data + self._tail
            while len(rest) < len(GZIP_MAGIC):
                more = self._more()
                if not more:
                    break
                rest += more
            if rest.startswith(GZIP_MAGIC):
                self._tail = rest
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                self.ended = True
        return out

    def _more(self) -> bytes:
        data = self._read(self.raw_pos)
        self.raw_pos += len(data)
        return data


class _Stream:
    """A stream being served in order: its inflater and what it has
    decompressed but not handed out yet (``buf``, from uncompressed offset ``pos``)."""

    __slots__ = ("inflater", "pos", "buf")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.inflater = _Inflater(read)
        self.pos = 0
        self.buf = bytearray()


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
        self._stream: _Stream | None = None
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
        # Only once every seek point exists (imported from the cache): reads
        # that bypass indexed_gzip do not add seek points, so a scan that
        # builds them must go through it.
        if self._imported:
            data = self._read_on(n, offset)
            if data is not None:
                return data
        try:
            self._gz.seek(offset)
            return self._gz.read(n)
        except (indexed_gzip.ZranError, ValueError, EOFError, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise OSError(errno.EIO, f"{self.what}: corrupt gzip data ({e})") from None

    def _read_on(self, n: int, offset: int) -> bytes | None:
        """``n`` bytes at ``offset`` by inflating on from where the last read
        ended, or None when that is not the cheap way there."""
        st = self._stream
        if st is None or not st.pos <= offset <= st.pos + len(st.buf) + _AHEAD:
            if offset > _AHEAD:
                return None
            blob = self._file.blob
            st = self._stream = _Stream(lambda at: blob.pread(_CHUNK, at))
        try:
            while st.pos + len(st.buf) < offset + n and not st.inflater.ended:
                st.buf += st.inflater.step()
                if offset > st.pos + len(st.buf):  # skip what nobody asked for
                    st.pos += len(st.buf)
                    st.buf.clear()
        except (zlib.error, EOFError):
            # Not a clean stream (cut short, or corrupt; the first mount's check_gzip
            # refuses such a layer, so the archive changed or the check was skipped):
            # indexed_gzip serves it from now on, as it built the seek points.
            self._stream = None
            self._imported = False
            return None
        start = offset - st.pos
        with memoryview(st.buf) as view:
            data = bytes(view[start:start + n])
        del st.buf[:start + len(data)]
        st.pos = offset + len(data)
        return data

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


# How far past the scan's last read `check_gzip` goes before it gives up:
# writers pad a tar to 10 KiB records, a bomb pads it with gigabytes.
_PAST_SCAN = 1 << 20


class _Check:
    """``fn(*args, stop=...)`` run in a thread beside the caller, or deferred to
    `result` where two threads must not read the same stream (``parallel``
    False).  ``stop(done)`` is true once cancelled, or once ``done`` (how far
    ``fn`` has come) passes the limit given to `result`.  zlib releases the GIL
    while it inflates, so on a second core the check costs no wall time."""

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...], parallel: bool) -> None:
        self._fn, self._args = fn, args
        self._stop = False
        self._limit: int | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if parallel:
            self._thread = threading.Thread(target=self._run, name="imagefs-check", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._fn(*self._args, stop=self._stopped)
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def _stopped(self, done: int) -> bool:
        return self._stop or (self._limit is not None and done > self._limit)

    def result(self, limit: int | None = None) -> None:
        """Wait for the check to end, or to pass ``limit`` (run it now, if
        deferred), and raise what it raised."""
        self._limit = limit
        if self._thread is None:
            self._run()
        else:
            try:
                self._thread.join()
            except BaseException:  # Ctrl-C while waiting: the check must not outlive its caller
                self.cancel()
                raise
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop the check and wait for it (the work it checks failed or was interrupted)."""
        self._stop = True
        if self._thread is not None:
            self._thread.join()


class _Furthest:
    """``blob`` read through, remembering how far the reads went."""

    __slots__ = ("blob", "furthest")

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self.furthest = 0

    @property
    def length(self) -> int | None:
        return self.blob.length

    def pread(self, n: int, offset: int) -> bytes:
        data = self.blob.pread(n, offset)
        self.furthest = max(self.furthest, offset + len(data))
        return data


@contextlib.contextmanager
def crc_checked(raw: Blob, stream: Blob, what: str) -> Iterator[Blob]:
    """Check the CRC-32s of the gzip stream ``raw`` (`check_gzip`) while the
    block scans its uncompressed ``stream`` through the reader this yields.

    The check runs in a thread beside the block, or after it where two
    threads must not read ``raw`` at once (a span of a decompressed archive,
    see `blobs.shareable`).  It goes no
    further than a little past the block's last read: nothing beyond is ever
    served.  Corrupt data raises ArchiveError, also in place of an error of
    the block's own, which it explains better (a broken tar).
    """
    reader = _Furthest(stream)
    check = _Check(check_gzip, (raw, what), parallel=shareable(raw))
    try:
        yield reader
    except (ArchiveError, TarFormatError, OSError):
        check.result(limit=reader.furthest + _PAST_SCAN)
        raise
    except BaseException:
        check.cancel()
        raise
    check.result(limit=reader.furthest + _PAST_SCAN)


def check_gzip(raw: Blob, what: str, stop: Callable[[int], bool] = lambda _done: False) -> None:
    """Inflate all of ``raw`` (one gzip member or several) to check each
    member's CRC-32 and length; the bytes are thrown away.

    What follows the last member and does not start another one (zero
    padding, say) is ignored, as gzip(1) does.  ``stop(done)``, asked with
    the bytes inflated so far, ends the check early: the scan beside it
    failed, or it has passed the end of the tar, after which nothing is read
    (a small gzip of gigabytes of zeros would otherwise cost minutes).

    Raises:
        ArchiveError: corrupt or truncated gzip data.
    """
    def read(at: int) -> bytes:
        try:
            return raw.pread(_CHUNK, at)
        except OSError as e:
            raise ArchiveError(f"{what}: cannot read it ({e.strerror or e})") from None

    inflater = _Inflater(read)
    done = 0
    while not inflater.ended and not stop(done):
        try:
            done += len(inflater.step())
        except zlib.error as e:
            raise ArchiveError(f"{what}: corrupt gzip data ({e})") from None
        except EOFError:
            raise ArchiveError(f"{what}: truncated gzip data (the stream ends inside a member)") from None
