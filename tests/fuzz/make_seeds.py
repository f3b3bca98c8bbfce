#!/usr/bin/env python3
"""Rebuild tests/fuzz/seeds/ from the real corpus (../shared/corpus) and GNU tar.

    python tests/fuzz/make_seeds.py            # idempotent; keeps the seed dir under 1 MB

seeds/layers/    real layer tars (whole small ones, member-aligned slices of big ones)
                 plus synthetic ones for the dialects the corpus lacks (GNU long
                 names, old GNU sparse, PAX sparse 0.0/0.1/1.0, base-256, v7)
seeds/archives/  whole small image archives (docker-archive, OCI gzip, OCI zstd, legacy)

Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

from builder import dir as d_, file, hardlink, symlink, write_legacy_archive  # noqa: E402
from imagefs.tarscan import scan  # noqa: E402

CORPUS = TESTS.parent.parent / "shared" / "corpus"
SEEDS = HERE / "seeds"
EOA = bytes(1024)


class _R:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def pread(self, n: int, off: int) -> bytes:
        return self.data[off:off + n]


def header_starts(data: bytes) -> list[int]:
    """Offsets where a member (with its extended headers) starts."""
    starts, pos = [], 0
    prev_end = 0
    for m in scan(_R(data), len(data)):
        starts.append(prev_end)
        stored = 0 if m.kind in (0, 0o120000, 0o20000, 0o60000, 0o40000, 0o10000) else m.size
        if m.sparse is not None:
            stored = sum(n for _o, n in m.sparse)
        prev_end = m.offset + (stored + 511) // 512 * 512
        pos = prev_end
    starts.append(pos)
    return starts


def slice_members(data: bytes, lo: int, hi: int) -> bytes:
    """Whole members whose start lies in [lo, hi), plus the end-of-archive blocks."""
    starts = header_starts(data)
    a = min(s for s in starts if s >= lo)
    b = max(s for s in starts if s <= max(hi, a + 512))
    return data[a:b] + EOA


def extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="tar")


def gnu_tar(src: Path, out: Path, *args: str) -> None:
    subprocess.run(["tar", "-C", str(src), "-cf", str(out), "--owner=0", "--group=0",
                    "--mtime=@1700000000", "--sort=name", *args, "."], check=True)


def main() -> None:
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    layers = SEEDS / "layers"
    archives = SEEDS / "archives"
    layers.mkdir(parents=True)
    archives.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        extract(CORPUS / "vfswh.podman-docker.tar", t / "vfswh")
        extract(CORPUS / "small-layered.podman-docker.tar", t / "sl")
        extract(CORPUS / "small-base.podman-docker.tar", t / "sb")
        # vfswh: both layers whole (whiteouts, opaque-free deletes, a hard link, a symlink)
        names = {"eeb34662": "vfswh-1.tar", "9d21b1c4": "vfswh-2.tar"}
        for p in (t / "vfswh").glob("*.tar"):
            shutil.copyfile(p, layers / names[p.name[:8]])
        # small-layered: the small layers whole (PAX headers, hard links), slices of the big one
        for prefix in ("05eb8a2a", "30b2d90f", "55c3e4e7", "7d761c3a"):
            (p,) = (t / "sl").glob(prefix + "*.tar")
            shutil.copyfile(p, layers / f"small-layered-{prefix}.tar")
        (big,) = (t / "sl").glob("07cdcd97*.tar")
        data = big.read_bytes()
        # the special files (fifo, devices, hard links, xattrs, setuid, sticky) at the end
        (layers / "small-layered-07cdcd97-special.tar").write_bytes(slice_members(data, 1135000, len(data)))
        (layers / "small-layered-07cdcd97-head.tar").write_bytes(slice_members(data, 0, 40000))
        (base,) = (t / "sb").glob("9f145d0c*.tar")
        data = base.read_bytes()
        (layers / "small-base-head.tar").write_bytes(slice_members(data, 0, 64000))
        (layers / "small-base-hardlink.tar").write_bytes(slice_members(data, 340000, 352000))

        # Synthetic dialects, written by GNU tar and tarfile.
        src = t / "src"
        (src / "dir").mkdir(parents=True)
        long = "d" * 120 + "/" + "n" * 130
        (src / long).parent.mkdir(parents=True)
        (src / long).write_bytes(b"long name\n")
        os.symlink("../" + "t" * 150, src / "dir" / ("l" * 110))
        os.link(src / long, src / "dir" / "hardlink-to-long")
        with open(src / "sparse", "wb") as f:
            f.seek(200_000)
            f.write(b"data in the middle")
            f.seek(600_000)
            f.write(b"end")
        gnu_tar(src, layers / "gnu-longnames-sparse.tar", "--format=gnu", "--sparse")
        for ver in ("0.0", "0.1", "1.0"):
            gnu_tar(src, layers / f"pax-sparse-{ver}.tar", "--format=posix", "--sparse",
                    f"--sparse-version={ver}", "--pax-option=delete=atime,delete=ctime")
        v7 = t / "v7src"
        (v7 / "sub").mkdir(parents=True)
        (v7 / "sub" / "f").write_bytes(b"v7 file\n")
        os.symlink("sub/f", v7 / "link")
        gnu_tar(v7, layers / "v7.tar", "--format=v7")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for name, uid, mtime in (("big-uid", 1 << 40, 1 << 34), ("neg-mtime", 0, -1)):
                ti = tarfile.TarInfo(name)
                ti.uid, ti.mtime, ti.size = uid, mtime, 3
                tf.addfile(ti, io.BytesIO(b"abc"))
        (layers / "gnu-base256.tar").write_bytes(buf.getvalue())

        # Whole small archives for the manifest fuzzer.
        for name in ("vfswh.podman-docker.tar", "vfswh.podman-docker.tar.gz", "vfswh.podman-oci.tar",
                     "vfswh.skopeo-oci-zstd.tar"):
            shutil.copyfile(CORPUS / name, archives / name)
        write_legacy_archive(str(archives / "legacy.tar"), [
            [d_("etc"), file("etc/a", b"a\n"), symlink("etc/l", "/etc/a")],
            [file("etc/b", b"b\n"), hardlink("etc/c", "etc/b")],
        ])
    total = sum(p.stat().st_size for p in SEEDS.rglob("*") if p.is_file())
    print(f"{SEEDS}: {sum(1 for p in SEEDS.rglob('*') if p.is_file())} files, {total} bytes")
    assert total < 1 << 20, "keep the seed directory under 1 MB"


if __name__ == "__main__":
    main()
