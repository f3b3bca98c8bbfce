"""imagefs.tarscan: every tar dialect a layer may use, exact offsets, and corrupt input.

Archives are built in memory with `tarfile`, byte by byte with `builder.raw_header`
for malformed cases, and with GNU tar (when present) for sparse files.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder import (MTIME, ByteReader, device, dir, fifo, file, hardlink, layer_tar, pax_records, raw_header,
                     symlink)
from conftest import c_half_or_python
from imagefs.errors import ArchiveError, TarFormatError
from imagefs.tarscan import BLOCK, HARDLINK, Member, scan

EOA = bytes(2 * BLOCK)  # end-of-archive marker


@pytest.fixture(autouse=True, params=["c", "python"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: with the C run-of-plain-headers parser
    (imagefs._tarfast) and with the pure-Python scanner alone."""
    from imagefs import tarscan

    return c_half_or_python(request, monkeypatch, tarscan, "_tarfast")


def members(data: bytes, length: int | None = -1, warnings: list[str] | None = None) -> list[Member]:
    """Scan ``data``; ``length`` defaults to the real length, None means unknown."""
    sink = warnings if warnings is not None else []
    return list(scan(ByteReader(data), len(data) if length == -1 else length, sink.append))


def by_path(data: bytes) -> dict[bytes, Member]:
    return {m.path: m for m in members(data)}


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def pax(records: list[tuple[bytes, bytes]], typeflag: bytes = b"x", raw: bytes | None = None) -> bytes:
    """A PAX extended ('x') or global ('g') header with its data blocks."""
    data = pax_records(records) if raw is None else raw
    return raw_header(b"PaxHeader/x", size=len(data), typeflag=typeflag) + pad(data)


def entry(name: bytes, data: bytes = b"", **kw: object) -> bytes:
    """A ustar header plus its padded data."""
    return raw_header(name, size=len(data), **kw) + pad(data)  # type: ignore[arg-type]


def with_checksum(hdr: bytes | bytearray) -> bytes:
    """Recompute the (unsigned) checksum after patching header bytes."""
    h = bytearray(hdr)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def patched(hdr: bytes, start: int, value: bytes) -> bytes:
    h = bytearray(hdr)
    h[start:start + len(value)] = value
    return with_checksum(h)


