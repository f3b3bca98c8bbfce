"""Deterministic image archives built in tests, from a description.

    layer = [file("etc/os-release", b"ID=test\n"), dir("usr", mode=0o755),
             symlink("bin", "usr/bin"), hardlink("usr/b", "usr/a"),
             whiteout("etc/motd"), opaque("var/cache")]
    write_docker_archive(path, [layer1, layer2], tags=["test:latest"])

Writers: `write_docker_archive` (manifest.json, podman/skopeo/Docker <= 24),
`write_legacy_archive` (repositories + <id>/json + <id>/layer.tar),
`write_docker25_archive` (OCI layout + manifest.json), `write_oci_archive`
(OCI layout, layers uncompressed, gzip or zstd).  `layer_tar` gives one layer's
bytes; `raw_header` builds a tar header byte by byte for malformed cases.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = [
    "Entry", "device", "dir", "fifo", "file", "hardlink", "layer_tar", "opaque", "raw_header",
    "symlink", "whiteout", "write_docker25_archive", "write_docker_archive", "write_legacy_archive",
    "write_oci_archive", "write_tar",
]

MTIME = 1_700_000_000


@dataclass(frozen=True)
class Entry:
    """One tar member of a layer.  ``kind`` is a tarfile type byte."""

    path: str | bytes
    kind: bytes
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    linkname: str | bytes = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def file(path: str | bytes, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return Entry(path, tarfile.REGTYPE, data, mode, **kw)  # type: ignore[arg-type]


def dir(path: str | bytes, mode: int = 0o755, **kw: object) -> Entry:  # noqa: A001 - reads well in tests
    return Entry(path, tarfile.DIRTYPE, b"", mode, **kw)  # type: ignore[arg-type]


def symlink(path: str | bytes, target: str | bytes, mode: int = 0o777, **kw: object) -> Entry:
    return Entry(path, tarfile.SYMTYPE, b"", mode, linkname=target, **kw)  # type: ignore[arg-type]


def hardlink(path: str | bytes, target: str | bytes, **kw: object) -> Entry:
    return Entry(path, tarfile.LNKTYPE, b"", 0o644, linkname=target, **kw)  # type: ignore[arg-type]


def device(path: str | bytes, kind: str, major: int, minor: int, mode: int = 0o600, **kw: object) -> Entry:
    t = tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE
    return Entry(path, t, b"", mode, devmajor=major, devminor=minor, **kw)  # type: ignore[arg-type]


def fifo(path: str | bytes, mode: int = 0o644, **kw: object) -> Entry:
    return Entry(path, tarfile.FIFOTYPE, b"", mode, **kw)  # type: ignore[arg-type]


def whiteout(path: str) -> Entry:
    head, _, name = path.rpartition("/")
    return file(f"{head}/.wh.{name}" if head else f".wh.{name}", mode=0)


def opaque(dirpath: str) -> Entry:
    return file(f"{dirpath}/.wh..wh..opq" if dirpath else ".wh..wh..opq", mode=0o755)


def _name(p: str | bytes) -> str:
    return p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else p


def layer_tar(entries: Iterable[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """One layer's tar bytes (PAX by default, GNU or USTAR on request)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for e in entries:
            ti = tarfile.TarInfo(_name(e.path))
            ti.type = e.kind
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = e.mtime
            ti.linkname = _name(e.linkname)
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            if e.xattrs:
                ti.pax_headers = {
                    "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in e.xattrs.items()
                }
            if e.kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def write_tar(path: str, members: Sequence[tuple[str, bytes]], symlinks: Sequence[tuple[str, str]] = ()) -> None:
    """An outer archive of plain files (and symlinks), mode 0444, mtime 0."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o444
            tf.addfile(ti, io.BytesIO(data))
        for name, target in symlinks:
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.SYMTYPE
            ti.linkname = target
            tf.addfile(ti)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config(diff_ids: list[str], history: list[dict[str, object]] | None = None) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": history or [{"created_by": f"layer {i + 1}"} for i in range(len(diff_ids))],
    }).encode()


def _layers(layers: Sequence[Sequence[Entry] | bytes]) -> list[bytes]:
    return [raw if isinstance(raw, bytes) else layer_tar(raw) for raw in layers]


def write_docker_archive(path: str, layers: Sequence[Sequence[Entry] | bytes], tags: Sequence[str] = ("test:latest",),
                         images: Sequence[tuple[Sequence[Sequence[Entry] | bytes], Sequence[str]]] | None = None) -> None:
    """A `docker save`/`podman save` archive; ``images`` for several in one archive."""
    members: dict[str, bytes] = {}
    manifest = []
    for img_layers, img_tags in (images or [(layers, tags)]):
        tars = _layers(img_layers)
        diff_ids = [_sha(t) for t in tars]
        for d, t in zip(diff_ids, tars):
            members[f"{d}.tar"] = t
        config = _config(diff_ids)
        members[f"{_sha(config)}.json"] = config
        manifest.append({"Config": f"{_sha(config)}.json", "RepoTags": list(img_tags),
                         "Layers": [f"{d}.tar" for d in diff_ids]})
    members["manifest.json"] = json.dumps(manifest).encode()
    write_tar(path, list(members.items()))


def write_legacy_archive(path: str, layers: Sequence[Sequence[Entry] | bytes], tag: str = "test:latest") -> None:
    """The Docker v1.0 layout: repositories + <id>/{VERSION,json,layer.tar}, no manifest.json."""
    tars = _layers(layers)
    members = []
    parent = None
    for i, t in enumerate(tars):
        layer_id = _sha(f"{parent}:{_sha(t)}:{i}".encode())
        meta = {"id": layer_id}
        if parent:
            meta["parent"] = parent
        members += [(f"{layer_id}/VERSION", b"1.0"), (f"{layer_id}/json", json.dumps(meta).encode()),
                    (f"{layer_id}/layer.tar", t)]
        parent = layer_id
    repo, _, name = tag.rpartition(":")
    members.append(("repositories", json.dumps({repo: {name: parent}}).encode()))
    write_tar(path, members)


def _oci_members(tars: list[bytes], compression: str, ref: str | None) -> tuple[list[tuple[str, bytes]], list[str]]:
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
    descs = []
    blob_names = []
    for t in tars:
        if compression == "gzip":
            blob = gzip.compress(t, mtime=0)
            mt = "application/vnd.oci.image.layer.v1.tar+gzip"
        elif compression == "zstd":
            import zstandard

            blob = zstandard.ZstdCompressor().compress(t)
            mt = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            blob = t
            mt = "application/vnd.oci.image.layer.v1.tar"
        members.append((f"blobs/sha256/{_sha(blob)}", blob))
        blob_names.append(f"blobs/sha256/{_sha(blob)}")
        descs.append({"mediaType": mt, "digest": f"sha256:{_sha(blob)}", "size": len(blob)})
    config = _config([_sha(t) for t in tars])
    members.append((f"blobs/sha256/{_sha(config)}", config))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{_sha(config)}",
                   "size": len(config)},
        "layers": descs,
    }).encode()
    members.append((f"blobs/sha256/{_sha(manifest)}", manifest))
    desc: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": f"sha256:{_sha(manifest)}", "size": len(manifest)}
    if ref:
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    members.append(("index.json", json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()))
    return members, blob_names + [f"blobs/sha256/{_sha(config)}"]


def write_oci_archive(path: str, layers: Sequence[Sequence[Entry] | bytes], compression: str = "none",
                      ref: str | None = "test:latest") -> None:
    """An oci-archive (podman save --format oci-archive / skopeo) with the given layer compression."""
    members, _ = _oci_members(_layers(layers), compression, ref)
    write_tar(path, members)


def write_docker25_archive(path: str, layers: Sequence[Sequence[Entry] | bytes], tags: Sequence[str] = ("test:latest",)) -> None:
    """Docker 25+ `docker save`: an OCI layout plus a manifest.json naming blobs/sha256/ paths."""
    tars = _layers(layers)
    members, names = _oci_members(tars, "none", tags[0] if tags else None)
    manifest = [{"Config": names[-1], "RepoTags": list(tags), "Layers": names[:-1]}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    write_tar(path, members)


class ByteReader:
    """The smallest tarscan.PReader: positional reads over bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def pread(self, n: int, offset: int) -> bytes:
        return self.data[offset:offset + n]


