"""One pass over a tar stream's headers, yielding members with exact data offsets.

The scanner reads headers only and skips file data by offset, so indexing a
layer costs one 512-byte header per member (read through a read-ahead buffer,
so many small members share one ``pread``).  It understands every dialect
found in real image layers: ustar (with ``prefix``), old GNU and GNU long
names/link names (``L``/``K``), PAX extended and global headers (path,
linkpath, size, uid, gid, mtime with nanoseconds, ``SCHILY.xattr.*``,
``LIBARCHIVE.xattr.*``, ``SCHILY.devmajor/devminor``), base-256 numbers, and
GNU sparse files (old ``S`` headers and PAX sparse 0.0, 0.1 and 1.0).

Names are returned normalised by `imagefs.paths.normalize`; a member whose
name cannot exist (a NUL byte) is reported through ``on_warning`` and skipped.
"""

from __future__ import annotations

import base64
import os
import stat
import urllib.parse
from typing import Callable, Iterator, NamedTuple, Protocol

from .errors import TarFormatError
from .paths import normalize

try:
    # Plain headers (and PAX path/size/owner/mtime) parsed in C: the scan runs
    # ~15x faster.  Optional (built where a compiler is at hand); the Python
    # below gives the same members.
    from . import _tarfast
except ImportError:  # pragma: no cover - depends on the build
    _tarfast = None

__all__ = [
    "BLOCK",
    "HARDLINK",
    "Member",
    "PReader",
    "is_tar_header",
    "parses_in_c",
    "scan",
]

BLOCK = 512
# A hard link is not a file type of its own on disk; it gets a kind outside stat's.
HARDLINK = 0
_READAHEAD = 1 << 16
_ZERO_BLOCK = bytes(BLOCK)

_TYPES = {
    b"0": stat.S_IFREG, b"\0": stat.S_IFREG, b"7": stat.S_IFREG,
    b"1": HARDLINK, b"2": stat.S_IFLNK, b"3": stat.S_IFCHR, b"4": stat.S_IFBLK,
    b"5": stat.S_IFDIR, b"6": stat.S_IFIFO, b"D": stat.S_IFDIR, b"S": stat.S_IFREG,
}
_GLOBAL_KEYS = {b"uid", b"gid", b"mtime", b"SCHILY.devmajor", b"SCHILY.devminor"}
# A path longer than this (or deeper than _MAX_DEPTH) cannot be used on Linux
# anyway, and walking it would cost quadratic time.
_MAX_PATH = 16384
_MAX_DEPTH = 1024
# Types whose header is followed by data blocks (everything unknown too, as tar does).
_NO_DATA = {b"1", b"2", b"3", b"4", b"5", b"6"}


def parses_in_c() -> bool:
    """Whether runs of plain headers are parsed by the C extension."""
    return _tarfast is not None


class PReader(Protocol):
    """Anything that can read ``n`` bytes at ``offset`` (short only at the end)."""

    def pread(self, n: int, offset: int) -> bytes: ...


class Member(NamedTuple):
    """One entry of a tar stream, after its extended headers are applied.

    ``offset`` is where the member's data starts in the stream and ``size``
    its logical size.  For a sparse member ``sparse`` lists the
    ``(logical_offset, length)`` of the data chunks, stored back to back from
    ``offset``; everything else reads as zeros.  ``linkname`` is the raw
    symlink target, or the normalised target path of a hard link.
    """

    path: bytes
    kind: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes
    rdev: int
    offset: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    sparse: tuple[tuple[int, int], ...] | None


class _Buffered:
    """Read-ahead over a PReader so consecutive small headers cost one pread."""

    __slots__ = ("_src", "_buf", "_start")

    def __init__(self, src: PReader) -> None:
        self._src = src
        self._buf = b""
        self._start = 0

    @property
    def buffer(self) -> bytes:
        return self._buf

    @property
    def start(self) -> int:
        return self._start

    def read(self, n: int, offset: int) -> bytes:
        rel = offset - self._start
        if 0 <= rel and rel + n <= len(self._buf):
            return self._buf[rel:rel + n]
        return self.refill(offset, n)

    def refill(self, offset: int, n: int = BLOCK) -> bytes:
        """Start the buffer at ``offset``; the first ``n`` bytes from there."""
        self._buf = self._src.pread(max(n, _READAHEAD), offset)
        self._start = offset
        return self._buf[:n]