def tar_of(*infos: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT, **kw: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:  # type: ignore[call-overload]
        for ti, data in infos:
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def info(name: str, typ: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mtime = MTIME
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti


def assert_data_offsets(data: bytes, expected: dict[bytes, bytes]) -> None:
    got = by_path(data)
    for path, content in expected.items():
        m = got[path]
        assert m.size == len(content), path
        assert data[m.offset:m.offset + m.size] == content, path


# --- Formats and dialects -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_every_entry_kind_in_every_format(fmt: int) -> None:
    data = layer_tar([
        dir("usr", mode=0o755, uid=1, gid=2),
        file("usr/a", b"hello\n", mode=0o4755, uid=1000, gid=1001),
        symlink("usr/link", "../etc/target"),
        hardlink("usr/hard", "usr/a"),
        device("dev/null", "c", 1, 3, mode=0o666),
        device("dev/sda1", "b", 8, 1),
        fifo("run/fifo", mode=0o600),
    ], fmt=fmt)
    got = by_path(data)
    assert list(got) == [b"usr", b"usr/a", b"usr/link", b"usr/hard", b"dev/null", b"dev/sda1", b"run/fifo"]

    d = got[b"usr"]
    assert (d.kind, d.mode, d.uid, d.gid, d.size, d.linkname) == (stat.S_IFDIR, 0o755, 1, 2, 0, b"")
    f = got[b"usr/a"]
    assert (f.kind, f.mode, f.uid, f.gid, f.size) == (stat.S_IFREG, 0o4755, 1000, 1001, 6)
    assert f.mtime_ns == MTIME * 1_000_000_000
    assert data[f.offset:f.offset + f.size] == b"hello\n"
    assert f.xattrs == () and f.sparse is None and f.rdev == 0
    s = got[b"usr/link"]
    assert (s.kind, s.size, s.linkname) == (stat.S_IFLNK, 0, b"../etc/target")  # raw, not normalised
    h = got[b"usr/hard"]
    assert (h.kind, h.size, h.linkname) == (HARDLINK, 0, b"usr/a")
    c = got[b"dev/null"]
    assert (c.kind, c.mode, c.rdev, c.size) == (stat.S_IFCHR, 0o666, os.makedev(1, 3), 0)
    b = got[b"dev/sda1"]
    assert (b.kind, b.rdev) == (stat.S_IFBLK, os.makedev(8, 1))
    p = got[b"run/fifo"]
    assert (p.kind, p.mode, p.rdev, p.size) == (stat.S_IFIFO, 0o600, 0, 0)


def test_ustar_prefix_field_extends_the_name() -> None:
    name = "d" * 90 + "/" + "e" * 60 + "/file.txt"  # > 100 bytes: tarfile splits it into prefix/name
    data = tar_of((info(name), b"content"), fmt=tarfile.USTAR_FORMAT)
    assert data[345:500].rstrip(b"\0"), "tarfile was expected to use the prefix field"
    got = members(data)
    assert [m.path for m in got] == [name.encode()]
    assert data[got[0].offset:got[0].offset + got[0].size] == b"content"


def test_prefix_field_is_ignored_without_posix_magic() -> None:
    # Old GNU headers keep atime/ctime where ustar has its prefix: never a name.
    hdr = raw_header(b"name", magic=b"ustar  \0", prefix=b"14553401540\0")
    assert [m.path for m in members(hdr + EOA)] == [b"name"]
    hdr = raw_header(b"name", magic=b"ustar\x0000", prefix=b"some/dir")
    assert [m.path for m in members(hdr + EOA)] == [b"some/dir/name"]


def test_gnu_long_names_and_long_link_names() -> None:
    long_dir = "/".join(["x" * 50] * 4)
    long_target = "/".join(["t" * 60] * 3)
    data = tar_of(
        (info(long_dir + "/file"), b"data"),
        (info(long_dir + "/sym", tarfile.SYMTYPE, linkname=long_target), None),
        (info(long_dir + "/hard", tarfile.LNKTYPE, linkname=long_dir + "/file"), None),
        (info("short"), b"s"),  # the long name must not leak into the next member
        fmt=tarfile.GNU_FORMAT,
    )
    assert b"././@LongLink" in data
    got = members(data)
    assert [m.path for m in got] == [f"{long_dir}/{n}".encode() for n in ("file", "sym", "hard")] + [b"short"]
    assert got[0].size == 4 and data[got[0].offset:got[0].offset + 4] == b"data"
    assert got[1].linkname == long_target.encode()
    assert got[2].kind == HARDLINK and got[2].linkname == f"{long_dir}/file".encode()
    assert got[3].linkname == b"" and data[got[3].offset:got[3].offset + 1] == b"s"


def test_pax_overrides_path_linkpath_uid_gid_and_mtime_nanoseconds() -> None:
    long_name = "p/" * 80 + "leaf"
    data = tar_of(
        (info(long_name, uid=5_000_000_000 % 2**32, gid=3_000_000,
              pax_headers={"mtime": "1700000000.123456789"}), b"abc"),
        (info("s", tarfile.SYMTYPE, linkname="l" * 150), None),
        fmt=tarfile.PAX_FORMAT,
    )
    f, s = members(data)
    assert f.path == long_name.encode()
    assert (f.uid, f.gid) == (5_000_000_000 % 2**32, 3_000_000)
    assert f.mtime_ns == 1_700_000_000_123_456_789
    assert data[f.offset:f.offset + 3] == b"abc"
    assert s.linkname == b"l" * 150


@pytest.mark.parametrize(("value", "ns"), [
    (b"1700000000.123456789", 1_700_000_000_123_456_789),
    (b"1700000000.5", 1_700_000_000_500_000_000),
    (b"1700000000", 1_700_000_000_000_000_000),
    (b"1700000000.1234567891234", 1_700_000_000_123_456_789),  # beyond ns: truncated
    (b"-1.25", -1_250_000_000),
    (b"0.000000001", 1),
])
def test_pax_mtime_is_exact_to_the_nanosecond(value: bytes, ns: int) -> None:
    data = pax([(b"mtime", value)]) + raw_header(b"f") + EOA
    assert members(data)[0].mtime_ns == ns


def test_pax_size_overrides_the_header_and_data_is_skipped_by_it() -> None:
    body = bytes(range(256)) * 3  # 768 bytes, the header claims 0
    data = pax([(b"size", b"768")]) + raw_header(b"big", size=0) + pad(body) + entry(b"next", b"n") + EOA
    got = by_path(data)
    assert got[b"big"].size == 768
    assert data[got[b"big"].offset:got[b"big"].offset + 768] == body
    assert data[got[b"next"].offset:got[b"next"].offset + 1] == b"n"


def test_pax_records_apply_to_the_next_member_only() -> None:
    data = pax([(b"path", b"renamed"), (b"uid", b"77")]) + entry(b"orig", b"1") + entry(b"plain", b"2") + EOA
    a, b = members(data)
    assert (a.path, a.uid) == (b"renamed", 77)
    assert (b.path, b.uid) == (b"plain", 0)


def test_pax_record_value_may_hold_newlines_and_equals() -> None:
    data = pax([(b"path", b"we=ird\nname"), (b"SCHILY.xattr.user.k=x", b"v=1\n")]) + raw_header(b"f") + EOA
    (m,) = members(data)
    assert m.path == b"we=ird\nname"
    # The key ends at the first '=': the xattr is named "user.k" and its value is "x=v=1\n".
    assert m.xattrs == ((b"user.k", b"x=v=1\n"),)


def test_pax_global_headers_apply_to_every_later_member() -> None:
    data = (
        pax([(b"comment", b"git commit id"), (b"uid", b"4242"), (b"SCHILY.xattr.user.g", b"1")], typeflag=b"g")
        + entry(b"a", b"A")
        + pax([(b"uid", b"7")]) + entry(b"b", b"B")  # a member's own record wins
        + pax([(b"gid", b"99")], typeflag=b"g") + entry(b"c", b"C")  # a later global adds to the set
        + EOA
    )
    got = by_path(data)
    assert (got[b"a"].uid, got[b"a"].gid, got[b"a"].xattrs) == (4242, 0, ((b"user.g", b"1"),))
    assert (got[b"b"].uid, got[b"b"].gid) == (7, 0)
    assert (got[b"c"].uid, got[b"c"].gid) == (4242, 99)
    assert b"PaxHeader/x" not in got  # extended headers are never members
    assert_data_offsets(data, {b"a": b"A", b"b": b"B", b"c": b"C"})


def test_tarfile_global_pax_header() -> None:
    data = tar_of((info("f"), b"x"), fmt=tarfile.PAX_FORMAT, pax_headers={"uid": "31337", "comment": "hi"})
    assert data[156:157] == b"g"
    (m,) = members(data)
    assert (m.path, m.uid) == (b"f", 31337)


def test_schily_xattrs_from_tarfile_and_with_binary_values() -> None:
    data = layer_tar([file("a", b"", xattrs={"user.mime": b"text/plain", "trusted.x": b"1"})])
    (m,) = members(data)
    assert m.xattrs == ((b"trusted.x", b"1"), (b"user.mime", b"text/plain"))  # sorted by name

    cap = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\xff\x00\n\x00"  # binary, NULs, a newline
    data = pax([(b"SCHILY.xattr.security.capability", cap), (b"SCHILY.xattr.user.empty", b"")]) \
        + raw_header(b"bin/ping") + EOA
    (m,) = members(data)
    assert dict(m.xattrs) == {b"security.capability": cap, b"user.empty": b""}


def test_libarchive_xattrs_are_base64_with_url_encoded_names() -> None:
    value = b"\x00\x01binary\xff\x00"
    b64 = base64.b64encode(value).rstrip(b"=")  # libarchive omits the padding
    assert b64 != base64.b64encode(value)
    data = pax([
        (b"LIBARCHIVE.xattr.user.with%20space%3Dand%25", b64),
        (b"LIBARCHIVE.xattr.security.selinux", base64.b64encode(b"system_u:object_r:bin_t:s0\0")),
    ]) + raw_header(b"f") + EOA
    (m,) = members(data)
    assert dict(m.xattrs) == {
        b"user.with space=and%": value,
        b"security.selinux": b"system_u:object_r:bin_t:s0\0",
    }


def test_undecodable_libarchive_xattr_is_dropped_with_a_warning() -> None:
    warnings: list[str] = []
    data = pax([(b"LIBARCHIVE.xattr.user.bad", b"abcde"), (b"SCHILY.xattr.user.ok", b"1")]) + raw_header(b"f") + EOA
    (m,) = members(data, warnings=warnings)
    assert m.xattrs == ((b"user.ok", b"1"),)
    assert len(warnings) == 1 and "LIBARCHIVE.xattr" in warnings[0]


def test_pax_device_numbers_beyond_the_ustar_fields() -> None:
    data = pax([(b"SCHILY.devmajor", b"259"), (b"SCHILY.devminor", b"1048575")]) \
        + raw_header(b"dev/nvme", typeflag=b"4") + EOA
    (m,) = members(data)
    assert (m.kind, m.rdev) == (stat.S_IFBLK, os.makedev(259, 1048575))


def test_device_numbers_from_the_ustar_header() -> None:
    hdr = patched(raw_header(b"dev/tty", typeflag=b"3"), 329, b"0000004\0" + b"0000001\0")
    (m,) = members(hdr + EOA)
    assert (m.kind, m.rdev) == (stat.S_IFCHR, os.makedev(4, 1))


def test_hard_link_targets_are_normalised_and_carry_no_data() -> None:
    data = entry(b"./usr/bin/a", b"A" * 10) + raw_header(b"./usr/bin/b", typeflag=b"1", linkname=b"./usr//bin/a") \
        + raw_header(b"c", typeflag=b"1", linkname=b"/usr/bin/a") + entry(b"after", b"Z") + EOA
    got = by_path(data)
    assert got[b"usr/bin/b"].linkname == b"usr/bin/a" and got[b"usr/bin/b"].size == 0
    assert got[b"c"].linkname == b"usr/bin/a"
    assert data[got[b"after"].offset:got[b"after"].offset + 1] == b"Z"


@pytest.mark.parametrize("target", [b"", b"./", b"/", b".."])
def test_hard_link_to_the_root_or_nothing_is_skipped_with_a_warning(target: bytes) -> None:
    warnings: list[str] = []
    data = raw_header(b"h", typeflag=b"1", linkname=target) + entry(b"f", b"x") + EOA
    assert [m.path for m in members(data, warnings=warnings)] == [b"f"]
    assert len(warnings) == 1 and "hard link" in warnings[0]


def test_symlink_target_is_kept_verbatim() -> None:
    data = raw_header(b"s", typeflag=b"2", linkname=b"/abs//../x/./") + EOA
    assert members(data)[0].linkname == b"/abs//../x/./"


def test_regular_file_variants_and_contiguous_type() -> None:
    data = entry(b"nul", b"0", typeflag=b"\0") + entry(b"seven", b"7", typeflag=b"7") + EOA
    got = by_path(data)
    assert got[b"nul"].kind == got[b"seven"].kind == stat.S_IFREG
    assert_data_offsets(data, {b"nul": b"0", b"seven": b"7"})


def test_directory_size_is_zero_and_gnu_dumpdir_data_is_skipped() -> None:
    listing = b"Nfile\0Yother\0\0"
    data = entry(b"d/", listing, typeflag=b"D", magic=b"ustar  \0") + entry(b"d/file", b"F") + EOA
    got = by_path(data)
    assert (got[b"d"].kind, got[b"d"].size) == (stat.S_IFDIR, 0)
    assert data[got[b"d/file"].offset:got[b"d/file"].offset + 1] == b"F"


def test_v7_regular_type_with_trailing_slash_is_a_directory() -> None:
    data = raw_header(b"olddir/", typeflag=b"\0", magic=bytes(8)) + EOA
    (m,) = members(data)
    assert m.kind == stat.S_IFDIR


def test_unknown_type_is_skipped_with_its_data_and_a_warning() -> None:
    warnings: list[str] = []
    data = entry(b"label", b"V" * 700, typeflag=b"V") + entry(b"f", b"x") + EOA
    got = members(data, warnings=warnings)
    assert [m.path for m in got] == [b"f"]
    assert data[got[0].offset:got[0].offset + 1] == b"x"
    assert len(warnings) == 1 and "unsupported type" in warnings[0]


def test_base256_uid_and_size() -> None:
    body = b"q" * 1000
    uid = b"\x80\x00\x00\x00" + (3_000_000).to_bytes(4, "big")  # 3e6 > 8**7: does not fit octal
    size = b"\x80" + len(body).to_bytes(11, "big")
    data = raw_header(b"big", uid=uid, size_field=size) + pad(body) + entry(b"next", b"N") + EOA
    got = by_path(data)
    assert got[b"big"].uid == 3_000_000
    assert got[b"big"].size == 1000
    assert_data_offsets(data, {b"big": body, b"next": b"N"})


def test_base256_written_by_tarfile_gnu_format() -> None:
    data = tar_of((info("f", uid=8**7 + 5, gid=2**32 - 2, mtime=8**11 + 3), b"z"), fmt=tarfile.GNU_FORMAT)
    assert data[108] & 0x80 and data[116] & 0x80 and data[136] & 0x80
    (m,) = members(data)
    assert (m.uid, m.gid, m.mtime_ns) == (8**7 + 5, 2**32 - 2, (8**11 + 3) * 1_000_000_000)


@pytest.mark.parametrize("uid", [b"\xff" * 8, b"\x80\x00\x00\x01\x00\x00\x00\x00"], ids=["negative", "over-32-bit"])
def test_impossible_owner_is_shown_as_root_with_a_warning(uid: bytes) -> None:
    warnings: list[str] = []
    (m,) = members(raw_header(b"f", uid=uid, gid=5) + EOA, warnings=warnings)
    assert (m.uid, m.gid) == (0, 0)
    assert len(warnings) == 1 and "owner" in warnings[0]


def test_signed_checksum_is_accepted() -> None:
    unsigned = raw_header("caf\u00e9-\u00fcber".encode())
    h = bytearray(unsigned)
    h[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in h)
    assert signed != sum(h)
    hdr = raw_header("caf\u00e9-\u00fcber".encode(), checksum=signed)
    assert [m.path for m in members(hdr + EOA)] == ["caf\u00e9-\u00fcber".encode()]


def test_numeric_fields_with_spaces_and_nul_terminators() -> None:
    hdr = patched(raw_header(b"f"), 100, b"  755 \0\0")
    hdr = patched(hdr, 108, b"     12 ")
    hdr = patched(hdr, 116, b"\0" * 8)  # an empty field reads as 0
    (m,) = members(hdr + EOA)
    assert (m.mode, m.uid, m.gid) == (0o755, 0o12, 0)


# --- Names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "path"), [
    (b"./a", b"a"),
    (b"/abs/p", b"abs/p"),
    (b"../../x", b"x"),
    (b"a//b", b"a/b"),
    (b"a/./b/", b"a/b"),
    (b"a/b/../../../c", b"c"),
    (b"./", b""),
    (b"/", b""),
    (b".", b""),
])
def test_names_are_normalised(name: bytes, path: bytes) -> None:
    assert [m.path for m in members(raw_header(name) + EOA)] == [path]


