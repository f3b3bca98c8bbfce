"""imagefs.archive: opening the outer tar, its member map, and links between members."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from builder import file, layer_tar, write_docker_archive, write_tar
from imagefs.archive import Archive
from imagefs.errors import ArchiveError, ImageFormatError
from imagefs.manifest import read_images
from imagefs.tarscan import HARDLINK


@pytest.fixture
def opened() -> Iterator[list[Archive]]:
    """Archives to close at the end of the test."""
    archives: list[Archive] = []
    yield archives
    for a in archives:
        a.close()


def open_archive(path: Path, opened: list[Archive]) -> Archive:
    a = Archive(str(path))
    opened.append(a)
    return a


def outer_tar(path: Path, members: list[tuple[str, bytes | None, bytes, str]]) -> None:
    """Write an outer tar of (name, data, type, linkname); data None for links."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, typ, link in members:
            ti = tarfile.TarInfo(name)
            ti.type = typ
            ti.linkname = link
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)


def reg(name: str, data: bytes) -> tuple[str, bytes, bytes, str]:
    return (name, data, tarfile.REGTYPE, "")


def sym(name: str, target: str) -> tuple[str, None, bytes, str]:
    return (name, None, tarfile.SYMTYPE, target)


def hard(name: str, target: str) -> tuple[str, None, bytes, str]:
    return (name, None, tarfile.LNKTYPE, target)


