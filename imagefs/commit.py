"""Turn an overlay directory into a new image: the original layers plus DIR as the top layer.

The result is a ``docker save`` archive (manifest.json, a config with the new
diff_id and a history entry, uncompressed layer tars named by diff_id) that
``docker load`` and ``podman load`` accept and imagefs mounts to the tree the
overlay showed.  DIR is already an OCI changeset (see `imagefs.overlay`), so
the new layer is DIR as a PAX tar with numeric owners, xattrs, hard links and
device nodes, in sorted order (the same DIR always gives the same bytes).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import re
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from . import blobs
from .archive import Archive
from .errors import ImageFSError, IntegrityError, MountError
from .manifest import Image, read_images, select_image
from .overlay import BASE_FILE, OWNER_XATTR, TMP_PREFIX, base_mismatch, hold, read_base, recorded_owner

__all__ = ["CommitOptions", "check_tag", "commit", "layer_from_dir"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class CommitOptions:
    image: str | None = None
    tag: str | None = None
    message: str = "imagefs commit"


def _walk(top: str) -> Iterator[str]:
    """Paths below ``top`` (relative), parents before children, sorted by bytes."""
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(top, rel) if rel else top
        names = sorted(os.fsencode(n) for n in os.listdir(full))
        subdirs = []
        for name in names:
            if name.startswith(TMP_PREFIX) or (not rel and name == BASE_FILE):
                continue
            child = os.path.join(rel, os.fsdecode(name)) if rel else os.fsdecode(name)
            yield child
            if stat.S_ISDIR(os.lstat(os.path.join(top, child)).st_mode):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def layer_from_dir(top: str, out: BinaryIO) -> None:
    """Write DIR as a layer tar to ``out`` (whiteout files are kept: they are the deletions)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel in _walk(top):
            full = os.path.join(top, rel)
            ti = tf.gettarinfo(full, arcname=rel)
            if ti is None:  # a socket: no layer format can hold one (Docker drops them too)
                log.warning("%s is a socket, which a layer cannot hold: left out of the image", rel)
                continue
            ti.uname = ti.gname = ""
            try:
                names = os.listxattr(full, follow_symlinks=False)
            except OSError:
                names = []
            if OWNER_XATTR in names:  # a copy a user who is not root made
                owner = recorded_owner(os.fsencode(full))
                if owner is not None:
                    ti.uid, ti.gid = owner
            pax = {}
            for n in names:
                if n == OWNER_XATTR:
                    continue
                value = os.getxattr(full, n, follow_symlinks=False)
                pax["SCHILY.xattr." + n] = value.decode("utf-8", "surrogateescape")
            if pax:
                ti.pax_headers = pax
            if ti.isreg():
                with open(full, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)


def _copy_hashing(src: blobs.Blob, dst: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    pos = 0
    while True:
        chunk = src.pread(_CHUNK, pos)
        if not chunk:
            break
        h.update(chunk)
        dst.write(chunk)
        pos += len(chunk)
    return "sha256:" + h.hexdigest(), pos


def _config_for(image: Image) -> dict[str, object]:
    cfg = dict(image.config)
    if "rootfs" not in cfg:  # a legacy v1 image: its top json holds the config fields
        cfg = {k: cfg[k] for k in ("architecture", "os", "config", "created", "author") if k in cfg}
        cfg.setdefault("architecture", "amd64")
        cfg.setdefault("os", "linux")
    return cfg


# docker's reference grammar (distribution/reference): [domain/]path[:tag],
# the path lowercase; `docker load` and `podman load` refuse anything else.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
_REFERENCE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?",
                        re.ASCII)


def _full_name(name: str) -> str:
    """``name`` as docker completes it (``ubuntu`` -> ``docker.io/library/ubuntu``): its
    255-character limit counts that."""
    first, _, rest = name.partition("/")
    if rest and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        return name  # the first component is a registry host
    return ("docker.io/" if rest else "docker.io/library/") + name


def check_tag(tag: str) -> None:
    """Refuse a tag that docker and podman would not load (ImageFSError)."""
    name = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
    if not _REFERENCE.fullmatch(tag) or len(_full_name(name)) > 255:
        raise ImageFSError(f"-t {tag}: not an image name docker or podman would load (NAME[:TAG]: a name "
                           "of lowercase letters, digits and separators . _ -, optionally after a registry "
                           "host; a tag of letters, digits, _ . -)")