def test_pax_path_is_normalised_too() -> None:
    data = pax([(b"path", b"/../etc//passwd")]) + raw_header(b"x") + EOA
    assert members(data)[0].path == b"etc/passwd"


def test_nul_in_name_is_skipped_with_a_warning() -> None:
    warnings: list[str] = []
    data = pax([(b"path", b"a\0b")]) + entry(b"x", b"skip me") + entry(b"ok", b"kept") + EOA
    got = members(data, warnings=warnings)
    assert [m.path for m in got] == [b"ok"]
    assert data[got[0].offset:got[0].offset + 4] == b"kept"
    assert len(warnings) == 1 and "NUL" in warnings[0]


# --- Offsets and stream ends ----------------------------------------------------------------------

def test_data_offsets_are_exact_across_sizes_and_read_ahead_boundaries() -> None:
    sizes = [0, 1, 511, 512, 513, 1023, 1024, 70_000, 3] + [100] * 300  # 70 kB > one read-ahead
    contents = {f"f{i:03d}".encode(): bytes([i % 251]) * n for i, n in enumerate(sizes)}
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = layer_tar([file(p, c) for p, c in contents.items()], fmt=fmt)
        assert_data_offsets(data, contents)


def test_data_offsets_after_long_names_and_pax_headers() -> None:
    long = "n" * 200
    entries = [file(long + "1", b"one"), file("s", b"two", xattrs={"user.a": b"b"}), file(long + "3", b"three")]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = layer_tar(entries, fmt=fmt)
        assert_data_offsets(data, {(long + "1").encode(): b"one", b"s": b"two", (long + "3").encode(): b"three"})