def _show(name: bytes) -> str:
    """A member name for a message: text, with undecodable bytes and controls escaped."""
    return repr(name.decode("utf-8", "backslashreplace"))[1:-1]


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _number(field: bytes, what: str, at: int) -> int:
    try:
        # The common case, octal digits padded with NUL or spaces, in one C call.
        return int(field.partition(b"\0")[0], 8)
    except ValueError:
        pass
    if field and field[0] & 0x80:
        # base-256 (GNU/star): big-endian two's complement, 0xff leads a negative.
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = _cstr(field).strip(b" ")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise TarFormatError(f"corrupt tar header at byte {at}: bad {what} field {digits!r}") from None


def _checksum_ok(hdr: bytes, at: int) -> bool:
    stored = _number(hdr[148:156], "checksum", at)
    unsigned = sum(hdr) - sum(hdr[148:156]) + 8 * 0x20
    if stored == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in hdr if b > 127) + 256 * sum(1 for b in hdr[148:156] if b > 127)
    return stored == signed


def is_tar_header(block: bytes) -> bool:
    """Whether ``block`` is a plausible tar header (right length, right checksum)."""
    if len(block) < BLOCK or block[:BLOCK] == _ZERO_BLOCK:
        return False
    try:
        return _checksum_ok(block[:BLOCK], 0)
    except TarFormatError:
        return False


def _parse_pax(data: bytes, at: int) -> list[tuple[bytes, bytes]]:
    """PAX records ``"LEN key=value\\n"`` in order (sparse 0.0 repeats keys)."""
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break  # padding some writers leave after the last record
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise TarFormatError(f"corrupt PAX header at byte {at}") from None
        if sp < 0 or length <= sp - pos or pos + length > len(data):
            raise TarFormatError(f"corrupt PAX header at byte {at}")
        record = data[sp + 1:pos + length]
        if not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError(f"corrupt PAX record at byte {at}")
        key, _, value = record[:-1].partition(b"=")
        records.append((key, value))
        pos += length
    return records


def _pax_mtime(value: bytes, at: int) -> int:
    try:
        text = value.decode("ascii")
        neg = text.startswith("-")
        whole, _, frac = text.lstrip("-").partition(".")
        ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
        return -ns if neg else ns
    except ValueError:
        raise TarFormatError(f"corrupt PAX mtime at byte {at}: {value!r}") from None


def _pax_int(value: bytes, key: bytes, at: int, negative_ok: bool = False) -> int:
    try:
        n = int(value)
    except ValueError:
        raise TarFormatError(f"corrupt PAX {key.decode('ascii', 'replace')} at byte {at}") from None
    if n < 0 and not negative_ok:
        raise TarFormatError(f"corrupt PAX {key.decode('ascii', 'replace')} at byte {at}: negative value")
    return n


def _gnu_sparse_entries(block: bytes, count: int) -> list[tuple[int, int]]:
    out = []
    for i in range(count):
        off = block[i * 24:i * 24 + 12]
        num = block[i * 24 + 12:i * 24 + 24]
        if off.strip(b"\0 ") == b"" and num.strip(b"\0 ") == b"":
            break
        out.append((_number(off, "sparse offset", 0), _number(num, "sparse size", 0)))
    return out


