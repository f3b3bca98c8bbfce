"""_indexfast.readdirplus: the FUSE readdirplus records of a directory, made in C.

pyfuse3 (patch level 7) sends these bytes as the reply instead of calling
readdir, so they must be what readdir's entries become through pyfuse3 and
libfuse's fuse_add_direntry_plus.  The reference runs the Python readdir with
a readdir_reply that encodes each entry the way libfuse does.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Iterator

import pyfuse3
import pytest

from builder import device, dir, fifo, file, hardlink, symlink, write_docker_archive
from conftest import require_c_half
from imagefs import BuildOptions, ImageTree
from imagefs import index as index_module
from imagefs.fuseops import BLKSIZE, CACHE_TIMEOUT, ReadOnlyOperations
from imagefs.index import ROOT_INO
from imagefs.tree import DIR_SIZE

ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # struct fuse_attr (88 bytes)
DIRENT = struct.Struct("<QQII")  # ino off namelen type, then the name


def _libfuse_record(e: pyfuse3.EntryAttributes, name: bytes, next_id: int) -> bytes:
    """What libfuse's fuse_add_direntry_plus writes for one readdir_reply (padded to 8)."""
    def timeout(t: float) -> tuple[int, int]:  # libfuse's calc_timeout_sec / calc_timeout_nsec
        sec = int(t)
        return sec, min(int((t - sec) * 1e9), 999_999_999)

    (esec, ensec), (asec, ansec) = timeout(e.entry_timeout), timeout(e.attr_timeout)
    times = [divmod(ns, 10**9) for ns in (e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns)]
    rec = ENTRY_OUT.pack(e.st_ino, e.generation, esec, asec, ensec, ansec) + ATTR.pack(
        e.st_ino, e.st_size, e.st_blocks, times[0][0], times[1][0], times[2][0], times[0][1], times[1][1],
        times[2][1], e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_rdev & 0xFFFFFFFF, e.st_blksize, 0,
    ) + DIRENT.pack(e.st_ino, next_id, len(name), stat.S_IFMT(e.st_mode) >> 12) + name
    return rec + bytes(-len(rec) % 8)


def reference(tree: ImageTree, ino: int, start: int, size: int, timeout: float) -> bytes:
    """The reply pyfuse3 and libfuse make of the Python readdir's entries, from
    ``start`` and into ``size`` bytes: readdir itself decides "." and "..", the
    offsets and where the listing ends; libfuse's encoding is done here."""
    out = bytearray()

    def readdir_reply(_token: object, name: bytes, e: pyfuse3.EntryAttributes, next_id: int) -> bool:
        rec = _libfuse_record(e, name, next_id)
        if len(out) + len(rec) > size:
            return False  # libfuse's answer when the buffer is full
        out.extend(rec)
        return True

    ops = ReadOnlyOperations(tree, timeout=timeout)
    saved = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = readdir_reply
    try:
        ops.readdir(ino, start, None).send(None)
    except StopIteration:
        pass
    else:
        raise AssertionError("readdir suspended")
    finally:
        pyfuse3.readdir_reply = saved
    return bytes(out)


def records(tree: ImageTree, ino: int, start: int, size: int, timeout: float = CACHE_TIMEOUT) -> bytes | None:
    return tree.index.readdirplus(ino, start, size, timeout, BLKSIZE, DIR_SIZE)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageTree]:
    require_c_half(index_module, "_indexfast")
    path = tmp_path_factory.mktemp("rdp") / "image.tar"
    many = [file(f"big/f{i:04d}-" + "n" * (i % 40), b"x" * (i % 7), mode=0o600 + i % 64, uid=i, gid=2 * i,
                 mtime=1_700_000_000 + i) for i in range(700)]
    write_docker_archive(str(path), [[
        dir("usr", mode=0o755), dir("usr/bin", mode=0o2775, uid=3), file("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755),
        hardlink("usr/bin/tool2", "usr/bin/tool"), symlink("usr/bin/sh", "../../bin/busybox"),
        device("dev/null", "char", 1, 3), device("dev/loop1", "block", 7, 1), device("dev/big", "char", 4095, 1048575),
        fifo("run/pipe"), file("old", b"epoch", mtime=0), file("n" * 255, b"long name"), *many,
    ]])
    t = ImageTree.open(str(path), BuildOptions(use_cache=False))
    yield t
    t.close()


def _dirs(tree: ImageTree) -> list[int]:
    todo, out = [ROOT_INO], []
    while todo:
        ino = todo.pop()
        out.append(ino)
        todo += [child for _p, _n, child in tree.entries(ino) if stat.S_ISDIR(tree.stat(child).mode)]
    return out


@pytest.mark.parametrize("size", [4096, 32768, 131072, 300])
def test_every_directory_reads_as_libfuse_would_write_it(tree: ImageTree, size: int) -> None:
    for ino in _dirs(tree):
        count = len(list(tree.entries(ino))) + 2
        for start in sorted({0, 1, 2, 3, count // 2, count - 1, count}):
            got = records(tree, ino, start, size)
            assert got == reference(tree, ino, start, size, CACHE_TIMEOUT), (ino, start, size)


def test_a_listing_resumes_where_the_last_reply_ended(tree: ImageTree) -> None:
    big = tree.resolve(b"big")
    names, start = [], 0
    while True:
        chunk = records(tree, big, start, 4096)
        assert chunk is not None
        if not chunk:
            break
        pos = 0
        while pos < len(chunk):
            _ino, off, namelen, _type = DIRENT.unpack_from(chunk, pos + ENTRY_OUT.size + ATTR.size)
            names.append(chunk[pos + 152:pos + 152 + namelen])
            start = off
            pos += (152 + namelen + 7) // 8 * 8
    assert names == [b".", b".."] + [n for _p, n, _i in tree.entries(big)]


def test_fractional_timeouts_and_attributes_of_specials(tree: ImageTree) -> None:
    dev = tree.resolve(b"dev")
    assert records(tree, dev, 0, 65536, 1.25) == reference(tree, dev, 0, 65536, 1.25)
    big = next(child for _p, name, child in tree.entries(dev) if name == b"big")
    assert tree.stat(big).rdev == os.makedev(4095, 1048575)  # more than 32 bits: cut as libfuse cuts it


def test_what_readdir_must_answer_itself(tree: ImageTree) -> None:
    tool = tree.resolve(b"usr/bin/tool")
    assert records(tree, tool, 0, 4096) is None  # not a directory: ENOTDIR/EBADF from readdir
    assert records(tree, 0, 0, 4096) is None
    assert records(tree, tree.index.n_inodes + 1, 0, 4096) is None
    count = len(list(tree.entries(ROOT_INO))) + 2
    assert records(tree, ROOT_INO, count, 4096) == b""  # the end of the listing
    assert records(tree, ROOT_INO, 0, 10) == b""  # not even "." fits
