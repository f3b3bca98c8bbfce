#!/usr/bin/env python3
"""Write examples/sample.tar: a small three-layer docker-save archive for the Quick start.

Deterministic (fixed mtimes, sorted members), so the committed file can be
rebuilt byte for byte: ``python3 examples/make_sample.py``.  It shows what
imagefs resolves: a file deleted by a whiteout, a directory replaced
wholesale (opaque), a file changed in a later layer, a hard link, a symlink,
a setuid binary and a file capability.
"""

import hashlib
import io
import json
import os
import tarfile

MTIME = 1_735_689_600  # 2025-01-01


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE,
         mode: int = 0o644, link: str = "", pax: dict[str, str] | None = None) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, MTIME, link
    if pax:
        ti.pax_headers = pax
    if data is not None:
        ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def _layer(build) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    return buf.getvalue()


def base(tf: tarfile.TarFile) -> None:
    for d in ("etc", "usr", "usr/bin", "usr/share", "usr/share/doc", "usr/share/doc/sample", "var", "var/cache",
              "var/cache/apt", "tmp", "root"):
        _add(tf, d + "/", kind=tarfile.DIRTYPE, mode={"tmp": 0o1777, "root": 0o700}.get(d, 0o755))
    _add(tf, "bin", kind=tarfile.SYMTYPE, link="usr/bin", mode=0o777)
    _add(tf, "etc/os-release", b'PRETTY_NAME="imagefs sample 1.0"\nID=sample\nVERSION_ID="1.0"\n')
    _add(tf, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _add(tf, "etc/motd", b"Welcome to the imagefs sample image.\n")
    _add(tf, "usr/bin/hello", b"#!/bin/sh\necho hello from the sample image\n", mode=0o755)
    _add(tf, "usr/bin/hi", kind=tarfile.LNKTYPE, link="usr/bin/hello", mode=0o755)
    _add(tf, "usr/bin/su", b"\x7fELF not really\n", mode=0o4755)
    _add(tf, "usr/share/doc/sample/README", b"Documentation that a later layer deletes.\n")
    _add(tf, "var/cache/apt/pkgcache.bin", b"cache from the base layer\n")


def update(tf: tarfile.TarFile) -> None:
    _add(tf, "etc/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "etc/os-release", b'PRETTY_NAME="imagefs sample 1.1"\nID=sample\nVERSION_ID="1.1"\n')
    _add(tf, "usr/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "usr/share/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "usr/share/.wh.doc", b"", mode=0)  # rm -rf /usr/share/doc
    _add(tf, "usr/bin/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "usr/bin/ping", b"\x7fELF not really either\n", mode=0o755,
         pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"})


def cleanup(tf: tarfile.TarFile) -> None:
    _add(tf, "var/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "var/cache/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "var/cache/apt/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "var/cache/apt/.wh..wh..opq", b"", mode=0o755)  # the directory was emptied and refilled
    _add(tf, "var/cache/apt/fresh", b"rebuilt cache\n")
    _add(tf, "etc/.wh.motd", b"", mode=0)


def main() -> None:
    layers = [_layer(base), _layer(update), _layer(cleanup)]
    diff_ids = [hashlib.sha256(t).hexdigest() for t in layers]
    history = [{"created": "2025-01-01T00:00:00Z", "created_by": s}
               for s in ("ADD rootfs.tar /", "RUN apt-get upgrade && rm -rf /usr/share/doc",
                         "RUN rm /etc/motd && apt-get clean")]
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2025-01-01T00:00:00Z",
                         "config": {"Cmd": ["/bin/sh"]}, "history": history,
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for d in diff_ids]}},
                        sort_keys=True).encode()
    cfg = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{cfg}.json", "RepoTags": ["imagefs/sample:1.1"],
                            "Layers": [f"{d}.tar" for d in diff_ids]}]).encode()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [*((f"{d}.tar", t) for d, t in zip(diff_ids, layers)),
                           (f"{cfg}.json", config), ("manifest.json", manifest)]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o444, 0
            tf.addfile(ti, io.BytesIO(data))
    print(out)


if __name__ == "__main__":
    main()
