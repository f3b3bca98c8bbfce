"""Scanned layers kept by content, so archives that share layers index them once.

A layer's scan result (its members, in order) depends only on its bytes.  It
is stored under a key made of the layer's digest (as the manifest or config
claims it) and a hash of its first 64 KiB, so a digest that lies about
different bytes does not find another layer's members.  ``--verify``
checks the digests themselves.

File format: magic, version, sha256 of the payload, then the payload, a
`marshal` of the member tuples.  A file that fails any check is ignored and
rebuilt; the cache directory is the user's own (0700).
"""

from __future__ import annotations

import hashlib
import logging
import marshal
import os
from typing import Sequence

from .blobs import Blob
from .tarscan import Member

__all__ = ["LayerCache"]

log = logging.getLogger(__name__)

_MAGIC = b"IMGFSLYR"
_VERSION = b"\x01"


class LayerCache:
    """Members of scanned layers under ``<cache_dir>/layers``."""

    def __init__(self, cache_dir: str) -> None:
        self.dir = os.path.join(cache_dir, "layers")

    @staticmethod
    def key(digest: str | None, blob: Blob) -> str | None:
        """The cache key of a layer, or None when it has no digest to trust.

        ``blob`` holds the bytes ``digest`` names (the uncompressed stream for
        a diff_id); its first 64 KiB are part of the key.
        """
        if not digest:
            return None
        head = blob.pread(1 << 16, 0)
        return hashlib.sha256(f"{digest}\0".encode() + head).hexdigest()[:40]

    def load(self, key: str) -> list[Member] | None:
        path = os.path.join(self.dir, key)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError:
            return None
        if raw[:8] != _MAGIC or raw[8:9] != _VERSION or hashlib.sha256(raw[41:]).digest() != raw[9:41]:
            log.info("ignoring damaged layer cache %s", path)
            return None
        try:
            return [Member(*t) for t in marshal.loads(raw[41:])]
        except (ValueError, EOFError, TypeError):
            return None

    def store(self, key: str, members: Sequence[Member]) -> None:
        payload = marshal.dumps([tuple(m) for m in members])
        path = os.path.join(self.dir, key)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(_MAGIC + _VERSION + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot keep the scanned layer in %s: %s", self.dir, e.strerror)
            try:
                os.unlink(tmp)
            except OSError:
                pass