def test_duplicate_members_are_all_yielded_in_order() -> None:
    data = entry(b"f", b"first") + entry(b"f", b"second!") + EOA
    got = members(data)
    assert [data[m.offset:m.offset + m.size] for m in got] == [b"first", b"second!"]


@pytest.mark.parametrize("length", ["real", None], ids=["length", "no-length"])
def test_end_without_zero_blocks_is_read_with_a_warning(length: str | None) -> None:
    # Every writer ends with zero blocks; without them the stream may have been cut at a
    # member boundary.  GNU tar, podman and umoci read such a tar: so does imagefs, and says so.
    data = entry(b"a", b"A" * 600) + entry(b"b", b"")
    warnings: list[str] = []
    assert [m.path for m in members(data, length=-1 if length else None, warnings=warnings)] == [b"a", b"b"]
    assert warnings == [f"no end-of-archive marker after byte {len(data)}: the tar may have been cut short"]


def test_end_with_a_single_zero_block_and_trailing_garbage_after_it() -> None:
    data = entry(b"a", b"x") + bytes(BLOCK) + b"garbage that is never read" * 50
    assert [m.path for m in members(data)] == [b"a"]


def test_empty_stream_has_no_members() -> None:
    assert members(b"") == []
    assert members(EOA) == []


def test_progress_is_reported_every_4096_members() -> None:
    data = raw_header(b"f") * 4097 + EOA
    calls: list[tuple[int, int]] = []
    got = list(scan(ByteReader(data), len(data), None, lambda off, n: calls.append((off, n))))
    assert len(got) == 4097
    assert calls == [(4096 * BLOCK, 4096)]