def assert_one_line_error(err: pytest.ExceptionInfo[BaseException], path: Path, *words: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    for w in words:
        assert w in msg, (w, msg)


# --- Opening ---------------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.tar"
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert_one_line_error(err, path, "No such file")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as err:
        Archive(str(tmp_path))
    assert_one_line_error(err, tmp_path, "not a regular file")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """A FIFO is refused at once (opening it would wait for a writer forever); so is a
    device (here a character device; block devices, which imagefs once took, have no
    st_size and the cache could not see one rewritten: the same rule refuses them)."""
    if kind == "fifo":
        path = tmp_path / "pipe.tar"
        os.mkfifo(path)
    else:
        path = Path("/dev/null")
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert_one_line_error(err, path, "not a regular file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tar"
    path.write_bytes(b"")
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert_one_line_error(err, path, "empty")


def test_only_end_of_archive_blocks(tmp_path: Path) -> None:
    path = tmp_path / "zeros.tar"
    path.write_bytes(bytes(10240))
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert_one_line_error(err, path, "empty tar archive")


@pytest.mark.parametrize("content", [
    b"hello, I am a text file\n",                      # shorter than one header
    b"#!/bin/sh\necho not a tar\n" * 100,              # longer, fails the checksum
    json.dumps({"not": "a tar"}).encode() * 50,
    bytes(range(256)) * 8,
], ids=["short-text", "script", "json", "binary"])
def test_not_a_tar(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.tar"
    path.write_bytes(content)
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert_one_line_error(err, path, "not a tar archive")


@pytest.fixture
def docker_tar(tmp_path: Path) -> Path:
    path = tmp_path / "image.tar"
    write_docker_archive(str(path), [[file("etc/hostname", b"box\n" * 300)], [file("big", b"B" * 20000)]])
    return path


def _member_spans(path: Path) -> list[tuple[int, int]]:
    """(header offset, data end) of every member of a tar file, as tarfile sees them."""
    with tarfile.open(path) as tf:
        return [(ti.offset, ti.offset_data + ti.size) for ti in tf.getmembers()]


@pytest.mark.parametrize("where", ["first-data", "later-header", "later-data", "last-data"])
def test_truncated_outer_tar(tmp_path: Path, docker_tar: Path, where: str) -> None:
    spans = _member_spans(docker_tar)
    cut = {
        "first-data": spans[0][1] - 100,
        "later-header": spans[2][0] + 200,
        "later-data": spans[2][1] - 1,
        "last-data": spans[-1][1] - 5,
    }[where]
    path = tmp_path / "cut.tar"
    path.write_bytes(docker_tar.read_bytes()[:cut])
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert_one_line_error(err, path, "truncated")


@pytest.mark.parametrize("keep", [0.5, 0.9, -4], ids=["half", "most", "no-trailer"])
def test_truncated_gzip_outer_archive(tmp_path: Path, docker_tar: Path, keep: float) -> None:
    gz = gzip.compress(docker_tar.read_bytes(), mtime=0)
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(gz[:int(len(gz) * keep) if keep > 0 else int(keep)])
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert_one_line_error(err, path)


def test_truncated_first_member_is_not_called_not_a_tar(tmp_path: Path, docker_tar: Path) -> None:
    path = tmp_path / "cut.tar"
    path.write_bytes(docker_tar.read_bytes()[:_member_spans(docker_tar)[0][1] - 100])
    with pytest.raises(ArchiveError) as err:
        Archive(str(path))
    assert "not a tar archive" not in str(err.value)


def test_failed_open_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    """Checked for errors raised before the file is opened, which cannot leak."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(ArchiveError):
            Archive(str(tmp_path / "missing"))
        with pytest.raises(ArchiveError):
            Archive(str(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before


def test_rejected_file_does_not_leak_its_descriptor(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk").write_bytes(b"junk" * 500)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        for name in ("empty", "junk"):
            with pytest.raises(ArchiveError):
                Archive(str(tmp_path / name))
    assert len(os.listdir("/proc/self/fd")) == before


# --- The member map --------------------------------------------------------------------------------

def test_members_and_reads(docker_tar: Path, opened: list[Archive]) -> None:
    a = open_archive(docker_tar, opened)
    assert a.path == str(docker_tar)
    assert a.compression == "none"
    assert b"manifest.json" in a.members
    manifest = json.loads(a.read(b"manifest.json"))
    layer_name = manifest[0]["Layers"][1].encode()
    expected = layer_tar([file("big", b"B" * 20000)])
    assert a.read(layer_name) == expected
    span = a.open(layer_name)
    assert span.length == len(expected)
    assert span.pread(10, 512) == expected[512:522]
    assert span.pread(100, len(expected) - 4) == expected[-4:]  # reads stop at the member's end
    assert hashlib.sha256(a.read(layer_name)).hexdigest() + ".tar" == layer_name.decode()


def test_member_names_are_normalised_and_later_duplicates_win(tmp_path: Path, opened: list[Archive]) -> None:
    path = tmp_path / "a.tar"
    outer_tar(path, [reg("./manifest.json", b"old"), reg("/dir//x", b"x"), reg("manifest.json", b"new")])
    a = open_archive(path, opened)
    assert set(a.members) == {b"manifest.json", b"dir/x"}
    assert a.read(b"manifest.json") == b"new"
    assert a.read(b"dir/x") == b"x"


def test_open_missing_member_or_directory(tmp_path: Path, opened: list[Archive]) -> None:
    path = tmp_path / "a.tar"
    outer_tar(path, [("d", None, tarfile.DIRTYPE, ""), reg("d/f", b"1")])
    a = open_archive(path, opened)
    for name in (b"missing", b"d"):
        with pytest.raises(ImageFormatError, match="which the archive does not hold") as err:
            a.open(name)
        assert str(path) in str(err.value) and name.decode() in str(err.value)
    assert not a.exists(b"missing")
    assert a.exists(b"d")  # exists() is about the member, open() about a regular file


def test_read_refuses_an_implausibly_large_member(tmp_path: Path, opened: list[Archive]) -> None:
    path = tmp_path / "a.tar"
    outer_tar(path, [reg("manifest.json", b"x" * 1000)])
    a = open_archive(path, opened)
    with pytest.raises(ImageFormatError, match="implausibly large"):
        a.read(b"manifest.json", limit=999)
    assert a.read(b"manifest.json", limit=1000) == b"x" * 1000


# --- Links between members -------------------------------------------------------------------------

def test_layer_symlink_to_parent_directory_blob(tmp_path: Path, opened: list[Archive]) -> None:
    """Docker <= 24 and podman write ``<id>/layer.tar -> ../<diffid>.tar``."""
    layer = layer_tar([file("hello", b"world")])
    diffid = hashlib.sha256(layer).hexdigest()
    path = tmp_path / "a.tar"
    outer_tar(path, [
        reg(f"{diffid}.tar", layer),
        ("abc123", None, tarfile.DIRTYPE, ""),
        sym("abc123/layer.tar", f"../{diffid}.tar"),
    ])
    a = open_archive(path, opened)
    m = a.resolve(b"abc123/layer.tar")
    assert m is not None and m.path == f"{diffid}.tar".encode() and m.kind == stat.S_IFREG
    assert a.exists(b"abc123/layer.tar")
    assert a.read(b"abc123/layer.tar") == layer


def test_docker_archive_whose_layers_are_symlinks(tmp_path: Path, opened: list[Archive]) -> None:
    layers = [layer_tar([file("a", b"1")]), layer_tar([file("b", b"2")])]
    diffids = [hashlib.sha256(t).hexdigest() for t in layers]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diffids]}}).encode()
    manifest = [{"Config": "config.json", "RepoTags": ["t:1"], "Layers": [f"id{i}/layer.tar" for i in range(2)]}]
    path = tmp_path / "a.tar"
    write_tar(str(path), [(f"{d}.tar", t) for d, t in zip(diffids, layers)]
              + [("config.json", config), ("manifest.json", json.dumps(manifest).encode())],
              symlinks=[(f"id{i}/layer.tar", f"../{d}.tar") for i, d in enumerate(diffids)])
    a = open_archive(path, opened)
    (img,) = read_images(a)
    assert [a.read(layer.member) for layer in img.layers] == layers
    assert [layer.diff_id for layer in img.layers] == [f"sha256:{d}" for d in diffids]


def test_absolute_symlink_hard_link_and_chains(tmp_path: Path, opened: list[Archive]) -> None:
    path = tmp_path / "a.tar"
    outer_tar(path, [
        reg("blobs/data", b"payload"),
        sym("abs", "/blobs/data"),
        hard("hard", "./blobs/data"),
        sym("dir/chain1", "../abs"),
        sym("chain2", "dir/chain1"),
        hard("chain3", "chain2"),
    ])
    a = open_archive(path, opened)
    assert a.members[b"hard"].kind == HARDLINK
    for name in (b"abs", b"hard", b"dir/chain1", b"chain2", b"chain3"):
        assert a.read(name) == b"payload", name
        resolved = a.resolve(name)
        assert resolved is not None and resolved.path == b"blobs/data"


def test_dangling_link(tmp_path: Path, opened: list[Archive]) -> None:
    path = tmp_path / "a.tar"
    outer_tar(path, [sym("id/layer.tar", "../gone.tar"), hard("h", "gone2")])
    a = open_archive(path, opened)
    for name in (b"id/layer.tar", b"h"):
        assert a.resolve(name) is None
        assert not a.exists(name)
        with pytest.raises(ImageFormatError, match="does not hold"):
            a.open(name)


@pytest.mark.parametrize("links", [
    [sym("self", "self")],
    [sym("self", "./self")],
    [sym("a", "b"), sym("b", "a")],
    [sym("x/a", "../y/b"), sym("y/b", "/x/a")],
    [sym("a", "b"), hard("b", "c"), sym("c", "a")],
], ids=["self", "self-dot", "pair", "dirs", "mixed"])
def test_link_loops(tmp_path: Path, opened: list[Archive], links: list[tuple[str, None, bytes, str]]) -> None:
    path = tmp_path / "a.tar"
    outer_tar(path, [reg("other", b"o"), *links])
    a = open_archive(path, opened)
    name = links[0][0].encode()
    with pytest.raises(ImageFormatError, match="link loop") as err:
        a.resolve(name)
    assert name.decode() in str(err.value) and "\n" not in str(err.value)
    for call in (a.exists, a.open, a.read):
        with pytest.raises(ImageFormatError, match="link loop"):
            call(name)


def test_manifest_naming_a_looping_layer(tmp_path: Path, opened: list[Archive]) -> None:
    config = json.dumps({"rootfs": {"diff_ids": []}}).encode()
    manifest = [{"Config": "c.json", "RepoTags": [], "Layers": ["l/layer.tar"]}]
    path = tmp_path / "a.tar"
    write_tar(str(path), [("c.json", config), ("manifest.json", json.dumps(manifest).encode())],
              symlinks=[("l/layer.tar", "../m/layer.tar"), ("m/layer.tar", "../l/layer.tar")])
    with pytest.raises(ImageFormatError, match="link loop"):
        read_images(open_archive(path, opened))


def test_a_sparse_member_is_refused_not_read_as_one_run(tmp_path: Path) -> None:
    """`tar --sparse` over a saved image stores a layer with holes as a sparse member:
    its bytes are not one run in the archive, so serving them in place would show garbage."""
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    src.mkdir()
    tar = layer_tar([file("a", b"1"), file("zeros", bytes(1 << 20))])
    start = tar.index(bytes(1 << 20))  # the zeros' data: a hole in the file written below
    with open(src / "layer.tar", "wb") as f:
        f.write(tar[:start])
        f.seek(start + (1 << 20))
        f.write(tar[start + (1 << 20):])
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}})
    (src / "config.json").write_text(config)
    (src / "manifest.json").write_text(json.dumps([{"Config": "config.json", "Layers": ["layer.tar"]}]))
    out = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=pax", "-cf", out, "-C", src, "manifest.json", "config.json",
                    "layer.tar"], check=True)
    archive = Archive(str(out))
    try:
        if archive.members[b"layer.tar"].sparse is None:
            pytest.skip("this file system kept no hole, so tar stored layer.tar whole")
        with pytest.raises(ImageFormatError, match="layer.tar is stored as a sparse file"):
            archive.open(b"layer.tar")
    finally:
        archive.close()
