"""Random access into compressed layers: every read equals the same bytes of the plain layer.

Multi-megabyte layers in gzip, single-frame zstd and multi-frame zstd; reads at
random offsets and lengths, backwards and forwards, through the library with a
cache (seek points, frame tables, the flat zstd copy) and without one, then
again from a second open that reuses the cache.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest
import zstandard

from builder import write_tar
from imagefs import BuildOptions, ImageTree, gzipblob
from imagefs.blobs import FileBlob
from imagefs.errors import ArchiveError
from imagefs.gzipblob import GzipBlob

SIZE = 6 << 20  # spans several gzip seek points (1 MiB) and the zstd rewind limit (8 MiB) with two files


def _layer() -> tuple[bytes, dict[str, bytes]]:
    rnd = random.Random(1234)
    files = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(3):
            # compressible but not trivial: words from a small vocabulary plus random bytes
            words = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(3, 9))) for _ in range(500)]
            data = b" ".join(rnd.choice(words) for _ in range(SIZE // 6))[:SIZE]
            name = f"blob{i}.bin"
            files[name] = data
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue(), files


LAYER, FILES = _layer()


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if kind == "zstd-one-frame":
        return zstandard.ZstdCompressor(level=1).compress(data)
    # several frames, as chunked writers produce
    step = 1 << 20
    c = zstandard.ZstdCompressor(level=1)
    return b"".join(c.compress(data[i:i + step]) for i in range(0, len(data), step))


def _archive(tmp_path: Path, kind: str) -> Path:
    import hashlib
    import json

    blob = _compress(kind, LAYER)
    diff_id = hashlib.sha256(LAYER).hexdigest()
    digest = hashlib.sha256(blob).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    cfg = hashlib.sha256(config).hexdigest()
    media = "gzip" if kind == "gzip" else "zstd"
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": f"sha256:{cfg}", "size": len(config)},
                           "layers": [{"mediaType": f"application/vnd.oci.image.layer.v1.tar+{media}",
                                       "digest": f"sha256:{digest}", "size": len(blob)}]}).encode()
    mdig = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": f"sha256:{mdig}", "size": len(manifest)}]})
    path = tmp_path / f"{kind}.tar"
    write_tar(str(path), [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index.encode()),
                          (f"blobs/sha256/{digest}", blob), (f"blobs/sha256/{cfg}", config),
                          (f"blobs/sha256/{mdig}", manifest)])
    return path


def _check_reads(tree: ImageTree, seed: int) -> None:
    rnd = random.Random(seed)
    names = sorted(FILES)
    for _ in range(60):
        name = rnd.choice(names)
        data = FILES[name]
        off = rnd.randrange(len(data))
        n = rnd.choice([1, 4096, 65536, 131072, 1 << 20])
        assert tree.read(tree.resolve(name.encode()), off, n) == data[off:off + n], (name, off, n)
    for name in reversed(names):  # backwards through the layer: the worst case for a stream
        data = FILES[name]
        assert tree.read(tree.resolve(name.encode()), len(data) - 100, 100) == data[-100:]


@pytest.mark.parametrize("kind", ["gzip", "zstd-one-frame", "zstd-frames"])
@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_random_reads_match_the_plain_layer(tmp_path: Path, kind: str, cached: bool) -> None:
    archive = _archive(tmp_path, kind)
    opts = BuildOptions(cache_dir=str(tmp_path / "cache"), use_cache=cached)
    with ImageTree.open(str(archive), opts) as tree:
        assert sorted(tree.listdir(tree.root)) == sorted(n.encode() for n in FILES)
        _check_reads(tree, 1)
    if cached:
        # A second open reuses the index and the saved seek points / frame table / flat copy.
        with ImageTree.open(str(archive), opts) as tree:
            assert tree.index.from_cache
            _check_reads(tree, 2)


@pytest.mark.parametrize("outer", [False, True], ids=["archive", "in-a-tar.zst"])
def test_a_flipped_byte_in_a_gzip_layer_is_refused(tmp_path: Path, outer: bool) -> None:
    """indexed_gzip checks no CRC: without the check beside the scan, this layer
    indexed fine and its file read back with a wrong byte.  In a compressed
    archive the check runs after the scan (one reader decodes the archive)."""
    archive = _archive(tmp_path, "gzip")
    raw = bytearray(archive.read_bytes())
    blob = _compress("gzip", LAYER)
    at = bytes(raw).index(blob) + len(blob) * 2 // 3  # inside the third file's data, past its header
    raw[at] ^= 0x01
    archive.write_bytes(bytes(raw))
    if outer:
        archive = tmp_path / "outer.tar.zst"
        archive.write_bytes(zstandard.ZstdCompressor(level=1).compress(bytes(raw)))
    with pytest.raises(ArchiveError, match="corrupt gzip data"):
        ImageTree.open(str(archive), BuildOptions(use_cache=False)).close()


def test_a_flipped_byte_in_a_gzip_archive_is_refused(tmp_path: Path) -> None:
    """The same for `docker save | gzip`: the outer stream's CRC is checked beside its scan."""
    archive = _archive(tmp_path, "gzip")
    outer = bytearray(gzip.compress(archive.read_bytes(), compresslevel=1, mtime=0))
    outer[len(outer) * 2 // 3] ^= 0x01
    path = tmp_path / "outer.tar.gz"
    path.write_bytes(bytes(outer))
    with pytest.raises(ArchiveError, match="corrupt gzip data"):
        ImageTree.open(str(path), BuildOptions(use_cache=False)).close()


@pytest.mark.parametrize(("name", "stream", "error"), [
    ("one member", gzip.compress(b"x" * 100_000, mtime=0), None),
    ("two members", gzip.compress(b"a" * 5000, mtime=0) + gzip.compress(b"b" * 5000, mtime=0), None),
    ("zero padding", gzip.compress(b"x" * 1000, mtime=0) + bytes(4096), None),
    ("other trailing bytes", gzip.compress(b"x" * 1000, mtime=0) + b"junk", None),
    ("wrong CRC", gzip.compress(b"x" * 1000, mtime=0)[:-8] + b"\0\0\0\0" + (1000).to_bytes(4, "little"),
     "corrupt gzip data"),
    ("wrong length", gzip.compress(b"x" * 1000, mtime=0)[:-4] + (999).to_bytes(4, "little"), "corrupt gzip data"),
    ("cut short", gzip.compress(os.urandom(5000), mtime=0)[:-100], "truncated gzip data"),
    ("second member cut", gzip.compress(b"a", mtime=0) + gzip.compress(b"b" * 5000, mtime=0)[:20],
     "truncated gzip data"),
])
def test_check_gzip(tmp_path: Path, name: str, stream: bytes, error: str | None) -> None:
    path = tmp_path / "blob.gz"
    path.write_bytes(stream)
    if error is None:
        gzipblob.check_gzip(FileBlob(str(path)), name)
    else:
        with pytest.raises(ArchiveError, match=error):
            gzipblob.check_gzip(FileBlob(str(path)), name)


def test_gzip_outer_archive_random_reads(tmp_path: Path) -> None:
    archive = _archive(tmp_path, "zstd-frames")
    outer = tmp_path / "outer.tar.gz"
    outer.write_bytes(gzip.compress(archive.read_bytes(), compresslevel=1, mtime=0))
    with ImageTree.open(str(outer), BuildOptions(cache_dir=str(tmp_path / "cache"))) as tree:
        _check_reads(tree, 3)


def test_zstd_outer_archive_random_reads(tmp_path: Path) -> None:
    archive = _archive(tmp_path, "gzip")
    outer = tmp_path / "outer.tar.zst"
    outer.write_bytes(zstandard.ZstdCompressor(level=1).compress(archive.read_bytes()))
    with ImageTree.open(str(outer), BuildOptions(cache_dir=str(tmp_path / "cache"))) as tree:
        _check_reads(tree, 4)


def test_modified_archive_is_reindexed(tmp_path: Path) -> None:
    archive = _archive(tmp_path, "gzip")
    opts = BuildOptions(cache_dir=str(tmp_path / "cache"))
    with ImageTree.open(str(archive), opts) as tree:
        assert not tree.index.from_cache
    with ImageTree.open(str(archive), opts) as tree:
        assert tree.index.from_cache
    os.utime(archive)  # same bytes, new mtime: a changed archive as far as anyone can tell
    with ImageTree.open(str(archive), opts) as tree:
        assert not tree.index.from_cache
        _check_reads(tree, 5)


# -- gzip: reads that continue the stream ------------------------------------------------------

def _gzip_blob(tmp_path: Path, raw: bytes) -> GzipBlob:
    """A GzipBlob as a mount has it: seek points built by one pass, saved, imported."""
    path = tmp_path / "layer.gz"
    path.write_bytes(raw)
    state = str(tmp_path / "state")
    first = GzipBlob(FileBlob(str(path)), "test layer", state)
    while first.pread(1 << 20, first._gz.tell()):
        pass
    first.save_state()
    blob = GzipBlob(FileBlob(str(path)), "test layer", state)
    assert blob._imported
    return blob


def test_gzip_sequential_reads_inflate_on(tmp_path: Path) -> None:
    blob = _gzip_blob(tmp_path, gzip.compress(LAYER, compresslevel=1, mtime=0))
    pos = 0
    rnd = random.Random(5)
    while pos < len(LAYER):
        gap = rnd.choice([0, 0, 0, 512, 1536])  # tar headers between members
        n = rnd.choice([4096, 131072, 1 << 20])
        data = blob.pread(n, pos + gap)
        assert data == LAYER[pos + gap:pos + gap + n]
        assert blob._stream is not None, "a sequential read went through indexed_gzip"
        assert len(blob._stream.buf) <= gzipblob._OUT_MAX + n
        pos += gap + len(data)
    assert blob.pread(100, len(LAYER)) == b""
    # a read far behind or far ahead seeks instead, and is right too
    assert blob.pread(1000, 10) == LAYER[10:1010]
    far = len(LAYER) - 5000
    assert blob.pread(4096, far) == LAYER[far:far + 4096]


def test_gzip_stream_crosses_members_ignores_padding_and_falls_back_on_bad_data(tmp_path: Path) -> None:
    half = len(LAYER) // 2
    first = gzip.compress(LAYER[:half], mtime=0)
    two_members = first + gzip.compress(LAYER[half:], mtime=0)
    (tmp_path / "a").mkdir()
    blob = _gzip_blob(tmp_path / "a", two_members)
    assert b"".join(blob.pread(1 << 20, off) for off in range(0, len(LAYER), 1 << 20)) == LAYER
    assert blob._stream is not None and blob._stream.pos == len(LAYER), "zlib stopped at the member boundary"
    assert blob._imported  # and never handed over to indexed_gzip

    padded = gzip.compress(LAYER, mtime=0) + bytes(4096)  # some writers pad the blob
    (tmp_path / "b").mkdir()
    blob = _gzip_blob(tmp_path / "b", padded)
    assert b"".join(blob.pread(1 << 20, off) for off in range(0, len(LAYER), 1 << 20)) == LAYER
    assert blob.pread(10, len(LAYER)) == b""  # the padding starts no member: the end, as for gzip(1)
    assert blob._stream is not None and blob._imported

    # zlib checks the first member's CRC-32, indexed_gzip does not (the first mount's
    # check_gzip refuses such a layer): zlib stops there and indexed_gzip takes over.
    bad_crc = bytearray(two_members)
    bad_crc[len(first) - 8] ^= 0xFF
    (tmp_path / "c").mkdir()
    blob = _gzip_blob(tmp_path / "c", bytes(bad_crc))
    assert b"".join(blob.pread(1 << 20, off) for off in range(0, len(LAYER), 1 << 20)) == LAYER
    assert blob._stream is None and not blob._imported


def test_gzip_stream_output_is_bounded_for_a_bomb(tmp_path: Path) -> None:
    zeros = bytes(64 << 20)
    blob = _gzip_blob(tmp_path, gzip.compress(zeros, compresslevel=9, mtime=0))
    for off in range(0, len(zeros), 2 << 20):  # skips within reach: the stream inflates on
        assert blob.pread(4096, off) == bytes(4096)
        assert blob._stream is not None and blob._stream.pos == off + 4096
        assert len(blob._stream.buf) <= gzipblob._OUT_MAX
