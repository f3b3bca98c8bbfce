"""Which images an archive holds, and each image's layers, base first.

Three layouts are read, in this order of preference:

* ``manifest.json`` (``docker save`` of Docker 1.10+, podman, skopeo, and
  Docker 25+, whose archive is also an OCI layout: manifest.json wins there);
* an OCI image layout (``oci-layout`` + ``index.json`` + ``blobs/``), as
  ``podman save --format oci-archive`` and skopeo write it;
* the legacy v1.0 layout (``repositories`` + ``<id>/json`` + ``<id>/layer.tar``),
  layers ordered by walking the ``parent`` chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .archive import Archive
from .errors import ImageFormatError, ImageSelectError

__all__ = ["Image", "LayerRef", "read_images", "select_image"]

_OCI_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True, slots=True)
class LayerRef:
    """One layer as the manifest names it.

    ``member`` is the archive member with the layer's bytes (compressed or
    not; `imagefs.blobs.sniff` decides).  ``digest`` is the blob's digest
    where the layout records it, ``diff_id`` the digest of the uncompressed tar
    from the image config.
    """

    member: bytes
    digest: str | None
    diff_id: str | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class Image:
    """An image in an archive: its id, tags and layers (base first)."""

    id: str
    tags: tuple[str, ...]
    layers: tuple[LayerRef, ...]
    config: dict[str, Any] = field(default_factory=dict, compare=False)
    platform: str | None = None

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]


class _Docs:
    """The archive's JSON documents, each parsed once: entries of one archive may
    all name the same config or manifest, and a reader must not pay for it each time."""

    __slots__ = ("archive", "path", "_parsed")

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.path = archive.path
        self._parsed: dict[bytes, tuple[Any, str]] = {}

    @property
    def members(self) -> Any:
        return self.archive.members

    def exists(self, name: bytes) -> bool:
        return self.archive.exists(name)

    def json(self, name: bytes, what: str = "") -> Any:
        """The parsed document; ``what`` names it in the error ("image config ")."""
        return self._load(name, what)[0]

    def sha256(self, name: bytes) -> str:
        """The digest of the document's bytes (a docker-archive image's id)."""
        return self._load(name)[1]

    def _load(self, name: bytes, what: str = "") -> tuple[Any, str]:
        if name not in self._parsed:
            raw = self.archive.read(name)
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise ImageFormatError(f"{self.path}: {what}{name.decode(errors='replace')} is not valid JSON") from None
            self._parsed[name] = (doc, "sha256:" + hashlib.sha256(raw).hexdigest())
        return self._parsed[name]


def _blob_member(digest: Any, docs: _Docs) -> bytes:
    if not isinstance(digest, str) or ":" not in digest:
        raise ImageFormatError(f"{docs.path}: bad digest {digest!r} in the OCI layout")
    algo, _, hexd = digest.partition(":")
    if not algo.isalnum() or not hexd.isalnum():
        raise ImageFormatError(f"{docs.path}: bad digest {digest!r} in the OCI layout")
    return f"blobs/{algo}/{hexd}".encode()


def _diff_ids(config: Any) -> list[str | None]:
    try:
        ids = config["rootfs"]["diff_ids"]
        return [d if isinstance(d, str) else None for d in ids]
    except (KeyError, TypeError):
        return []


def _config(docs: _Docs, name: bytes) -> dict[str, Any]:
    """An image config; one that is not a JSON object counts as empty.  The tree
    needs none of it (diff_ids are checked where there are some), so such an
    image still mounts, and `layers` and `commit` see a config without fields."""
    config = docs.json(name, "image config ")
    return config if isinstance(config, dict) else {}


def _check_layers(docs: _Docs, layers: list[LayerRef]) -> None:
    for layer in layers:
        if not docs.exists(layer.member):
            raise ImageFormatError(
                f"{docs.path}: the manifest names layer {layer.member.decode(errors='replace')}, "
                "which the archive does not hold"
            )


def _from_manifest_json(docs: _Docs) -> list[Image]:
    doc = docs.json(b"manifest.json")
    if not isinstance(doc, list) or not doc:
        raise ImageFormatError(f"{docs.path}: manifest.json lists no images")
    if len(doc) > MAX_IMAGES:
        raise ImageFormatError(f"{docs.path}: manifest.json lists more than {MAX_IMAGES} images; refusing")
    images = []
    for entry in doc:
        if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list) or "Config" not in entry:
            raise ImageFormatError(f"{docs.path}: manifest.json has an entry without Config and Layers")
        config_name = str(entry["Config"]).encode()
        config = _config(docs, config_name)
        diff_ids = _diff_ids(config)
        layers = []
        for i, name in enumerate(entry["Layers"]):
            if not isinstance(name, str):
                raise ImageFormatError(f"{docs.path}: manifest.json has a layer that is not a file name")
            layers.append(LayerRef(
                member=name.encode(),
                digest=("sha256:" + name.split("/")[-1]) if name.startswith("blobs/sha256/") else None,
                diff_id=diff_ids[i] if i < len(diff_ids) else None,
                media_type=None,
            ))
        _check_layers(docs, layers)
        repo_tags = entry.get("RepoTags") or []
        if not isinstance(repo_tags, list):
            raise ImageFormatError(f"{docs.path}: manifest.json has RepoTags that is not a list")
        tags = tuple(t for t in repo_tags if isinstance(t, str))
        images.append(Image(docs.sha256(config_name), tags, tuple(layers), config))
    return images


def _oci_manifests(docs: _Docs, desc: dict[str, Any], ref: str | None,
                   depth: int, budget: list[int] | None = None,
                   ) -> list[tuple[bytes, dict[str, Any], str | None, str | None]]:
    """Leaf image manifests under an index descriptor: member, document, ref name and platform."""
    if depth > 8:
        raise ImageFormatError(f"{docs.path}: OCI indexes nest too deep")
    budget = budget if budget is not None else [MAX_IMAGES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ImageFormatError(f"{docs.path}: the OCI indexes name more than {MAX_IMAGES} manifests; refusing")
    if not isinstance(desc, dict):
        raise ImageFormatError(f"{docs.path}: an OCI index lists a manifest that is not an object")
    annotations = desc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ImageFormatError(f"{docs.path}: OCI annotations that are not an object")
    named = annotations.get(_REF_NAME)
    ref = named if isinstance(named, str) else ref
    member = _blob_member(desc.get("digest"), docs)
    doc = docs.json(member)
    if not isinstance(doc, dict):
        raise ImageFormatError(f"{docs.path}: OCI manifest {desc.get('digest')} is not an object")
    if str(desc.get("mediaType")) in _OCI_INDEX_TYPES or str(doc.get("mediaType")) in _OCI_INDEX_TYPES or (
        "manifests" in doc and "layers" not in doc
    ):
        children = doc.get("manifests") or []
        if not isinstance(children, list):
            raise ImageFormatError(f"{docs.path}: an OCI index whose manifests is not a list")
        out = []
        for child in children:
            out.extend(_oci_manifests(docs, child, ref, depth + 1, budget))
        return out
    plat = desc.get("platform")
    platform = None
    if isinstance(plat, dict) and plat.get("os"):
        platform = "/".join(str(p) for p in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if p)
    return [(member, doc, ref, platform)]


def _from_oci_layout(docs: _Docs) -> list[Image]:
    index = docs.json(b"index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageFormatError(f"{docs.path}: index.json has no manifests list")
    images = []
    budget = [MAX_IMAGES]
    seen: set[tuple[bytes, str | None]] = set()
    for desc in index["manifests"]:
        if not isinstance(desc, dict):
            raise ImageFormatError(f"{docs.path}: index.json has a manifest that is not an object")
        for member, doc, ref, platform in _oci_manifests(docs, desc, None, 0, budget):
            key = (member, ref)
            if key in seen:
                continue  # the same manifest reached twice through nested indexes
            seen.add(key)
            if len(images) >= MAX_IMAGES:
                raise ImageFormatError(f"{docs.path}: more than {MAX_IMAGES} images; refusing")
            config_desc = doc.get("config") or {}
            if not isinstance(config_desc, dict):
                raise ImageFormatError(f"{docs.path}: OCI manifest whose config is not a descriptor")
            config = _config(docs, _blob_member(config_desc.get("digest"), docs))
            diff_ids = _diff_ids(config)
            layer_descs = doc.get("layers")
            if not isinstance(layer_descs, list):
                raise ImageFormatError(f"{docs.path}: OCI manifest without a layers list")
            layers = []
            for i, ld in enumerate(layer_descs):
                if not isinstance(ld, dict):
                    raise ImageFormatError(f"{docs.path}: OCI manifest has a bad layer descriptor")
                layers.append(LayerRef(
                    member=_blob_member(ld.get("digest"), docs),
                    digest=ld.get("digest"),
                    diff_id=diff_ids[i] if i < len(diff_ids) else None,
                    media_type=ld.get("mediaType"),
                ))
            _check_layers(docs, layers)
            tags = (ref,) if ref else ()
            images.append(Image(str(config_desc.get("digest")), tags, tuple(layers), config, platform))
    return images


def _from_legacy(docs: _Docs) -> list[Image]:
    tops: dict[str, list[str]] = {}
    if docs.exists(b"repositories"):
        repos = docs.json(b"repositories")
        if not isinstance(repos, dict):
            raise ImageFormatError(f"{docs.path}: repositories is not a JSON object")
        for repo, tagmap in repos.items():
            if not isinstance(tagmap, dict):
                raise ImageFormatError(f"{docs.path}: repositories entry {repo} is not an object")
            for tag, layer_id in tagmap.items():
                tops.setdefault(str(layer_id), []).append(f"{repo}:{tag}")
    else:
        ids = {p.split(b"/")[0].decode(errors="replace") for p in docs.members if p.endswith(b"/json")}
        parents = set()
        for i in ids:
            meta = docs.json(f"{i}/json".encode())
            if not isinstance(meta, dict):
                raise ImageFormatError(f"{docs.path}: {i[:12]}/json is not an object")
            if isinstance(meta.get("parent"), str):
                parents.add(meta["parent"])
        tops = {i: [] for i in sorted(ids - parents)}
        if ids and not tops:
            raise ImageFormatError(f"{docs.path}: the legacy parent chain loops (every layer is a parent)")
    if len(tops) > MAX_IMAGES:
        raise ImageFormatError(f"{docs.path}: more than {MAX_IMAGES} images; refusing")
    images = []
    steps = 0
    for top, tags in tops.items():
        chain: list[str] = []
        on_chain: set[str] = set()
        config: dict[str, Any] = {}
        layer_id: str | None = top
        while layer_id:
            if layer_id in on_chain:
                raise ImageFormatError(f"{docs.path}: the legacy parent chain of {top[:12]} loops")
            on_chain.add(layer_id)
            steps += 1
            if steps > _MAX_LEGACY_STEPS:  # every image walks its own chain: n tops over one long chain is n^2
                raise ImageFormatError(f"{docs.path}: the legacy parent chains are implausibly long; refusing")
            name = f"{layer_id}/json".encode()
            if not docs.exists(name):
                raise ImageFormatError(f"{docs.path}: legacy layer {layer_id[:12]} has no json")
            meta = docs.json(name)
            if not isinstance(meta, dict):
                raise ImageFormatError(f"{docs.path}: {layer_id[:12]}/json is not an object")
            if not chain:
                config = meta
            chain.append(layer_id)
            parent = meta.get("parent")
            layer_id = parent if isinstance(parent, str) else None
        chain.reverse()
        layers = [LayerRef(f"{i}/layer.tar".encode(), None, None, None) for i in chain]
        _check_layers(docs, layers)
        images.append(Image(top, tuple(sorted(tags)), tuple(layers), config))
    return images


MAX_IMAGES = 10_000
# Layers walked over all of a legacy archive's images (a real one: a few tags of up to 127 layers).
_MAX_LEGACY_STEPS = 200_000


def read_images(archive: Archive) -> list[Image]:
    """Every image in ``archive``, in the order the archive lists them.

    Raises:
        ImageFormatError: the archive is not an image archive, or is inconsistent.
    """
    try:
        return _read_images(archive)
    except (TypeError, AttributeError, KeyError, ValueError, RecursionError, UnicodeError) as e:
        # The documents are untrusted JSON: any shape the readers above did not foresee
        # is a broken manifest, not a crash.
        raise ImageFormatError(
            f"{archive.path}: the image manifests are malformed ({type(e).__name__})") from None


def _read_images(archive: Archive) -> list[Image]:
    docs = _Docs(archive)
    if archive.exists(b"manifest.json"):
        images = _from_manifest_json(docs)
    elif archive.exists(b"index.json"):
        images = _from_oci_layout(docs)
    elif archive.exists(b"repositories") or any(p.endswith(b"/layer.tar") for p in archive.members):
        images = _from_legacy(docs)
    else:
        raise ImageFormatError(
            f"{archive.path} is a tar archive but not a container image "
            "(no manifest.json, index.json or repositories)"
        )
    if not images:
        raise ImageFormatError(f"{archive.path} holds no images")
    return images


def normalize_ref(ref: str) -> str:
    """``ubuntu`` -> ``ubuntu:latest``; ``docker.io/library/x:t`` -> ``x:t``."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name + ("@" + digest if digest else "")