# --- Sparse files ---------------------------------------------------------------------------------

def expand_sparse(data: bytes, m: Member) -> bytes:
    assert m.sparse is not None
    out = bytearray(m.size)
    pos = m.offset
    for logical, n in m.sparse:
        out[logical:logical + n] = data[pos:pos + n]
        pos += n
    return bytes(out)


def _gnu_tar() -> str | None:
    tar = shutil.which("tar")
    if tar is None:
        return None
    version = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
    return tar if "GNU tar" in version else None


needs_gnu_tar = pytest.mark.skipif(_gnu_tar() is None, reason="GNU tar is not installed")


@pytest.fixture
def sparse_file(tmp_path: Path) -> Path:
    """A 3 MiB file with 12 data chunks and holes between (more than 4: old GNU needs extension blocks)."""
    p = tmp_path / "sparse.bin"
    with open(p, "wb") as f:
        for i in range(12):
            f.seek(i * (256 << 10))
            f.write(bytes([65 + i]) * 100)
        f.truncate(12 * (256 << 10) + 10)
    return p


@needs_gnu_tar
@pytest.mark.parametrize("options", [
    ["--format=gnu"],
    ["--format=pax", "--sparse-version=0.0"],
    ["--format=pax", "--sparse-version=0.1"],
    ["--format=pax", "--sparse-version=1.0"],
], ids=["gnu-S", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_gnu_tar_sparse_files(tmp_path: Path, sparse_file: Path, options: list[str]) -> None:
    out = tmp_path / "out.tar"
    (tmp_path / "after").write_bytes(b"after the sparse file")
    subprocess.run([_gnu_tar(), "--sparse", *options, "-cf", str(out), "-C", str(tmp_path), "sparse.bin", "after"],
                   check=True)
    data = out.read_bytes()
    if options == ["--format=gnu"]:
        assert data[156:157] == b"S" and data[482] == 1, "expected an old GNU sparse header with extensions"
    got = members(data)
    assert [m.path for m in got] == [b"sparse.bin", b"after"]  # GNUSparseFile.N/ names are replaced
    m = got[0]
    assert m.kind == stat.S_IFREG
    assert m.size == sparse_file.stat().st_size
    assert m.sparse is not None and len(m.sparse) >= 12
    assert expand_sparse(data, m) == sparse_file.read_bytes()
    after = got[1]
    assert after.sparse is None
    assert data[after.offset:after.offset + after.size] == b"after the sparse file"


def _sparse_1_0(map_text: bytes, chunks: bytes, realsize: int) -> bytes:
    return (
        pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", b"real/name"),
             (b"GNU.sparse.realsize", str(realsize).encode())])
        + raw_header(b"./GNUSparseFile.1/name", size=len(pad(map_text)) + len(chunks))
        + pad(map_text) + pad(chunks)
    )


def test_pax_sparse_1_0_built_by_hand() -> None:
    data = _sparse_1_0(b"2\n0\n3\n1000\n2\n", b"abcXY", 1002) + entry(b"next", b"N") + EOA
    got = by_path(data)
    m = got[b"real/name"]
    assert m.sparse == ((0, 3), (1000, 2)) and m.size == 1002
    assert expand_sparse(data, m) == b"abc" + bytes(997) + b"XY"
    assert data[got[b"next"].offset:got[b"next"].offset + 1] == b"N"


def test_pax_sparse_0_1_map_record() -> None:
    data = pax([(b"GNU.sparse.map", b"0,2,10,3"), (b"GNU.sparse.name", b"s"), (b"GNU.sparse.size", b"13")]) \
        + entry(b"GNUSparseFile.0/s", b"ab" + b"cde") + EOA
    (m,) = members(data)
    assert (m.path, m.size, m.sparse) == (b"s", 13, ((0, 2), (10, 3)))
    assert expand_sparse(data, m) == b"ab" + bytes(8) + b"cde"


