"""Build (or reuse) the index of one image in an archive.

archive -> manifest -> blobs -> tarscan -> merge -> index: the one place
that runs the pipeline.  Everything user-facing that can go wrong here is an
`ImageFSError` with the user's line.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from . import blobs, cache, tarscan
from .archive import Archive
from .blobs import Blob, Span
from .errors import ArchiveError, IndexCacheError, IntegrityError, LayerOutOfRange
from .index import Index, meta_fits, temp_path, write_index
from .isolate import in_child
from .layercache import LayerCache
from .manifest import Image, LayerRef, read_images, select_image
from .merge import Node, apply_layer, implicit_dir
from .progress import Progress, members_text, phase
from .tarscan import Member, scan

__all__ = ["BuildOptions", "LayerInfo", "build_index", "open_index", "scan_layers"]

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """How to find or build an index.

    ``image``: tag, id prefix or 1-based index (None: the only image).
    ``layer``: stop after this layer (1 = base, negative counts from the top).
    ``cache_dir``: None for ``$XDG_CACHE_HOME/imagefs``.  ``use_cache=False``
    builds into a private temporary file that the caller owns.  ``verify``
    checks every layer's digests while indexing (and so always re-indexes).
    """

    image: str | None = None
    layer: int | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    verify: bool = False


def _selector(opts: BuildOptions) -> str:
    return f"image={opts.image or ''}\0layer={opts.layer if opts.layer is not None else ''}"


def _layers_to_use(image: Image, layer: int | None, archive_path: str) -> int:
    n = len(image.layers)
    if layer is None:
        return n
    upto = layer if layer > 0 else n + layer + 1  # -1 is the top layer
    if layer == 0 or not 1 <= upto <= n:
        raise LayerOutOfRange(layer, n)
    return upto


def _save_state(blob: object) -> None:
    save = getattr(blob, "save_state", None)
    if save is not None:
        save()


def _digest_of(blob: Blob, what: str, progress: Callable[[int], None]) -> str:
    h = hashlib.sha256()
    pos = 0
    while True:
        try:
            chunk = blob.pread(_HASH_CHUNK, pos)
        except OSError as e:
            raise ArchiveError(f"{what}: {e.strerror}") from None
        if not chunk:
            return "sha256:" + h.hexdigest()
        h.update(chunk)
        pos += len(chunk)
        progress(pos)


def _verify(ref: LayerRef, raw: Span, stream: Blob, what: str, compression: str,
            progress: Callable[[int], None]) -> bool:
    """Check the layer's blob digest and diff_id against the bytes (``--verify``);
    False if the image records neither, so that nothing was checked."""
    checks = []
    if ref.digest and ref.digest.startswith("sha256:"):
        checks.append(("digest", ref.digest, raw))
    if ref.diff_id and ref.diff_id.startswith("sha256:"):
        checks.append(("diff_id", ref.diff_id, stream))
    if not checks:
        log.warning("%s: the image records no digest for this layer; nothing to verify", what)
    for kind, want, blob in checks:
        if compression == "none" and kind == "diff_id" and ref.digest == want:
            continue  # the same bytes as the blob digest just checked
        got = _digest_of(blob, what, progress)
        if got != want:
            raise IntegrityError(f"{what} does not match its {kind}: expected {want}, the bytes give {got}")
    return bool(checks)


class _Builder:
    """One index build: the archive, the chosen image, the tree being merged."""

    def __init__(self, archive_path: str, opts: BuildOptions, progress: Progress | None,
                 state_dir: str | None) -> None:
        self.path = archive_path
        self.opts = opts
        self.progress = progress
        self.state_dir = state_dir
        # A cached scan is only used after the layer's bytes hash to its digest:
        # that pays when headers are parsed in Python (~25 us a member), not when
        # the C parser reads them faster than the bytes can be hashed.
        self.layer_cache = LayerCache(state_dir) if state_dir and not tarscan.parses_in_c() else None
        self.ident = cache.identity_of(archive_path)
        self.outer_state = cache.blob_state(state_dir, self.ident, None, None) if state_dir else None
        self.members = 0
        self.done = 0
        self.image: Image | None = None

    def _report(self, offset: int, count: int = 0) -> None:
        if self.progress is not None:
            self.progress.update(self.done + offset, self.members + count)

    def _members(self, i: int, ref: LayerRef, span: Span, stream: Blob, compression: str) -> list[Member]:
        what = f"{self.path}: layer {i + 1} ({ref.member.decode(errors='replace')})"
        # The diff_id names the uncompressed tar, whatever compression carries it,
        # so a gzip and a plain copy of one layer share their scan.
        key = None
        if self.layer_cache:
            try:
                key = LayerCache.key(ref.diff_id, stream) if ref.diff_id else LayerCache.key(ref.digest, span)
            except OSError as e:
                raise ArchiveError(f"{what}: {e.strerror or e}") from None
        verified = self.opts.verify and _verify(ref, span, stream, what, compression,
                                                lambda pos: self._report(min(pos, span.length or 0)))
        if key and self.layer_cache:
            cached = self.layer_cache.load(key)
            if cached is not None:
                # A digest is only a claim: the cached scan is used once these bytes are shown
                # to have it (hashing is cheaper than parsing every header in Python, and
                # --verify has just checked them anyway).
                claimed, blob = (ref.diff_id, stream) if ref.diff_id else (ref.digest, span)
                if self.opts.verify or _digest_of(blob, what, lambda pos: self._report(
                        min(pos, span.length or 0))) == claimed:
                    _save_state(stream)  # the hashing pass built the seek points
                    return cached
                log.warning("%s does not match its digest %s; indexing it afresh", what, claimed)
                key = None

        def warn(msg: str) -> None:
            log.warning("layer %d: %s", i + 1, msg)

        def report(offset: int, count: int) -> None:
            pos = getattr(stream, "raw_position", offset)
            self._report(min(pos, span.length or 0), count)

        # indexed_gzip checks no CRC: zlib does, beside the scan (unless --verify
        # hashed every byte already).
        with blobs.crc_checked_if("none" if verified else compression, span, stream, what) as reader:
            try:
                found = list(scan(reader, reader.length, warn, report))
            except (ArchiveError, OSError) as e:
                why = e.strerror if isinstance(e, OSError) else str(e)
                raise ArchiveError(f"{what}: {why}") from None
        _save_state(stream)
        if key and self.layer_cache:
            self.layer_cache.store(key, found)
        return found

    def layers(self, archive: Archive, then: str = "merging") -> Iterator[tuple[Image, LayerInfo, list[Member]]]:
        """Each used layer of the chosen image, base first, with its members.  Once
        the last is read, the progress says what the caller does with them (``then``)."""
        images = read_images(archive)
        image = select_image(images, self.opts.image, self.path)
        self.image = image
        upto = _layers_to_use(image, self.opts.layer, self.path)
        spans = [archive.open(layer.member) for layer in image.layers[:upto]]
        if self.progress is not None:
            self.progress.start(sum(s.length or 0 for s in spans), f"indexing {os.path.basename(self.path)}")
        for i, (ref, span) in enumerate(zip(image.layers, spans)):
            compression = blobs.sniff(span)
            state = (cache.blob_state(self.state_dir, self.ident, ref.digest or ref.diff_id, span)
                     if self.state_dir and compression != "none" else None)
            stream = blobs.open_stream(span, compression, f"{self.path}: layer {i + 1}", state)
            members = self._members(i, ref, span, stream, compression)
            self.members += len(members)
            if i == upto - 1:
                phase(self.progress, f"{then} {members_text(self.members)}")
            yield image, LayerInfo(i, ref, span, compression, state), members
            self.done += span.length or 0

    def build(self, dest: str) -> None:
        archive = Archive(self.path, self.outer_state)
        try:
            root = Node(implicit_dir(b""), -1)
            layer_meta: list[dict[str, Any]] = []
            for _image, info, members in self.layers(archive):
                apply_layer(root, info.index, members, log.warning)
                layer_meta.append(info.as_meta())
            phase(self.progress, f"writing the index of {members_text(self.members)}")
            image = self.image  # set by layers(), also for an image without layers
            assert image is not None
            meta = {
                "archive": self.ident.as_dict(),
                "outer_compression": archive.compression,
                "outer_state": self.outer_state,
                "image": {"id": image.id, "tags": list(image.tags), "layers_total": len(image.layers)},
                "layers": layer_meta,
                "members": self.members,
            }
            _save_state(archive.blob)
            try:
                write_index(root, meta, dest)
            except OSError as e:
                raise IndexCacheError(f"cannot write index {dest}: {e.strerror or e}") from None
        finally:
            archive.close()
            if self.progress is not None:
                self.progress.finish()


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """For building a merged tree: several objects per member, none freed until
    the end.  The cyclic collector would rescan all of them over and over (a
    third of a 300k-file build) to find nothing, since the tree has no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """Where one layer's bytes are and how they are stored."""

    index: int
    ref: LayerRef
    span: Span
    compression: str
    state: str | None

    def as_meta(self) -> dict[str, Any]:
        return {
            "member": self.ref.member.decode("utf-8", "surrogateescape"),
            "base": self.span.base,
            "length": self.span.length,
            "compression": self.compression,
            "state": self.state,
            "digest": self.ref.digest,
            "diff_id": self.ref.diff_id,
        }


