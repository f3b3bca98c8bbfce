"""The persistent cache: a damaged file in it is rebuilt or ignored, never trusted
and never a crash.  The cache is the user's own, so this is about bit rot, full
disks and hand edits, not attacks (a flipped byte inside an index's records is
not detected: see the README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

import builder as b
from imagefs import BuildOptions, ImageTree
from imagefs.index import HEADER, Index

FILES = {"etc/hostname": b"box\n", "big": bytes(range(256)) * 4096}
LAYER = [b.dir("etc"), *(b.file(p, data) for p, data in FILES.items())]


def _contents(tree: ImageTree) -> dict[str, bytes]:
    out = {}
    for path in FILES:
        ino = tree.resolve(path.encode())
        assert ino is not None
        out[path] = tree.read(ino, 0, 1 << 22)
    return out


def _open(archive: Path, cache: Path) -> ImageTree:
    return ImageTree.open(str(archive), BuildOptions(cache_dir=str(cache)))


def _with_meta(path: Path, meta: object) -> None:
    """Rewrite a cached index's meta (the last section) and its header to match."""
    raw = bytearray(path.read_bytes())
    fields = list(HEADER.unpack_from(raw, 0))
    meta_off = fields[-2]
    new = json.dumps(meta).encode()
    fields[-1] = len(new)
    HEADER.pack_into(raw, 0, *fields)
    path.write_bytes(bytes(raw[:meta_off]) + new)


def _meta_of(path: Path) -> dict[str, object]:
    idx = Index(str(path))
    try:
        return dict(idx.meta)
    finally:
        idx.close()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "zeroed": lambda p: p.write_bytes(bytes(p.stat().st_size)),
    "empty": lambda p: p.write_bytes(b""),
    "meta a list": lambda p: _with_meta(p, []),
    "meta without layers": lambda p: _with_meta(p, {k: v for k, v in _meta_of(p).items() if k != "layers"}),
    "meta with a bad layer": lambda p: _with_meta(p, {**_meta_of(p), "layers": [{"base": "0"}]}),
    "meta nested too deep": lambda p: _with_meta(p, json.loads("[" * 500 + "]" * 500)),
    "meta image without id": lambda p: _with_meta(p, {**_meta_of(p), "image": {"layers_total": 1}}),
    "meta without members": lambda p: _with_meta(p, {k: v for k, v in _meta_of(p).items() if k != "members"}),
    "meta xattr count not a number": lambda p: _with_meta(p, {**_meta_of(p), "inodes_with_xattrs": "x"}),
    "meta not json": lambda p: p.write_bytes(p.read_bytes()[:-1] + b"{"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    archive = tmp_path / "a.tar"
    b.write_docker_archive(str(archive), [LAYER])
    cache = tmp_path / "cache"
    first = _open(archive, cache)
    want = _contents(first)
    first.close()
    (index,) = cache.rglob("*.idx")
    DAMAGE[damage](index)
    again = _open(archive, cache)
    try:
        assert not again.index.from_cache and _contents(again) == want
    finally:
        again.close()
    reused = _open(archive, cache)  # and the rebuilt one is good
    try:
        assert reused.index.from_cache and _contents(reused) == want
    finally:
        reused.close()


@pytest.mark.parametrize("frames", ["[1]", "[]", "[[0, 0], [5]]", "[[0, 0], [-1, 4]]", "[[0, 0], [9, 9], [3, 20]]",
                                    "{}", "[" * 100_000, "not json", '[[0, 0], [1.5, 2]]', "[[1, 1]]"])
def test_damaged_zstd_frame_starts_are_ignored(tmp_path: Path, frames: str) -> None:
    """The frame starts saved beside a zstd layer's state are only a shortcut."""
    archive = tmp_path / "z.tar"
    b.write_oci_archive(str(archive), [LAYER], compression="zstd")
    cache = tmp_path / "cache"
    first = _open(archive, cache)
    want = _contents(first)
    first.close()
    saved = list(cache.rglob("*.zframes"))
    assert saved, "the zstd layer kept its frame starts"
    for p in saved:
        p.write_text(frames)
    again = _open(archive, cache)
    try:
        assert again.index.from_cache and _contents(again) == want
    finally:
        again.close()

