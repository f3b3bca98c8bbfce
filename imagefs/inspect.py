"""Per-layer facts of an image: what each layer added, changed and deleted, and what it wastes.

The layers are replayed base first with the same union rules as the mount
(`imagefs.merge`), counting against the tree the lower layers built:
an entry at a path that did not exist is *added*, one that replaces an
existing non-directory (or a directory by a non-directory) is *modified*, and
every path a whiteout or opaque marker removes is *deleted*.  Directories that
a layer merely repeats (as every layer does for the parents of what it
changes) are not counted.  Counts are the layer's net effect, as ``imagefs diff``
of the image before and after the layer shows it, except that a subtree removed
because a non-directory replaced its directory is not counted as deleted.  A regular file's bytes are *wasted* when no name
in the final image reaches them any more (overwritten or deleted later), as
dive reports it.
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from . import blobs
from .build import BuildOptions, LayerInfo, no_cyclic_gc, scan_layers
from .manifest import Image
from .merge import Node, apply_layer, find, implicit_dir
from .paths import parse_whiteout
from .progress import Progress
from .tarscan import HARDLINK, Member

__all__ = ["LayerStats", "layer_report"]


@dataclass(frozen=True, slots=True)
class LayerStats:
    """One row of `imagefs layers`."""

    index: int
    digest: str
    compressed_size: int
    size: int
    entries: int
    added: int
    modified: int
    deleted: int
    file_bytes: int
    wasted_bytes: int
    created_by: str
    compression: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _paths(node: Node, path: bytes) -> Iterator[bytes]:
    """The paths of a subtree, itself included, parents first (a stack, not
    recursion: trees may be deeper than Python's recursion limit)."""
    stack = [(node, path)]
    while stack:
        node, path = stack.pop()
        yield path
        stack.extend((child, _join(path, name)) for name, child in reversed((node.children or {}).items()))


def _history(image: Image) -> list[str]:
    """created_by of each non-empty history entry: one per layer, in order."""
    history = image.config.get("history")
    out: list[str] = []
    for h in history if isinstance(history, list) else ():
        if isinstance(h, dict) and not h.get("empty_layer"):
            out.append(str(h.get("created_by") or h.get("comment") or ""))
    return out


def _stored_size(members: list[Member]) -> int:
    end = 0
    for m in members:
        data = sum(n for _o, n in m.sparse) if m.sparse is not None else m.size
        end = max(end, m.offset + (data + 511) // 512 * 512)
    return end + 1024 if members else 0


# How far `_stream_size` reads past the tar's end.  Writers pad to their record size
# (GNU tar: 10 KiB); a small compressed tail of gigabytes of zeros must not cost minutes.
_TAIL_MAX = 1 << 20


def _stream_size(info: LayerInfo, members: list[Member]) -> int:
    """The uncompressed size of a compressed layer: past the last member, tar writers pad
    to their record size, so read on from there to the end (a few KiB; seek points help).
    A tail longer than _TAIL_MAX is not counted past that."""
    stream = blobs.open_stream(info.span, info.compression, "layer", info.state)
    pos = _stored_size(members)
    stop = pos + _TAIL_MAX
    while pos < stop:
        try:
            chunk = stream.pread(1 << 16, pos)
        except OSError:
            return pos
        if not chunk:
            return pos
        pos += len(chunk)
    return pos


@no_cyclic_gc()
def layer_report(archive_path: str, opts: BuildOptions,
                 progress: Progress | None = None) -> tuple[Image | None, list[LayerStats]]:
    """Replay the layers of an image and describe each (see the module doc)."""
    root = Node(implicit_dir(b""), -1)
    rows: list[dict[str, Any]] = []
    layer_files: list[list[tuple[int, int]]] = []  # (data offset, size) of each regular file member
    image: Image | None = None
    for image, info, members in scan_layers(archive_path, opts, progress):
        added = modified = deleted = entries = 0
        # Net effect against the tree the lower layers built, as `imagefs diff` sees it:
        # entries are classified before the layer applies; a path counts as deleted if a
        # marker covered it and it is gone afterwards (so overlapping markers count it once,
        # and a path the same layer re-creates is modified, not deleted).
        covered: set[bytes] = set()
        for m in members:
            wh = parse_whiteout(m.path)
            if wh is True:
                continue
            if wh is not None:
                target = find(root, wh.path)
                if target is not None:
                    if wh.opaque:
                        for name, child in (target.children or {}).items():
                            covered.update(_paths(child, _join(wh.path, name)))
                    else:
                        covered.update(_paths(target, wh.path))
                continue
            entries += 1
            existing = find(root, m.path)
            if existing is None:
                added += 1
            elif not (m.kind == stat.S_IFDIR and existing.children is not None):
                modified += 1
        apply_layer(root, info.index, members, lambda _msg: None)
        deleted = sum(1 for p in covered if find(root, p) is None)
        files = [(m.offset, m.size) for m in members if m.kind == stat.S_IFREG and parse_whiteout(m.path) is None]
        layer_files.append(files)
        rows.append({
            "index": info.index + 1,
            "digest": info.ref.diff_id or info.ref.digest or info.ref.member.decode(errors="replace"),
            "compressed_size": info.span.length or 0,
            "size": info.span.length if info.compression == "none" else _stream_size(info, members),
            "entries": entries, "added": added, "modified": modified, "deleted": deleted,
            "file_bytes": sum(size for _o, size in files),
            "compression": info.compression,
        })
    reachable = set(_reachable(root))
    history = _history(image) if image is not None else []
    stats = []
    for i, row in enumerate(rows):
        wasted = sum(size for off, size in layer_files[i] if (i, off) not in reachable)
        stats.append(LayerStats(wasted_bytes=wasted, created_by=history[i] if i < len(history) else "", **row))
    return image, stats


def _reachable(root: Node) -> Iterator[tuple[int, int]]:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.children is not None:
            stack.extend(node.children.values())
        elif node.member.kind == stat.S_IFREG or node.member.kind == HARDLINK:
            yield node.layer, node.member.offset