def test_corrupt_pax_sparse_1_0_map_entry() -> None:
    data = _sparse_1_0(b"2\n0\nabc\n1000\n2\n", b"abcXY", 1002) + EOA
    with pytest.raises(TarFormatError, match="sparse"):
        members(data)


def test_corrupt_pax_sparse_1_0_map_count() -> None:
    data = _sparse_1_0(b"two\n0\n3\n", b"abc", 3) + EOA
    with pytest.raises(TarFormatError, match="sparse map"):
        members(data)


def test_truncated_pax_sparse_1_0_map() -> None:
    data = pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.name", b"s")]) + raw_header(b"s", size=512) + b"4\n0\n"
    with pytest.raises(TarFormatError, match="truncated"):
        members(data)


def test_truncated_old_gnu_sparse_extension_block() -> None:
    hdr = bytearray(raw_header(b"s", typeflag=b"S", magic=b"ustar  \0", size=0))
    hdr[386:410] = b"00000000000\0" + b"00000000000\0"
    hdr[482] = 1  # an extension block follows... but the stream ends
    with pytest.raises(TarFormatError, match="truncated"):
        members(with_checksum(hdr))


# --- Corrupt input --------------------------------------------------------------------------------

def test_tar_format_error_is_an_archive_error() -> None:
    assert issubclass(TarFormatError, ArchiveError)


def test_bad_checksum() -> None:
    data = entry(b"ok", b"1") + raw_header(b"bad", checksum=12345) + EOA
    with pytest.raises(TarFormatError, match=r"byte 1024: checksum mismatch"):
        members(data)


def test_random_bytes_are_not_a_header() -> None:
    with pytest.raises(TarFormatError, match="byte 0: checksum mismatch"):
        members(b"\x7fELF" + bytes(range(256)) * 4)


@pytest.mark.parametrize(("start", "value", "field"), [
    (100, b"0000x44\0", "mode"),
    (108, b"12345678", "uid"),  # 8 is not an octal digit
    (116, b"0000008\0", "gid"),
    (124, b"0000000001k\0", "size"),
    (136, b"1.5\0", "mtime"),
    (148, b"zzzzzz\0 ", "checksum"),
])
def test_non_octal_field(start: int, value: bytes, field: str) -> None:
    hdr = bytearray(raw_header(b"f"))
    hdr[start:start + len(value)] = value
    hdr = bytearray(with_checksum(hdr)) if field != "checksum" else hdr
    with pytest.raises(TarFormatError, match=f"byte 0: bad {field} field"):
        members(bytes(hdr) + EOA)


def test_non_octal_device_numbers() -> None:
    hdr = patched(raw_header(b"dev/x", typeflag=b"3"), 329, b"abc\0")
    with pytest.raises(TarFormatError, match="bad devmajor field"):
        members(hdr + EOA)


@pytest.mark.parametrize("cut", [1, 100, 511], ids=lambda n: f"{n}-bytes")
def test_truncated_in_a_header(cut: int) -> None:
    good = entry(b"a", b"A" * 10)
    data = good + raw_header(b"b")[:cut]
    for length in (len(data), None):
        with pytest.raises(TarFormatError, match=f"truncated tar: the stream ends inside a header at byte {len(good)}"):
            members(data, length=length)


def test_truncated_in_data_with_length() -> None:
    data = entry(b"a", b"x") + raw_header(b"big", size=5000) + b"y" * 1000
    with pytest.raises(TarFormatError, match=r"truncated tar: member big at byte 1024 needs data up to "
                                             r"byte 6536, the stream ends at 2536"):
        members(data)


def test_truncated_in_data_without_length_is_still_an_error() -> None:
    data = raw_header(b"big", size=5000) + b"y" * 1000
    with pytest.raises(TarFormatError, match="truncated"):
        members(data, length=None)


@pytest.mark.parametrize("length", ["real", None], ids=["length", "no-length"])
@pytest.mark.parametrize("tail", [
    pax([(b"path", b"x")]), raw_header(b"././@LongLink", size=5, typeflag=b"L") + pad(b"long\0"),
    pax([]), pax([], raw=bytes(20)), pax([(b"comment", b"c")], typeflag=b"g"),
], ids=["pax", "gnu-long-name", "empty-pax", "nul-pax", "global"])
def test_truncated_after_an_extended_header(tail: bytes, length: str | None) -> None:
    """An extended header says a member follows: without one the stream was cut,
    even when the header holds no record (it is not a tar that merely lacks its
    end-of-archive blocks)."""
    data = entry(b"first", b"1") + tail
    with pytest.raises(TarFormatError, match=f"truncated tar: the extended header at byte {BLOCK * 2} has no member"):
        members(data, length=-1 if length else None)


def test_truncated_inside_extended_header_data() -> None:
    data = raw_header(b"PaxHeader", size=600, typeflag=b"x") + b"30 path=" + b"a" * 100
    with pytest.raises(TarFormatError, match="truncated tar: extended header at byte 0 is cut short"):
        members(data)


def test_implausibly_large_extended_header() -> None:
    data = raw_header(b"PaxHeader", size=1 << 30, typeflag=b"x") + EOA
    with pytest.raises(TarFormatError, match="extended header of 1073741824 bytes"):
        members(data)


