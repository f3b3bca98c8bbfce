"""Where indexes live, and the key that ties an index to one unchanged archive.

An index is named by a digest of the archive's identity (real path, device,
inode, size, mtime and ctime in nanoseconds: ctime because no user can set
it, so a rewrite that restores size and mtime is still seen), the chosen image's id and the index
format version: a changed archive gets a new name, so a stale index is never
served; an old one is simply no longer looked up.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from typing import TYPE_CHECKING

from .index import FORMAT_VERSION

if TYPE_CHECKING:
    from .blobs import Span

__all__ = ["ArchiveIdentity", "blob_state", "default_cache_dir", "identity_of", "index_path"]


@dataclass(frozen=True, slots=True)
class ArchiveIdentity:
    """What must be unchanged for an index of the archive to stay valid."""

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "dev": self.dev, "ino": self.ino, "size": self.size, "mtime_ns": self.mtime_ns,
                "ctime_ns": self.ctime_ns}

    @property
    def key(self) -> str:
        return f"{self.path}\0{self.dev}\0{self.ino}\0{self.size}\0{self.mtime_ns}\0{self.ctime_ns}"


def identity_of(path: str) -> ArchiveIdentity:
    real = os.path.realpath(path)
    st = os.stat(real)
    return ArchiveIdentity(real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imagefs")


def index_path(cache_dir: str, ident: ArchiveIdentity, selector: str) -> str:
    """The index file for ``ident`` with image/layer ``selector``."""
    key = hashlib.sha256(
        f"v{FORMAT_VERSION}\0{ident.key}\0{selector}".encode()
    ).hexdigest()[:32]
    return os.path.join(cache_dir, f"{key}.idx")


def blob_state(cache_dir: str, ident: ArchiveIdentity, digest: str | None, span: "Span | None") -> str:
    """The path prefix for a compressed blob's random-access state (seek points, flat copy).

    Layers are content-addressed: a layer with a digest shares its state with
    every archive that holds the same blob (the length and the first bytes
    are part of the key, so a lying digest cannot borrow another blob's seek
    points).  The outer stream (``span`` None) is keyed by the archive.
    """
    if span is None:
        key = f"outer\0{ident.key}"
    elif digest:
        head = span.pread(1 << 16, 0)
        key = f"{digest}\0{span.length}\0{hashlib.sha256(head).hexdigest()}"
    else:
        key = f"span\0{ident.key}\0{span.base}\0{span.length}"
    d = os.path.join(cache_dir, "blobs")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return os.path.join(d, hashlib.sha256(key.encode()).hexdigest()[:32])
