"""Compare two image trees (archives, mounts or plain directories), like `docker diff`.

Fast by construction when both sides are archives: the walk is a merge-join
of sorted directory listings read from the two indexes; a directory whose
subtree on both sides was last touched by layers the two images share (same
digest, same position) is equal without being looked at; a regular file whose
bytes come from the same shared layer at the same offset is equal without
being read; otherwise sizes decide first, and bytes are read only when the
sizes are equal.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Protocol

from .tree import ImageTree

__all__ = ["Change", "DiffOptions", "DirSource", "Meta", "TreeSource", "diff", "escape", "shared_layers"]

_CHUNK = 1 << 20
_IGNORED_XATTRS = (b"security.selinux",)
_TYPES = ((stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISFIFO, "p"),
          (stat.S_ISCHR, "c"), (stat.S_ISBLK, "b"), (stat.S_ISSOCK, "s"))
_ESC = [("\\x%02x" % b) if (b < 0x20 or b > 0x7E or b == 0x5C) else chr(b) for b in range(256)]


def escape(raw: bytes) -> str:
    """A path as one safe ASCII field: bytes outside 0x20-0x7e and ``\\`` as ``\\xHH``."""
    return "".join(_ESC[b] for b in raw)


def _ftype(mode: int) -> str:
    for test, letter in _TYPES:
        if test(mode):
            return letter
    return "?"


class Meta(NamedTuple):
    """What is compared of one path (``mode`` holds the permission bits only)."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int
    target: bytes
    xattrs: tuple[tuple[bytes, bytes], ...]

    def as_dict(self) -> dict[str, object]:
        return {"type": self.type, "mode": f"{self.mode:04o}", "uid": self.uid, "gid": self.gid,
                "size": self.size, "mtime": self.mtime_ns / 1e9,
                "rdev": f"{os.major(self.rdev)},{os.minor(self.rdev)}" if self.type in "cb" else None,
                "target": escape(self.target) if self.type == "l" else None,
                "xattrs": {escape(k): v.hex() for k, v in self.xattrs}}


class Source(Protocol):
    """One side of a diff; handles are opaque to the walk."""

    def root(self) -> object: ...
    def children(self, h: object) -> list[tuple[bytes, object]]: ...
    def meta(self, h: object) -> Meta: ...
    def read(self, h: object, offset: int, n: int) -> bytes: ...
    def content_id(self, h: object) -> object | None: ...
    def touched(self, h: object) -> int: ...


class TreeSource:
    """An `ImageTree` as a diff side; handles are inode numbers."""

    def __init__(self, tree: ImageTree) -> None:
        self.tree = tree
        self.layer_ids = [layer.get("diff_id") or layer.get("digest") or f"?{i}"
                          for i, layer in enumerate(tree.index.meta["layers"])]

    def root(self) -> object:
        return self.tree.root

    def children(self, h: object) -> list[tuple[bytes, object]]:
        return [(name, ino) for _pos, name, ino in self.tree.entries(int(h))]  # type: ignore[call-overload]

    def meta(self, h: object) -> Meta:
        a = self.tree.attr(int(h))  # type: ignore[call-overload]
        t = _ftype(a.mode)
        target = self.tree.readlink(a.ino) if t == "l" else b""
        return Meta(t, stat.S_IMODE(a.mode), a.uid, a.gid, a.size if t == "f" else 0, a.mtime_ns,
                    a.rdev if t in "cb" else 0, target, tuple(sorted(self.tree.xattrs(a.ino).items())))

    def read(self, h: object, offset: int, n: int) -> bytes:
        return self.tree.read(int(h), offset, n)  # type: ignore[call-overload]

    def content_id(self, h: object) -> object | None:
        a = self.tree.attr(int(h))  # type: ignore[call-overload]
        if a.layer < 0 or self.layer_ids[a.layer].startswith("?"):
            return None
        return (self.layer_ids[a.layer], a.data_offset, a.size)

    def touched(self, h: object) -> int:
        return self.tree.attr(int(h)).touched  # type: ignore[call-overload]


class DirSource:
    """A directory (an imagefs mount, an extracted rootfs, anything); handles are paths."""

    def __init__(self, path: str) -> None:
        self.base = os.fsencode(os.path.abspath(path))

    def root(self) -> object:
        return self.base

    def children(self, h: object) -> list[tuple[bytes, object]]:
        assert isinstance(h, bytes)
        with os.scandir(h) as it:
            return sorted((e.name, h + b"/" + e.name) for e in it)  # type: ignore[misc]

    def meta(self, h: object) -> Meta:
        assert isinstance(h, bytes)
        st = os.lstat(h)
        t = _ftype(st.st_mode)
        try:
            names = os.listxattr(h, follow_symlinks=False)
            xattrs = tuple(sorted(
                (os.fsencode(n), os.getxattr(h, n, follow_symlinks=False)) for n in names
                if os.fsencode(n) not in _IGNORED_XATTRS and not n.startswith("trusted.overlay.")))
        except OSError:
            xattrs = ()
        return Meta(t, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if t == "f" else 0,
                    st.st_mtime_ns, st.st_rdev if t in "cb" else 0, os.readlink(h) if t == "l" else b"", xattrs)

    def read(self, h: object, offset: int, n: int) -> bytes:
        assert isinstance(h, bytes)
        fd = os.open(h, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)

    def content_id(self, h: object) -> object | None:
        return None

    def touched(self, h: object) -> int:
        return 1 << 30  # a directory has no layer history: never skip


