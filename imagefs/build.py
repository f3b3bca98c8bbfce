"""Build (or reuse) the index of one image in an archive.

archive -> manifest -> blobs -> tarscan -> merge -> index: the one place
that runs the pipeline.  Everything user-facing that can go wrong here is an
`ImageFSError` with the user's line.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from . import blobs, cache
from .archive import Archive
from .errors import ArchiveError, ImageSelectError, IndexCacheError
from .index import Index, write_index
from .manifest import Image, read_images, select_image
from .merge import Node, apply_layer, implicit_dir
from .progress import Progress
from .tarscan import scan

__all__ = ["BuildOptions", "build_index", "open_index"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """How to find or build an index.

    ``image``: tag, id prefix or 1-based index (None: the only image).
    ``layer``: stop after this layer (1 = base, negative counts from the top).
    ``cache_dir``: None for ``$XDG_CACHE_HOME/imagefs``.  ``use_cache=False``
    builds into a private temporary file that the caller owns.
    """

    image: str | None = None
    layer: int | None = None
    cache_dir: str | None = None
    use_cache: bool = True


def _selector(opts: BuildOptions) -> str:
    return f"image={opts.image or ''}\0layer={opts.layer if opts.layer is not None else ''}"


def _layers_to_use(image: Image, layer: int | None, archive_path: str) -> int:
    n = len(image.layers)
    if layer is None:
        return n
    upto = layer if layer > 0 else n + layer
    if layer == 0 or not 1 <= upto <= n:
        raise ImageSelectError(f"--layer {layer} is out of range: the image has {n} layers (1..{n} or -1..-{n})")
    return upto


def _save_state(blob: object) -> None:
    save = getattr(blob, "save_state", None)
    if save is not None:
        save()


def build_index(archive_path: str, opts: BuildOptions, dest: str, progress: Progress | None = None,
                state_dir: str | None = None) -> None:
    """Scan the archive's layers and write the merged index to ``dest``.

    ``state_dir`` keeps what compressed blobs need for random access later
    (seek points); None keeps nothing.
    """
    ident = cache.identity_of(archive_path)
    outer_state = cache.blob_state(state_dir, ident, None, None) if state_dir else None
    archive = Archive(archive_path, outer_state)
    try:
        images = read_images(archive)
        image = select_image(images, opts.image, archive_path)
        upto = _layers_to_use(image, opts.layer, archive_path)
        spans = [archive.open(layer.member) for layer in image.layers[:upto]]
        total = sum(s.length or 0 for s in spans)
        if progress is not None:
            progress.start(total, f"indexing {os.path.basename(archive_path)}")
        root = Node(implicit_dir(b""), -1)
        layer_meta: list[dict[str, Any]] = []
        done = 0
        members = 0
        for i, (ref, span) in enumerate(zip(image.layers, spans)):
            compression = blobs.sniff(span)
            state = cache.blob_state(state_dir, ident, ref.digest, span) if state_dir and compression != "none" else None
            stream = blobs.open_stream(span, compression, f"{archive_path}: layer {i + 1}", state)

            def report(offset: int, count: int, _done: int = done) -> None:
                if progress is not None:
                    progress.update(_done + min(offset, span.length or 0), members + count)

            def warn(msg: str, _i: int = i) -> None:
                log.warning("layer %d: %s", _i + 1, msg)

            try:
                layer_members = list(scan(stream, stream.length, warn, report))
            except (ArchiveError, OSError) as e:
                why = e.strerror if isinstance(e, OSError) else str(e)
                raise ArchiveError(f"{archive_path}: layer {i + 1} ({ref.member.decode(errors='replace')}): {why}") from None
            _save_state(stream)
            members += len(layer_members)
            apply_layer(root, i, layer_members, log.warning)
            del layer_members
            done += span.length or 0
            layer_meta.append({
                "member": ref.member.decode("utf-8", "surrogateescape"),
                "base": span.base,
                "length": span.length,
                "compression": compression,
                "state": state,
                "digest": ref.digest,
                "diff_id": ref.diff_id,
            })
        meta = {
            "archive": ident.as_dict(),
            "outer_compression": archive.compression,
            "outer_state": outer_state,
            "image": {"id": image.id, "tags": list(image.tags), "layers_total": len(image.layers)},
            "layers": layer_meta,
            "members": members,
        }
        _save_state(archive.blob)
        try:
            write_index(root, meta, dest)
        except OSError as e:
            raise IndexCacheError(f"cannot write index {dest}: {e.strerror or e}") from None
        if progress is not None:
            progress.finish()
    finally:
        archive.close()


def open_index(archive_path: str, opts: BuildOptions, progress: Progress | None = None) -> tuple[Index, str | None]:
    """The index for ``archive_path``, from the cache when it is current.

    Returns the index and, when it was built into a private temporary file
    (no cache, or the cache is unwritable), that file's path for the caller
    to remove once every user has it open.
    """
    try:
        ident = cache.identity_of(archive_path)
    except OSError as e:
        raise ArchiveError(f"cannot open {archive_path}: {e.strerror}") from None
    if opts.use_cache:
        cache_dir = opts.cache_dir or cache.default_cache_dir()
        path = cache.index_path(cache_dir, ident, _selector(opts))
        try:
            idx = Index(path)
            if idx.meta.get("archive") == ident.as_dict():
                return idx, None
            idx.close()
        except IndexCacheError as e:
            if os.path.exists(path):
                log.info("rebuilding unusable index: %s", e)
        try:
            os.makedirs(cache_dir, mode=0o700, exist_ok=True)
            build_index(archive_path, opts, path, progress, cache_dir)
            return Index(path), None
        except (OSError, IndexCacheError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            log.warning("index cache %s is not usable (%s); indexing without it", cache_dir, why)
    fd, tmp = tempfile.mkstemp(prefix="imagefs-", suffix=".idx")
    os.close(fd)
    try:
        build_index(archive_path, opts, tmp, progress)
        return Index(tmp), tmp
    except BaseException:
        os.unlink(tmp)
        raise