def pax_records(records: Sequence[tuple[bytes, bytes]]) -> bytes:
    """PAX extended header data: ``"LEN key=value\\n"`` records, LEN counting itself."""
    out = b""
    for key, value in records:
        body = b" " + key + b"=" + value + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n += 1
        out += str(n).encode() + body
    return out


def raw_header(name: bytes, size: int = 0, typeflag: bytes = b"0", mode: int = 0o644, linkname: bytes = b"",
               uid: int | bytes = 0, gid: int = 0, mtime: int = MTIME, magic: bytes = b"ustar\x0000",
               prefix: bytes = b"", size_field: bytes | None = None, checksum: int | None = None) -> bytes:
    """A 512-byte tar header built field by field (``size_field``/``uid`` bytes for base-256 cases)."""
    def octal(n: int, width: int) -> bytes:
        return b"%0*o\0" % (width - 1, n)

    hdr = bytearray(512)
    hdr[0:len(name[:100])] = name[:100]
    hdr[100:108] = octal(mode, 8)
    hdr[108:116] = uid if isinstance(uid, bytes) else octal(uid, 8)
    hdr[116:124] = octal(gid, 8)
    hdr[124:136] = size_field if size_field is not None else octal(size, 12)
    hdr[136:148] = octal(mtime, 12)
    hdr[156:157] = typeflag
    hdr[157:157 + len(linkname[:100])] = linkname[:100]
    hdr[257:265] = magic
    hdr[345:345 + len(prefix)] = prefix
    hdr[148:156] = b" " * 8
    chk = sum(hdr) if checksum is None else checksum
    hdr[148:156] = b"%06o\0 " % chk
    return bytes(hdr)