def describe(images: list[Image]) -> str:
    return "; ".join(
        f"{n}: {', '.join(img.tags) or '<untagged>'} ({img.short_id}{', ' + img.platform if img.platform else ''})"
        for n, img in enumerate(images, 1)
    )


def select_image(images: list[Image], ref: str | None, archive_path: str) -> Image:
    """Pick one image by tag, id prefix or 1-based index.

    Tags match with or without ``docker.io/library/`` and with ``:latest``
    implied; a name without a registry also matches ``localhost/NAME``.

    Raises:
        ImageSelectError: ``ref`` matches nothing or several images, or the
            archive holds several images and ``ref`` is None.
    """
    if ref is None:
        if len(images) == 1:
            return images[0]
        raise ImageSelectError(
            f"{archive_path} holds {len(images)} images; choose one with --image: {describe(images)}"
        )
    if ref.isascii() and ref.isdigit() and len(ref) <= 4 and 1 <= int(ref) <= len(images):
        return images[int(ref) - 1]
    want = normalize_ref(ref)
    exact = [img for img in images if any(normalize_ref(t) == want for t in img.tags)]
    if not exact:
        exact = [img for img in images if any(normalize_ref(t).endswith("/" + want) for t in img.tags)]
    if not exact:
        hexref = ref.removeprefix("sha256:").lower()
        if len(hexref) >= 4 and all(c in "0123456789abcdef" for c in hexref):
            exact = [img for img in images if img.id.removeprefix("sha256:").startswith(hexref)]
    unique = list({id(img): img for img in exact}.values())
    if len(unique) == 1:
        return unique[0]
    if not unique:
        raise ImageSelectError(f"no image {ref!r} in {archive_path}; it holds {describe(images)}")
    raise ImageSelectError(f"{ref!r} is ambiguous in {archive_path}: {describe(unique)}")
