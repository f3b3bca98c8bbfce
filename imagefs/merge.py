"""The union rules: apply layers, base first, the way a container runtime unpacks them.

This is the reference semantics of the OCI image spec (``layer.md``) and of
containerd/umoci extraction, applied to an in-memory tree instead of a disk:

* per layer, whiteouts apply first and only to what lower layers built, so a
  whiteout never hides an entry of its own layer, whatever the member order;
* ``.wh.NAME`` removes NAME and its subtree; ``.wh..wh..opq`` empties its
  directory of everything lower layers put there;
* a non-directory replaces whatever was at its path (a directory's subtree
  goes with it); a directory over a directory only takes the new attributes,
  so a directory present in several layers has the topmost's attributes;
* within one layer a later member of the same path wins;
* a hard link names the inode its target has at that moment (in its own layer
  or below), so it keeps that content even if a later layer removes or
  replaces the target;
* missing parent directories are created (0755 root:root), as runtimes do.

The tree exists only while an index is built (`imagefs.index` turns it into
the compact on-disk form the mount serves from).
"""

from __future__ import annotations

import stat
from typing import Callable, Iterable

from .paths import WHITEOUT_PREFIX, Whiteout, in_aufs_meta, parse_whiteout
from .tarscan import HARDLINK, Member

__all__ = ["Node", "apply_layer", "apply_whiteout", "find", "implicit_dir", "merge"]


_DIR = stat.S_IFDIR


class Node:
    """An inode of the merged tree.  Names that are hard links share one Node."""

    __slots__ = ("member", "layer", "children", "touched")

    def __init__(self, member: Member, layer: int) -> None:
        self.member = member
        self.layer = layer  # index of the layer whose bytes back this inode (-1: none)
        self.children: dict[bytes, Node] | None = {} if member.kind == _DIR else None
        # The highest layer that changed this node or anything below it: two
        # images whose first k layers are the same have equal subtrees where
        # both have touched < k (what makes `imagefs diff` skip them).
        self.touched = layer


def implicit_dir(path: bytes) -> Member:
    """The attributes of a directory no layer describes (root, missing parents)."""
    return Member(path, stat.S_IFDIR, 0o755, 0, 0, 0, 0, b"", 0, 0, (), None)


def find(root: Node, path: bytes) -> Node | None:
    """The node at ``path`` (no symlink is followed), or None."""
    node = root
    if path:
        for part in path.split(b"/"):
            if node.children is None:
                return None
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
    return node


def _parent_dir(root: Node, path: bytes, layer: int) -> tuple[Node, bytes]:
    """The directory that will hold ``path`` (created as needed) and the last name.

    Every directory on the way is marked as touched by ``layer``.
    """
    parts = path.split(b"/")
    node = root
    if root.touched < layer:
        root.touched = layer
    for i, part in enumerate(parts[:-1]):
        assert node.children is not None
        nxt = node.children.get(part)
        if nxt is None or nxt.children is None:
            # A missing parent, or a non-directory in the way: runtimes create a directory.
            nxt = Node(implicit_dir(b"/".join(parts[:i + 1])), -1)
            node.children[part] = nxt
        if nxt.touched < layer:
            nxt.touched = layer
        node = nxt
    return node, parts[-1]


def _touch(root: Node, path: bytes, layer: int) -> None:
    """Record that ``layer`` changed ``path``: mark every directory on the way."""
    node: Node | None = root
    root.touched = max(root.touched, layer)
    if path:
        for part in path.split(b"/"):
            if node is None or node.children is None:
                return
            node = node.children.get(part)
            if node is not None:
                node.touched = max(node.touched, layer)


def apply_whiteout(root: Node, wh: Whiteout) -> None:
    """Remove what ``wh`` hides from the tree (a path, or a directory's contents)."""
    if wh.opaque:
        target = find(root, wh.path)
        if target is not None and target.children is not None:
            target.children = {}
        return
    parent_path, _, name = wh.path.rpartition(b"/")
    parent = find(root, parent_path)
    if parent is not None and parent.children is not None:
        parent.children.pop(name, None)


def apply_layer(root: Node, layer: int, members: Iterable[Member], warn: Callable[[str], None]) -> None:
    """Apply one layer's members to the tree built from the layers below it."""
    entries: list[Member] = []
    whiteouts: list[Whiteout] = []
    # aufs kept hard-link targets under .wh..wh.plnk/: never shown, but links may point there.
    hidden: dict[bytes, Node] = {}
    for m in members:
        if WHITEOUT_PREFIX not in m.path:
            entries.append(m)  # most members: neither rule below can apply, skip both calls
            continue
        if in_aufs_meta(m.path):
            if m.kind != stat.S_IFDIR and m.kind != HARDLINK:
                hidden[m.path] = Node(m, layer)
            continue
        wh = parse_whiteout(m.path)
        if wh is None:
            entries.append(m)
        elif wh is not True:
            whiteouts.append(wh)
    for wh in whiteouts:
        _touch(root, wh.path, layer)
        apply_whiteout(root, wh)
    # The directory that holds the previous member's path: tar writers put a
    # directory's members together, so most members skip the walk from the
    # root (whose touched marks this layer has already set on the way).
    last_dir_path: bytes | None = None
    last_dir: Node = root
    for m in entries:
        path, kind = m.path, m.kind
        if not path:
            if kind == _DIR:
                root.member, root.layer = m, layer
                root.touched = max(root.touched, layer)
            else:
                warn(f"layer {layer + 1}: a non-directory entry for the root is ignored")
            continue
        dir_path, _, name = path.rpartition(b"/")
        if dir_path == last_dir_path:
            parent = last_dir
        else:
            parent, name = _parent_dir(root, path, layer)
            last_dir_path, last_dir = dir_path, parent
        children = parent.children
        assert children is not None
        existing = children.get(name)
        if kind == _DIR:
            if existing is not None and existing.children is not None:
                existing.member, existing.layer = m, layer
                if existing.touched < layer:
                    existing.touched = layer
            else:
                children[name] = Node(m, layer)
            continue
        if existing is not None and existing.children is not None:
            last_dir_path = None  # a directory is replaced: the remembered one may be inside it
        if kind != HARDLINK:
            children[name] = Node(m, layer)
            continue
        target = hidden.get(m.linkname) or find(root, m.linkname)
        if target is None:
            warn(f"layer {layer + 1}: hard link {_show(path)} points to missing {_show(m.linkname)}; skipped")
        elif target.children is not None:
            warn(f"layer {layer + 1}: hard link {_show(path)} points to a directory; skipped")
        else:
            children[name] = target
        child = children.get(name)
        if child is not None and child.touched < layer:
            child.touched = layer


def _show(path: bytes) -> str:
    return "/" + path.decode("utf-8", "backslashreplace")


def merge(
    layers: Iterable[Iterable[Member]],
    warn: Callable[[str], None] | None = None,
) -> Node:
    """The merged tree of ``layers`` (base first), as a container would see it."""
    root = Node(implicit_dir(b""), -1)
    for i, members in enumerate(layers):
        apply_layer(root, i, members, warn or (lambda _m: None))
    return root