def scan(
    src: PReader,
    length: int | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[Member]:
    """Yield the members of the tar stream read through ``src``.

    ``length`` (if known) bounds the stream: a member whose data would run past
    it is a truncated archive.  ``on_progress(offset, members)`` is called now
    and then with how far the scan has come.

    A stream that ends at a member boundary without the end-of-archive blocks
    gives its members and a warning.

    Raises:
        TarFormatError: a header is corrupt or the stream ends inside a member.
    """
    buf = _Buffered(src)
    warn = on_warning or (lambda _msg: None)
    pos = 0
    count = 0
    globals_: dict[bytes, bytes] = {}
    pending: list[tuple[bytes, bytes]] = []  # PAX records for the next member
    long_name: bytes | None = None
    long_link: bytes | None = None
    extended_at: int | None = None  # an extended header not yet followed by a member header
    fast = _tarfast.scan_plain if _tarfast is not None else None
    limit = -1 if length is None else length
    while True:
        hdr = buf.read(BLOCK, pos)
        if fast is not None and not pending and long_name is None and long_link is None and not globals_:
            # A run of plain members from the read-ahead buffer; it stops at
            # the first header that needs the rules below.
            run, pos, short = fast(buf.buffer, buf.start, pos, limit, Member)
            if short and not run:
                # A PAX header and its member cut by the end of the buffer: C takes
                # them from a buffer that starts here rather than leave them to Python.
                hdr = buf.refill(pos)
                run, pos, short = fast(buf.buffer, buf.start, pos, limit, Member)
            for m in run:
                count += 1
                if on_progress is not None and count % 4096 == 0:
                    on_progress(m.offset, count)
                yield m
            if run:
                continue
        if len(hdr) < BLOCK:
            if len(hdr) == 0 and pos == 0:
                return  # an empty stream holds no members
            if len(hdr) == 0:
                if extended_at is not None:
                    raise TarFormatError(f"truncated tar: the extended header at byte {extended_at} has no member")
                if len(buf.read(1, pos - 1)) == 0:  # the length was unknown, the data claimed too long
                    raise TarFormatError(f"truncated tar: the stream ends inside a member's data before byte {pos}")
                # Every writer ends a tar with zero blocks: a stream that stops at a member
                # boundary without them may have been cut there.  GNU tar, podman and umoci
                # read it all the same, and so does this; the user hears of it.
                warn(f"no end-of-archive marker after byte {pos}: the tar may have been cut short")
                return
            raise TarFormatError(f"truncated tar: the stream ends inside a header at byte {pos}")
        if hdr == _ZERO_BLOCK:
            return
        if not _checksum_ok(hdr, pos):
            raise TarFormatError(f"corrupt tar header at byte {pos}: checksum mismatch")
        typeflag = hdr[156:157]
        hsize = _number(hdr[124:136], "size", pos)
        if hsize < 0:
            raise TarFormatError(f"corrupt tar header at byte {pos}: negative size")
        data_at = pos + BLOCK
        padded = (hsize + BLOCK - 1) // BLOCK * BLOCK

        if typeflag == b"X":  # Solaris' name for a PAX extended header
            typeflag = b"x"
        if typeflag in (b"x", b"g", b"L", b"K"):
            if hsize > 1 << 26:
                raise TarFormatError(f"corrupt tar header at byte {pos}: extended header of {hsize} bytes")
            data = buf.read(hsize, data_at)
            if len(data) < hsize:
                raise TarFormatError(f"truncated tar: extended header at byte {pos} is cut short")
            if typeflag == b"x":
                pending.extend(_parse_pax(data, pos))
            elif typeflag == b"g":
                # Only what applies to members is kept, so hostile global headers cannot make
                # every later member pay for thousands of records.
                for key, value in _parse_pax(data, pos):
                    if key in _GLOBAL_KEYS or (key.startswith(b"SCHILY.xattr.") and len(globals_) < 64):
                        globals_[key] = value
            elif typeflag == b"L":
                long_name = _cstr(data)
            else:
                long_link = _cstr(data)
            extended_at = pos
            pos = data_at + padded
            continue

        member_at = pos
        extended_at = None
        magic = hdr[257:263]
        name = _cstr(hdr[0:100])
        if magic == b"ustar\0":  # POSIX ustar: the prefix field extends the name
            prefix = _cstr(hdr[345:500])
            if prefix:
                name = prefix + b"/" + name
        linkname = _cstr(hdr[157:257])
        mode = _number(hdr[100:108], "mode", pos) & 0o7777
        uid = _number(hdr[108:116], "uid", pos)
        gid = _number(hdr[116:124], "gid", pos)
        mtime_ns = _number(hdr[136:148], "mtime", pos) * 1_000_000_000
        devmajor = _number(hdr[329:337], "devmajor", pos) if typeflag in (b"3", b"4") else 0
        devminor = _number(hdr[337:345], "devminor", pos) if typeflag in (b"3", b"4") else 0
        size = hsize
        xattrs: dict[bytes, bytes] = {}
        sparse: list[tuple[int, int]] | None = None
        sparse_map_in_data = False
        sparse_real: int | None = None
        sparse_name: bytes | None = None

        if long_name is not None:
            name = long_name
        if long_link is not None:
            linkname = long_link
        records = list(globals_.items()) + pending if globals_ else pending
        sp_offsets: list[int] = []
        sp_sizes: list[int] = []
        for key, value in records:
            if key == b"path":
                name = value
            elif key == b"linkpath":
                linkname = value
            elif key == b"size":
                size = _pax_int(value, key, pos)
            elif key == b"uid":  # an impossible owner is shown as 0:0 below, as in the header's fields
                uid = _pax_int(value, key, pos, negative_ok=True)
            elif key == b"gid":
                gid = _pax_int(value, key, pos, negative_ok=True)
            elif key == b"mtime":
                mtime_ns = _pax_mtime(value, pos)
            elif key == b"SCHILY.devmajor":
                devmajor = _pax_int(value, key, pos)
            elif key == b"SCHILY.devminor":
                devminor = _pax_int(value, key, pos)
            elif key.startswith(b"SCHILY.xattr."):
                xattrs[key[len(b"SCHILY.xattr."):]] = value
            elif key.startswith(b"LIBARCHIVE.xattr."):
                xname = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr."):])
                try:
                    xattrs[xname] = base64.b64decode(value + b"=" * (-len(value) % 4))
                except ValueError:
                    warn(f"undecodable LIBARCHIVE.xattr value for {_show(name)}; dropped")
            elif key == b"GNU.sparse.name":
                sparse_name = value
            elif key in (b"GNU.sparse.size", b"GNU.sparse.realsize"):
                sparse_real = _pax_int(value, key, pos)
            elif key == b"GNU.sparse.offset":
                sp_offsets.append(_pax_int(value, key, pos))
            elif key == b"GNU.sparse.numbytes":
                sp_sizes.append(_pax_int(value, key, pos))
            elif key == b"GNU.sparse.map":
                nums = [_pax_int(v, key, pos) for v in value.split(b",") if v]
                sparse = list(zip(nums[0::2], nums[1::2]))
            elif key == b"GNU.sparse.major" and value == b"1":
                sparse_map_in_data = True
        pending = []
        long_name = long_link = None
        if sp_offsets:
            sparse = list(zip(sp_offsets, sp_sizes))
        if sparse_name is not None:
            name = sparse_name

        if typeflag == b"S":  # old GNU sparse: map in the header and extension blocks
            sparse = _gnu_sparse_entries(hdr[386:482], 4)
            sparse_real = _number(hdr[483:495], "sparse real size", pos)
            extended = hdr[482]
            while extended:
                ext = buf.read(BLOCK, data_at)
                if len(ext) < BLOCK:
                    raise TarFormatError(f"truncated tar: sparse header at byte {pos} is cut short")
                sparse.extend(_gnu_sparse_entries(ext[:504], 21))
                extended = ext[504]
                data_at += BLOCK

        if sparse_map_in_data:  # PAX sparse 1.0: the map is a prefix of the data
            sparse = []
            blocks: list[bytes] = []
            consumed = 0
            newlines = 0
            n = -1
            while True:
                blk = buf.read(BLOCK, data_at + consumed)
                if len(blk) < BLOCK:
                    raise TarFormatError(f"truncated tar: sparse map at byte {pos} is cut short")
                blocks.append(blk)
                consumed += BLOCK
                newlines += blk.count(b"\n")
                if n < 0 and newlines:
                    try:
                        n = int(b"".join(blocks).split(b"\n", 1)[0])
                    except ValueError:
                        raise TarFormatError(f"corrupt sparse map at byte {pos}") from None
                if n >= 0 and newlines >= 1 + 2 * n:
                    fields = b"".join(blocks).split(b"\n")
                    try:
                        nums = [int(f) for f in fields[1:1 + 2 * n]]
                    except ValueError:
                        raise TarFormatError(f"corrupt sparse map at byte {pos}") from None
                    sparse = list(zip(nums[0::2], nums[1::2]))
                    break
                if consumed > 1 << 24 or (n < 0 and consumed > BLOCK * 4):
                    raise TarFormatError(f"corrupt sparse map at byte {pos}")
            data_at += consumed
            size -= consumed

        stored = size  # bytes of data following the header(s)
        if stored < 0:
            raise TarFormatError(f"corrupt tar header at byte {member_at}: negative size")
        if sparse is not None:
            size = sparse_real if sparse_real is not None else stored
            end = 0
            for off, ln in sparse:
                if off < end or ln < 0 or off + ln > size:
                    raise TarFormatError(f"corrupt sparse map for {_show(name)} at byte {member_at}")
                end = off + ln
            if sum(ln for _o, ln in sparse) > stored:
                raise TarFormatError(f"corrupt sparse map for {_show(name)} at byte {member_at}: "
                                     "it maps more data than the member stores")
        if not -(1 << 63) <= mtime_ns < 1 << 63:
            warn(f"tar member {_show(name)} has an mtime out of range; shown as 0")
            mtime_ns = 0
        kind = _TYPES.get(typeflag)
        if typeflag in (b"0", b"\0") and name.endswith(b"/") and magic != b"ustar\0":
            kind = stat.S_IFDIR  # pre-POSIX (v7) tar marks directories only by the slash
            stored = 0
        if typeflag in _NO_DATA:
            stored = 0
        next_pos = data_at + (stored + BLOCK - 1) // BLOCK * BLOCK
        if length is not None and data_at + stored > length:
            raise TarFormatError(
                f"truncated tar: member {_show(name)} at byte {member_at} needs data up to byte "
                f"{data_at + stored}, the stream ends at {length}"
            )
        if size >= 1 << 63:
            raise TarFormatError(f"corrupt tar header at byte {member_at}: size {size} is impossible")
        if next_pos >= 1 << 63:
            # A sparse member's real size can be small while the data it claims to store
            # runs past any file offset; the next header would be read from there.
            raise TarFormatError(f"corrupt tar header at byte {member_at}: its data would end past "
                                 "the largest file offset")
        pos = next_pos
        if kind is None:
            warn(f"tar member {_show(name)} has unsupported type {typeflag!r}; skipped")
            continue
        path = normalize(name)
        if path is None:
            warn(f"tar member {_show(name)} has a NUL byte in its name; skipped")
            continue
        if len(path) > _MAX_PATH or path.count(b"/") >= _MAX_DEPTH:
            warn(f"tar member at byte {member_at} has a path of {len(path)} bytes; skipped")
            continue
        if kind == HARDLINK:
            target = normalize(linkname)
            if target is None or target == b"":
                warn(f"hard link {_show(name)} has an impossible target {_show(linkname)}; skipped")
                continue
            linkname = target
        elif kind != stat.S_IFLNK:
            linkname = b""
        if kind == stat.S_IFDIR:
            size = 0
        try:
            rdev = os.makedev(devmajor, devminor)
        except (OverflowError, ValueError):
            warn(f"device {_show(name)} has impossible numbers {devmajor},{devminor}; shown as 0,0")
            rdev = 0
        if uid < 0 or gid < 0 or uid > 0xFFFFFFFF or gid > 0xFFFFFFFF:
            warn(f"tar member {_show(name)} has an impossible owner {uid}:{gid}; shown as 0:0")
            uid = gid = 0
        count += 1
        if on_progress is not None and count % 4096 == 0:
            on_progress(pos, count)
        yield Member(
            path, kind, mode, uid, gid, size if kind == stat.S_IFREG else 0, mtime_ns, linkname,
            rdev, data_at, tuple(sorted(xattrs.items())),
            tuple(sparse) if sparse is not None else None,
        )