@pytest.mark.parametrize("raw", [
    b"abc path=x\n",          # length is not a number
    b"99 path=x\n",           # length runs past the data
    b"2 path=x\n",            # length shorter than its own digits
    b"0 path=x\n",
    b"-5 path=x\n",
    b"10 path=xy\n",          # length cuts the record: no newline at its end
    b"9 pathx\n" + b"8 a=bc\n",  # no '='
    b"13path=abcde\n",        # no space after the length
    b"12 path=abcd",          # no newline, no space anywhere after
], ids=["nan", "too-long", "too-short", "zero", "negative", "no-newline", "no-equals", "no-space", "unterminated"])
def test_corrupt_pax_record(raw: bytes) -> None:
    data = pax([], raw=raw) + raw_header(b"f") + EOA
    with pytest.raises(TarFormatError, match=r"corrupt PAX (header|record) at byte 0"):
        members(data)


def test_pax_padding_after_the_last_record_is_allowed() -> None:
    data = pax([], raw=pax_records([(b"path", b"padded")]) + b"\0" * 20) + raw_header(b"f") + EOA
    assert members(data)[0].path == b"padded"


@pytest.mark.parametrize(("key", "value"), [
    (b"size", b"12x"), (b"uid", b"root"), (b"gid", b""), (b"mtime", b"yesterday"), (b"mtime", b"1e9"),
    (b"SCHILY.devmajor", b"8.0"), (b"GNU.sparse.map", b"0,a"),
])
def test_corrupt_pax_numbers(key: bytes, value: bytes) -> None:
    data = pax([(key, value)]) + raw_header(b"f", typeflag=b"4") + EOA
    # The position named is the member's own header, which the record belongs to.
    with pytest.raises(TarFormatError, match=rf"corrupt PAX {re.escape(key.decode())} at byte 1024"):
        members(data)


@pytest.mark.parametrize("size_field", [b"-0000000001\0", b"\xff" * 12], ids=["octal", "base-256"])
def test_negative_size_in_header(size_field: bytes) -> None:
    data = raw_header(b"neg", size_field=size_field) + EOA
    with pytest.raises(TarFormatError, match="byte 0: negative size"):
        members(data)


@pytest.mark.parametrize("key", [b"uid", b"gid"])
def test_negative_owner_in_pax_record_is_shown_as_root(key: bytes) -> None:
    """As an impossible owner in the header's own fields: a warning, not a refused layer."""
    data = pax([(key, b"-5")]) + raw_header(b"f") + EOA
    warnings: list[str] = []
    (m,) = scan(ByteReader(data), len(data), warnings.append)
    assert (m.uid, m.gid) == (0, 0) and any("impossible owner" in w for w in warnings)