def _history_of(cfg: dict[str, object], layers: int) -> list[object]:
    """The config's history up to its ``layers``-th layer: one entry per layer
    (and any number of ``empty_layer`` ones), as loaders check."""
    history = cfg.get("history")
    if not isinstance(history, list):
        return []
    out, seen = [], 0
    for h in history:
        if not (isinstance(h, dict) and h.get("empty_layer")):
            if seen == layers:
                break
            seen += 1
        out.append(h)
    return out


def _base_layers(upper_dir: str, image: Image) -> int:
    """How many of ``image``'s layers DIR's changes were made over (``mount --layer N``)."""
    made = read_base(upper_dir)
    if made is None:
        return len(image.layers)
    why = base_mismatch(made, image.id, len(image.layers))
    if why is not None:
        raise ImageFSError(f"{upper_dir} {why}")
    return made["layers"]  # type: ignore[return-value]  # base_mismatch checked it is an int


def commit(upper_dir: str, archive_path: str, out_path: str, opts: CommitOptions) -> str:
    """Write the new image archive to ``out_path`` (atomically); returns the new image id."""
    if opts.tag is not None:
        check_tag(opts.tag)
    if not os.path.isdir(upper_dir):
        if os.path.exists(upper_dir):
            raise ImageFSError(f"{upper_dir} is not a directory (the overlay directory of a mount)")
        raise ImageFSError(f"overlay directory {upper_dir} does not exist")
    try:
        held = hold(upper_dir)  # for the whole commit: a mount must not start writing DIR meanwhile
    except MountError:
        raise ImageFSError(f"{upper_dir} is in use by a mount: unmount it first (its changes may not all be "
                           "written yet)") from None
    try:
        return _commit(upper_dir, archive_path, out_path, opts)
    finally:
        os.close(held)


def _commit(upper_dir: str, archive_path: str, out_path: str, opts: CommitOptions) -> str:
    archive = Archive(archive_path)
    out_dir = os.path.dirname(os.path.abspath(out_path)) or "."
    work = tempfile.mkdtemp(prefix=".imagefs-commit-", dir=out_dir)
    try:
        image = select_image(read_images(archive), opts.image, archive_path)
        layer_files: list[tuple[str, str]] = []  # (diff_id, temp file)
        used = _base_layers(upper_dir, image)
        for i, ref in enumerate(image.layers[:used]):
            span = archive.open(ref.member)
            stream = blobs.open_stream(span, blobs.sniff(span), f"{archive_path}: layer {i + 1}")
            tmp = os.path.join(work, f"layer{i}.tar")
            with open(tmp, "wb") as f:
                diff_id, _ = _copy_hashing(stream, f)
            if ref.diff_id and ref.diff_id.startswith("sha256:") and diff_id != ref.diff_id:
                # The bytes are copied anyway: a damaged layer must not pass into a new image.
                raise IntegrityError(f"{archive_path}: layer {i + 1} does not match its diff_id: expected "
                                     f"{ref.diff_id}, the bytes give {diff_id}")
            layer_files.append((diff_id, tmp))
        tmp = os.path.join(work, "top.tar")
        with open(tmp, "wb") as f:
            layer_from_dir(upper_dir, f)
        with open(tmp, "rb") as f:
            top_id = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        layer_files.append((top_id, tmp))

        cfg = _config_for(image)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cfg["rootfs"] = {"type": "layers", "diff_ids": [d for d, _ in layer_files]}
        history = _history_of(cfg, used)
        history.append({"created": now, "created_by": opts.message, "comment": f"changes from {upper_dir}"})
        cfg["history"] = history
        cfg["created"] = now
        cfg_raw = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
        cfg_hex = hashlib.sha256(cfg_raw).hexdigest()
        manifest = [{"Config": f"{cfg_hex}.json", "RepoTags": [opts.tag] if opts.tag else [],
                     "Layers": [f"{d.removeprefix('sha256:')}.tar" for d, _ in layer_files]}]

        final_tmp = os.path.join(work, "out.tar")
        with tarfile.open(final_tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            written = set()
            for diff_id, path in layer_files:
                name = f"{diff_id.removeprefix('sha256:')}.tar"
                if name in written:
                    continue
                written.add(name)
                ti = tf.gettarinfo(path, arcname=name)
                ti.mode, ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime = 0o444, 0, 0, "", "", 0
                with open(path, "rb") as f:
                    tf.addfile(ti, f)
            for name, data in ((f"{cfg_hex}.json", cfg_raw), ("manifest.json", json.dumps(manifest).encode())):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode = len(data), 0o444
                tf.addfile(ti, io.BytesIO(data))
        os.replace(final_tmp, out_path)
        return "sha256:" + cfg_hex
    finally:
        archive.close()
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