@dataclass(frozen=True, slots=True)
class DiffOptions:
    """``all``: list every path below an added or deleted directory; ``mtime``: compare mtimes."""

    all: bool = False
    mtime: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """One line of a diff: ``kind`` is ``A``, ``D`` or ``C``; ``what`` names what differs."""

    kind: str
    path: bytes
    a: Meta | None
    b: Meta | None
    what: tuple[str, ...] = field(default=())

    def line(self) -> str:
        text = f"{self.kind} /{escape(self.path)}"
        if self.what:
            text += f"  ({', '.join(self.what)})"
        return text

    def as_dict(self) -> dict[str, object]:
        return {"change": self.kind, "path": "/" + escape(self.path), "what": list(self.what),
                "a": self.a.as_dict() if self.a else None, "b": self.b.as_dict() if self.b else None}


def shared_layers(a: Source, b: Source) -> int:
    """How many bottom layers two image sides share (same ids in the same positions)."""
    if not isinstance(a, TreeSource) or not isinstance(b, TreeSource):
        return 0
    n = 0
    for x, y in zip(a.layer_ids, b.layer_ids):
        if x != y or x.startswith("?"):
            break
        n += 1
    return n


def _same_bytes(a: Source, ha: object, b: Source, hb: object, size: int) -> bool:
    ida = a.content_id(ha)
    if ida is not None and ida == b.content_id(hb):
        return True
    off = 0
    while off < size:
        x = a.read(ha, off, _CHUNK)
        y = b.read(hb, off, _CHUNK)
        if x != y:
            return False
        if not x:
            break
        off += len(x)
    return True


def _compare(a: Source, ha: object, ma: Meta, b: Source, hb: object, mb: Meta, opts: DiffOptions) -> tuple[str, ...]:
    if ma.type != mb.type:
        return (f"type {ma.type} -> {mb.type}",)
    what = []
    if ma.type == "f":
        if ma.size != mb.size:
            what.append(f"size {ma.size} -> {mb.size}")
        elif not _same_bytes(a, ha, b, hb, ma.size):
            what.append("content")
    if ma.target != mb.target:
        what.append(f"target {escape(ma.target)} -> {escape(mb.target)}")
    if ma.rdev != mb.rdev:
        what.append(f"device {os.major(ma.rdev)},{os.minor(ma.rdev)} -> {os.major(mb.rdev)},{os.minor(mb.rdev)}")
    if ma.mode != mb.mode and ma.type != "l":
        what.append(f"mode {ma.mode:04o} -> {mb.mode:04o}")
    if (ma.uid, ma.gid) != (mb.uid, mb.gid):
        what.append(f"owner {ma.uid}:{ma.gid} -> {mb.uid}:{mb.gid}")
    if ma.xattrs != mb.xattrs:
        what.append("xattrs")
    if opts.mtime and ma.mtime_ns // 1_000_000_000 != mb.mtime_ns // 1_000_000_000 and ma.type != "d":
        what.append("mtime")
    return tuple(what)


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


# The walkers below yield changes, and the walks of subdirectories as generators
# of their own, which `_flatten` runs on an explicit stack: trees may be 1,000
# directories deep, past Python's recursion limit.
_Walk = Iterator["Change | _Walk"]


def _flatten(walk: _Walk) -> Iterator[Change]:
    stack = [walk]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, Change):
            yield item
        else:
            stack.append(item)


def _only(src: Source, h: object, path: bytes, kind: str, side_a: bool, every: bool) -> _Walk:
    """A path only one side has (``kind`` A or D), and with ``every`` all below it."""
    m = src.meta(h)
    yield Change(kind, path, m if side_a else None, None if side_a else m)
    if every and m.type == "d":
        yield _below(src, h, path, kind, side_a)


def _below(src: Source, h: object, path: bytes, kind: str, side_a: bool) -> _Walk:
    for name, child in src.children(h):
        yield _only(src, child, _join(path, name), kind, side_a, True)


def diff(a: Source, b: Source, opts: DiffOptions = DiffOptions()) -> Iterator[Change]:
    """The changes from ``a`` to ``b`` in tree order: each directory's entries sorted by
    name bytes, a directory's changes right after its own line (as ``diff -r`` walks)."""
    shared = shared_layers(a, b)
    ra, rb = a.root(), b.root()
    ma, mb = a.meta(ra), b.meta(rb)
    what = _compare(a, ra, ma, b, rb, mb, opts)  # "/" itself: its mode, owner, xattrs
    if what:
        yield Change("C", b"", ma, mb, what)
    yield from _flatten(_diff_dir(a, ra, b, rb, b"", shared, opts))


def _diff_dir(a: Source, ha: object, b: Source, hb: object, path: bytes, shared: int,
              opts: DiffOptions) -> _Walk:
    if shared and a.touched(ha) < shared and b.touched(hb) < shared:
        return  # both subtrees are exactly what the shared bottom layers made
    ca, cb = a.children(ha), b.children(hb)
    i = j = 0
    while i < len(ca) or j < len(cb):
        if j >= len(cb) or (i < len(ca) and ca[i][0] < cb[j][0]):
            name, h = ca[i]
            i += 1
            yield _only(a, h, _join(path, name), "D", True, opts.all)
        elif i >= len(ca) or cb[j][0] < ca[i][0]:
            name, h = cb[j]
            j += 1
            yield _only(b, h, _join(path, name), "A", False, opts.all)
        else:
            name, h1 = ca[i]
            _, h2 = cb[j]
            i += 1
            j += 1
            p = _join(path, name)
            ma, mb = a.meta(h1), b.meta(h2)
            what = _compare(a, h1, ma, b, h2, mb, opts)
            if what:
                yield Change("C", p, ma, mb, what)
            if ma.type == "d" and mb.type == "d":
                yield _diff_dir(a, h1, b, h2, p, shared, opts)
            elif opts.all and ma.type == "d":
                yield _below(a, h1, p, "D", True)
            elif opts.all and mb.type == "d":
                yield _below(b, h2, p, "A", False)