def test_negative_size_in_pax_record() -> None:
    data = pax([(b"size", b"-1536")]) + raw_header(b"neg") + EOA
    with pytest.raises(TarFormatError, match="corrupt PAX size at byte 1024: negative value"):
        # islice: with the bug the generator never ends; stop after a few members.
        list(itertools.islice(scan(ByteReader(data), len(data)), 10))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_c_path_takes_runs_of_plain_headers(scanner: str, fmt: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C parser must really take the common case (else indexing silently stays slow),
    and give exactly what the Python scanner gives for it."""
    from imagefs import tarscan

    entries = [dir("./usr"), dir("usr/bin/"), file("usr/bin/tool", b"x" * 700, mode=0o4755, uid=7, gid=8),
               symlink("usr/bin/t", "../bin/tool"), hardlink("usr/bin/t2", "./usr/bin/tool"),
               file("a/../b//c/./d", b"dd"), device("dev/null", "char", 1, 3), fifo("run/pipe"),
               file("p" * 90 + "/" + "n" * 90, b"long ustar name with prefix")]
    data = layer_tar(entries, fmt=fmt)
    run, pos, _short = tarscan._tarfast.scan_plain(data, 0, 0, len(data), Member)
    if fmt != tarfile.GNU_FORMAT:  # the long name fits name + prefix, or is a PAX path: C's
        assert len(run) == len(entries)
        assert data[pos:pos + BLOCK] == bytes(BLOCK)  # it stopped at the end-of-archive marker
    else:  # GNU writes the long name as an extended header: Python's
        assert len(run) == len(entries) - 1
        assert data[pos + 156:pos + 157] == b"L"
    monkeypatch.setattr(tarscan, "_tarfast", None)
    assert members(data)[:len(run)] == run  # what the Python scanner alone makes of the same bytes
    paths = [m.path for m in run]
    assert paths[:6] == [b"usr", b"usr/bin", b"usr/bin/tool", b"usr/bin/t", b"usr/bin/t2", b"b/c/d"]
    assert run[4].kind == HARDLINK and run[4].linkname == b"usr/bin/tool"
    assert run[3].linkname == b"../bin/tool" and run[2].mode == 0o4755 and (run[2].uid, run[2].gid) == (7, 8)
    assert run[6].rdev == os.makedev(1, 3)


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_c_path_hands_special_headers_to_python(scanner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagefs import tarscan

    data = layer_tar([file("a", b"1"), file("b", b"2", xattrs={"user.k": b"v"}), file("c", b"3")])
    run, pos, _short = tarscan._tarfast.scan_plain(data, 0, 0, len(data), Member)
    assert [m.path for m in run] == [b"a"]  # the PAX header of b is Python's
    assert data[pos + 156:pos + 157] == b"x"
    with_c = members(data)
    assert [m.path for m in with_c] == [b"a", b"b", b"c"]
    monkeypatch.setattr(tarscan, "_tarfast", None)
    assert members(data) == with_c


def _scan_outcome(data: bytes) -> tuple[list[Member] | str, list[str]]:
    """Members and warnings, or the error's message and the warnings before it."""
    warnings: list[str] = []
    try:
        return members(data, warnings=warnings), warnings
    except TarFormatError as e:
        return str(e), warnings


@pytest.mark.parametrize("records", [
    [(b"path", b"x" * 300), (b"mtime", b"1700000000.123456789"), (b"uid", b"70000"), (b"gid", b"0009")],
    [(b"mtime", b"1.5")], [(b"mtime", b".5")], [(b"mtime", b"1.")], [(b"mtime", b"+1")], [(b"mtime", b"-1.25")],
    [(b"mtime", b"1.1234567891234")], [(b"mtime", b"1.12345678x9")], [(b"mtime", b"1.1234x")],
    [(b"mtime", b"9223372035.999999999")], [(b"mtime", b"9223372036.854775808")], [(b"mtime", b"1e3")],
    [(b"mtime", "1.\u0661".encode())], [(b"size", b" 2")], [(b"size", b"1_0")], [(b"size", b"")],
    [(b"size", b"1234567890123456789012")], [(b"uid", b"4294967296")], [(b"uid", b"+5")],
    [(b"path", b"")], [(b"path", b"a\0b")], [(b"path", b"../../x/./y/")], [(b"path", b"p/" * 1100 + b"f")],
    [(b"path", b"q" * 20000)], [(b"path", b"./" * 20000 + b"r")], [(b"linkpath", b"/abs/../target")],
    [(b"linkpath", b"..")], [(b"linkpath", b"t\0")],
    [(b"atime", b"1.5"), (b"ctime", b"x"), (b"comment", b"hi"), (b"uname", b"")],
    [(b"path", b"first"), (b"path", b"second")], [(b"SCHILY.devmajor", b"1")], [(b"GNU.sparse.major", b"0")],
    [(b"SCHILY.xattr.user.a", b"v")], [(b"LIBARCHIVE.xattr.user.b", b"dg==")], [(b"key=with", b"equals=")],
])
@pytest.mark.parametrize("typeflag", [b"0", b"1", b"2", b"5"])
@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_pax_headers_read_the_same_in_c_and_python(scanner: str, records: list[tuple[bytes, bytes]],
                                                   typeflag: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C parser takes PAX headers of path, linkpath, size, uid, gid and mtime
    itself: for any record it must give what Python gives, or leave it to Python."""
    from imagefs import tarscan

    data = (entry(b"before", b"b") + pax(records)
            + entry(b"name", b"" if typeflag != b"0" else b"12345", typeflag=typeflag, linkname=b"before")
            + entry(b"after", b"a") + EOA)
    with_c = _scan_outcome(data)
    monkeypatch.setattr(tarscan, "_tarfast", None)
    assert with_c == _scan_outcome(data)


@pytest.mark.parametrize("records", [
    [(b"path", b"x" * 300)], [(b"linkpath", b"../" * 40 + b"t")], [(b"size", b"5")], [(b"uid", b"70000")],
    [(b"gid", b"0009")], [(b"mtime", b"1700000000.123456789")], [(b"mtime", b"1700000000")],
    [(b"path", b"p/" * 100 + b"f"), (b"mtime", b"1.5"), (b"uid", b"1"), (b"gid", b"2"), (b"size", b"5")],
])
@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_c_path_itself_takes_the_pax_records_writers_use(scanner: str, records: list[tuple[bytes, bytes]],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The differential cases above would pass if C left every PAX header to
    Python; these well-formed ones (what Go, GNU tar and Python write) it must take."""
    from imagefs import tarscan

    data = entry(b"before", b"b") + pax(records) + entry(b"name", b"12345") + entry(b"after", b"a") + EOA
    python_parse = []
    real_checksum = tarscan._checksum_ok
    monkeypatch.setattr(tarscan, "_checksum_ok", lambda h, at: python_parse.append(at) or real_checksum(h, at))
    with_c = members(data)
    assert python_parse == []
    assert len(with_c) == 3
    monkeypatch.setattr(tarscan, "_tarfast", None)
    assert members(data) == with_c


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_c_path_takes_pax_headers_across_read_ahead_boundaries(scanner: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Long names as Go's archive/tar writes them (a PAX header before the member),
    so many that some header pairs straddle the scanner's read-ahead buffer."""
    from imagefs import tarscan

    names = [("d%03d/" % (i % 7)) + "n" * (100 + i % 50) + str(i) for i in range(600)]
    data = tar_of(*[(info(n), b"x" * (i * 37 % 1500)) for i, n in enumerate(names)])
    python_parse = []
    real_checksum = tarscan._checksum_ok
    monkeypatch.setattr(tarscan, "_checksum_ok", lambda h, at: python_parse.append(at) or real_checksum(h, at))
    with_c = members(data)
    assert [m.path.decode() for m in with_c] == names
    assert python_parse == []  # no header was left to the Python rules
    monkeypatch.setattr(tarscan, "_tarfast", None)
    assert members(data) == with_c
