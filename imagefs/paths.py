"""Member path rules: normalising tar names safely and recognising whiteouts.

Every path inside imagefs is ``bytes``, relative to the image root, without a
leading or trailing slash, ``b""`` for the root itself.  Normalisation is
lexical and capped at the root, as containerd applies layers: ``../../etc/x``
and ``/etc/x`` both become ``etc/x``, so no member can name anything outside
the image.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "OPAQUE",
    "WHITEOUT_PREFIX",
    "Whiteout",
    "in_aufs_meta",
    "normalize",
    "parse_whiteout",
    "split",
]

WHITEOUT_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"
# aufs kept its own bookkeeping under ".wh..wh.": Docker drops these names.
_AUFS_META = b".wh..wh."


def normalize(name: bytes) -> bytes | None:
    """Clean a member name to an image-relative path.

    Returns ``None`` for names no file system can hold (a NUL byte).
    ``..`` components are resolved lexically and can never climb above the root.
    """
    if b"\0" in name:
        return None
    if b"/." not in name and b"//" not in name and not name.startswith(b"."):
        return name.strip(b"/")  # nothing to resolve: the common case, without splitting
    out: list[bytes] = []
    for part in name.split(b"/"):
        if part == b"" or part == b".":
            continue
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
    return b"/".join(out)


def split(path: bytes) -> tuple[bytes, bytes]:
    """``b"a/b/c"`` -> ``(b"a/b", b"c")``; the root's parent is the root."""
    head, _, tail = path.rpartition(b"/")
    return head, tail


def in_aufs_meta(path: bytes) -> bool:
    """Whether ``path`` lies in aufs bookkeeping (``.wh..wh.plnk/...``), which readers drop.

    The opaque marker ``.wh..wh..opq`` as the last component is not such a name.
    """
    if _AUFS_META not in path:
        return False
    parts = path.split(b"/")
    for i, part in enumerate(parts):
        if part.startswith(_AUFS_META) and not (part == OPAQUE and i == len(parts) - 1):
            return True
    return False


class Whiteout(NamedTuple):
    """A whiteout marker.  ``opaque``: hide every lower entry below ``path``;
    otherwise hide ``path`` itself (and its subtree) in lower layers."""

    path: bytes
    opaque: bool


def parse_whiteout(path: bytes) -> Whiteout | None | bool:
    """Classify a normalised member path.

    Returns a `Whiteout` for ``.wh.NAME`` and ``.wh..wh..opq``, ``True`` for a
    ``.wh.`` name that is to be dropped silently (aufs metadata, an empty or
    ``.``/``..`` target), and ``None`` for an ordinary entry.
    """
    if WHITEOUT_PREFIX not in path:
        return None
    parent, base = split(path)
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE:
        return Whiteout(parent, True)
    if base.startswith(_AUFS_META):
        return True
    target = base[len(WHITEOUT_PREFIX):]
    if target in (b"", b".", b".."):
        return True
    return Whiteout(parent + b"/" + target if parent else target, False)
