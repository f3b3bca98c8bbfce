"""Per-layer facts of an image: what each layer added, changed and deleted, and what it wastes.

The layers are replayed base first with the same union rules as the mount
(`imagefs.merge`), counting against the tree the lower layers built:
an entry at a path that did not exist is *added*, one that replaces an
existing non-directory (or a directory by a non-directory) is *modified*, and
every path a whiteout or opaque marker removes is *deleted*.  Directories that
a layer merely repeats (as every layer does for the parents of what it
changes) are not counted.  A regular file's bytes are *wasted* when no name
in the final image reaches them any more (overwritten or deleted later), as
dive reports it.
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from .build import BuildOptions, scan_layers
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


def _count(node: Node) -> int:
    """Paths in a subtree, itself included."""
    n = 1
    if node.children:
        for child in node.children.values():
            n += _count(child)
    return n


def _history(image: Image) -> list[str]:
    """created_by of each non-empty history entry: one per layer, in order."""
    out = []
    for h in image.config.get("history") or []:
        if isinstance(h, dict) and not h.get("empty_layer"):
            out.append(str(h.get("created_by") or h.get("comment") or ""))
    return out


def _stored_size(members: list[Member]) -> int:
    end = 0
    for m in members:
        data = sum(n for _o, n in m.sparse) if m.sparse is not None else m.size
        end = max(end, m.offset + (data + 511) // 512 * 512)
    return end + 1024 if members else 0


def layer_report(archive_path: str, opts: BuildOptions,
                 progress: Progress | None = None) -> tuple[Image | None, list[LayerStats]]:
    """Replay the layers of an image and describe each (see the module doc)."""
    root = Node(implicit_dir(b""), -1)
    rows: list[dict[str, Any]] = []
    layer_files: list[list[tuple[int, int]]] = []  # (data offset, size) of each regular file member
    image: Image | None = None
    for image, info, members in scan_layers(archive_path, opts, progress):
        added = modified = deleted = entries = 0
        for m in members:
            wh = parse_whiteout(m.path)
            if wh is True:
                continue
            if wh is not None:
                target = find(root, wh.path)
                if target is not None:
                    if wh.opaque:
                        deleted += sum(_count(c) for c in (target.children or {}).values())
                    else:
                        deleted += _count(target)
                continue
            entries += 1
            existing = find(root, m.path)
            if existing is None:
                added += 1
            elif not (m.kind == stat.S_IFDIR and existing.children is not None):
                modified += 1
        apply_layer(root, info.index, members, lambda _msg: None)
        files = [(m.offset, m.size) for m in members if m.kind == stat.S_IFREG and parse_whiteout(m.path) is None]
        layer_files.append(files)
        rows.append({
            "index": info.index + 1,
            "digest": info.ref.diff_id or info.ref.digest or info.ref.member.decode(errors="replace"),
            "compressed_size": info.span.length or 0,
            "size": info.span.length if info.compression == "none" else _stored_size(members),
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