def build_index(archive_path: str, opts: BuildOptions, dest: str, progress: Progress | None = None,
                state_dir: str | None = None) -> None:
    """Scan the archive's layers and write the merged index to ``dest``.

    ``state_dir`` keeps what makes the next build and compressed reads cheap
    (scanned layers, seek points); None keeps nothing.

    Raises:
        ImageFSError: the archive is not a readable image (IntegrityError with --verify).
    """
    with no_cyclic_gc():
        _Builder(archive_path, opts, progress, state_dir).build(dest)


def _build_in_child(archive_path: str, opts: BuildOptions, dest: str, progress: Progress | None = None,
                    state_dir: str | None = None) -> None:
    """build_index in a forked child (imagefs.isolate); a child that was killed
    mid-write leaves no partial index behind."""
    def remove_partial(pid: int) -> None:
        with contextlib.suppress(OSError):
            os.unlink(temp_path(dest, pid))

    in_child(build_index, archive_path, opts, dest, progress, state_dir, on_crash=remove_partial)


def open_index(archive_path: str, opts: BuildOptions, progress: Progress | None = None,
               build_in_child: bool = False) -> tuple[Index, str | None]:
    """The index for ``archive_path``, from the cache when it is current.

    Returns the index and, when it was built into a private temporary file
    (no cache, or the cache is unwritable), that file's path for the caller
    to remove once every user has it open.  ``build_in_child``: index in a
    forked child (`imagefs.isolate`), so this process does not grow.
    """
    build = _build_in_child if build_in_child else build_index
    try:
        ident = cache.identity_of(archive_path)
    except OSError as e:
        raise ArchiveError(f"cannot open {archive_path}: {e.strerror}") from None
    if opts.use_cache:
        # Absolute: the daemon runs from "/" and opens the index by this path.
        cache_dir = os.path.abspath(opts.cache_dir or cache.default_cache_dir())
        path = cache.index_path(cache_dir, ident, _selector(opts))
        try:
            if opts.verify:
                raise IndexCacheError("--verify re-indexes")
            idx = Index(path)
            if meta_fits(idx.meta) and idx.meta["archive"] == ident.as_dict():
                idx.from_cache = True
                return idx, None
            idx.close()
        except IndexCacheError as e:
            if os.path.exists(path):
                log.info("rebuilding unusable index: %s", e)
        try:
            os.makedirs(cache_dir, mode=0o700, exist_ok=True)
            build(archive_path, opts, path, progress, cache_dir)
            return Index(path), None
        except (OSError, IndexCacheError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            log.warning("index cache %s is not usable (%s); indexing without it", cache_dir, why)
    fd, tmp = tempfile.mkstemp(prefix="imagefs-", suffix=".idx")
    os.close(fd)
    try:
        build(archive_path, opts, tmp, progress)
        return Index(tmp), tmp
    except BaseException:
        os.unlink(tmp)
        raise


def scan_layers(archive_path: str, opts: BuildOptions, progress: Progress | None = None,
                then: str = "replaying") -> Iterator[tuple[Image, LayerInfo, list[Member]]]:
    """Each layer of the chosen image with its members (from the layer cache when it can);
    ``then`` is what the caller does with them, for the progress."""
    state_dir = os.path.abspath(opts.cache_dir or cache.default_cache_dir()) if opts.use_cache else None
    if state_dir:
        try:  # blob_state keeps its files in blobs/ below
            os.makedirs(os.path.join(state_dir, "blobs"), mode=0o700, exist_ok=True)
        except OSError as e:
            log.warning("cache directory %s is not usable (%s); reading the layers without it", state_dir,
                        e.strerror or e)
            state_dir = None
    builder = _Builder(archive_path, opts, progress, state_dir)
    archive = Archive(archive_path, builder.outer_state)
    try:
        yield from builder.layers(archive, then)
    finally:
        archive.close()
        if progress is not None:
            progress.finish()
