"""Deterministic test archives for the benchmark, written with `tarfile` and raw bytes.

Every archive is a pure function of its parameters and a fixed seed, so two
runs (or two machines) measure the same bytes.  Each `build_*` function
writes its files atomically next to a ``.json`` description (member offsets,
file lists, counts) and skips the work when that description already exists
with the same parameters; `GENERATOR_VERSION` invalidates old ones.

The images:

* `build_tree_image`: one layer of ``n`` small text files (40-180 bytes) in a
  realistic directory fan-out (Python and node packages, locales, docs,
  headers, a flat dpkg info directory, shared libraries with their ``.so``
  symlinks, a few hard links), as a docker-save archive and as the bare layer
  tar (what ratarmount and GNU tar read).
* `build_layered_image`: the same files split into ``layers`` consecutive
  layers, each carrying the parent directories it needs (as ``docker build``
  writes them).
* `build_bigfile_image`: one layer holding a single large binary-like file.
* `build_gzip_image`: an OCI archive (as skopeo/podman write) whose only layer
  is ``tar+gzip`` of binary-like files totalling ``size`` uncompressed bytes.

"Binary-like" bytes compress with gzip about as well as real executables
(about 2.5-3x): skewed byte frequencies, short back-references inside the
32 KiB window, and embedded ASCII symbol names; neither zeros nor pure noise.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import struct
import tarfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping

__all__ = [
    "NEEDLE", "Entry", "bigfile_name", "binary_pool", "build_bigfile_image", "build_gzip_image",
    "build_layered_image", "build_tree_image", "tree_entries",
]

GENERATOR_VERSION = 1
SEED = 20240606
MTIME = 1_700_000_000
# `grep -r NEEDLE` finds it in one small file of every NEEDLE_EVERY.
NEEDLE = "imagefs-bench-needle"
NEEDLE_EVERY = 1000
_COPY = 1 << 20

_SYL = ("lib", "core", "net", "util", "io", "data", "app", "sys", "gtk", "qt", "x", "py", "ssl", "ctl",
        "conf", "mod", "kit", "base", "json", "xml", "http", "auth", "log", "db", "sql", "img", "font",
        "test", "doc", "api", "zip", "cache", "proto", "rpc", "term", "ui", "gl", "audio", "time", "re")
_LANGS = tuple(f"{a}{b}" for a in "abcdefghiklmnoprstuvz" for b in "aeinorsu")[:120]


@dataclass(frozen=True, slots=True)
class Entry:
    """One layer member: ``kind`` is ``f`` (file), ``d`` (dir), ``l`` (symlink) or ``h`` (hard link)."""

    path: str
    kind: str
    mode: int = 0o644
    target: str = ""


# -- the directory tree -------------------------------------------------------


_SYL2 = tuple(a + b for a in _SYL for b in _SYL)


def _word(rng: random.Random, n: int = 2) -> str:
    if n == 2:
        return rng.choice(_SYL2)
    return "".join(rng.choice(_SYL) for _ in range(n))


def _subtree(rng: random.Random, prefix: str, nfiles: int, ext: str, depth: int, out: list[Entry]) -> None:
    """``nfiles`` files under ``prefix``, spread over nested subdirectories like a source package."""
    if nfiles > 12 and depth < 5 and rng.random() < 0.75:
        nsub = rng.randint(1, min(8, max(1, nfiles // 6)))
        here = max(1, int(nfiles * rng.uniform(0.15, 0.5)))
        rest = nfiles - here
        cuts = sorted(rng.randint(0, rest) for _ in range(nsub - 1))
        shares = [b - a for a, b in zip([0, *cuts], [*cuts, rest])]
        used: set[str] = set()
        for share in shares:
            if share <= 0:
                continue
            name = _word(rng)
            while name in used:
                name += rng.choice(_SYL)
            used.add(name)
            _subtree(rng, f"{prefix}/{name}", share, ext, depth + 1, out)
    else:
        here = nfiles
    used_f: set[str] = set()
    for i in range(here):
        name = f"{_word(rng, rng.randint(1, 3))}{ext}"
        if name in used_f:
            name = f"{_word(rng)}_{i}{ext}"
        used_f.add(name)
        out.append(Entry(f"{prefix}/{name}", "f"))


def _package_size(rng: random.Random, median: float) -> int:
    return max(1, int(rng.lognormvariate(math.log(median), 1.0)))


def tree_entries(n: int, seed: int = SEED) -> list[Entry]:
    """About ``n`` members (files, symlinks, hard links; directories added) in walk order.

    The mix follows a Debian-based image with Python and node packages: most
    directories hold a handful of files, a few hold thousands (dpkg info,
    locales), the deepest are node_modules chains.
    """
    rng = random.Random(seed)
    files: list[Entry] = []
    quotas = [  # (share of n, generator)
        (0.38, "py"), (0.20, "node"), (0.08, "locale"), (0.08, "doc"), (0.10, "include"),
        (0.04, "dpkg"), (0.05, "lib"), (0.02, "bin"), (0.05, "etc"),
    ]
    for share, kind in quotas:
        want = int(n * share)
        start = len(files)
        k = 0
        while len(files) - start < want:
            k += 1
            left = want - (len(files) - start)
            if kind == "py":
                pkg = f"{_word(rng)}{k}"
                _subtree(rng, f"usr/lib/python3/dist-packages/{pkg}", min(left, _package_size(rng, 40)), ".py", 0, files)
            elif kind == "node":
                pkg = f"{_word(rng)}{k}"
                base = f"usr/lib/node_modules/{pkg}"
                for _ in range(rng.randint(0, 3)):  # nested dependency chains
                    base += f"/node_modules/{_word(rng)}"
                _subtree(rng, base, min(left, _package_size(rng, 25)), ".js", 1, files)
            elif kind == "locale":
                dom = f"{_word(rng)}{k}"
                for lang in _LANGS[:min(left, rng.randint(20, len(_LANGS)))]:
                    files.append(Entry(f"usr/share/locale/{lang}/LC_MESSAGES/{dom}.mo", "f"))
            elif kind == "doc":
                pkg = f"{_word(rng)}{k}"
                for name in ("copyright", "changelog.Debian.gz", "README.md", "NEWS.gz")[:rng.randint(1, 4)]:
                    files.append(Entry(f"usr/share/doc/{pkg}/{name}", "f"))
            elif kind == "include":
                _subtree(rng, f"usr/include/{_word(rng)}{k}", min(left, _package_size(rng, 30)), ".h", 1, files)
            elif kind == "dpkg":  # one flat directory with thousands of entries
                pkg = f"{_word(rng)}{k}"
                for ext in (".list", ".md5sums", ".postinst", ".triggers")[:rng.randint(2, 4)]:
                    files.append(Entry(f"var/lib/dpkg/info/{pkg}{ext}", "f"))
            elif kind == "lib":
                lib = f"lib{_word(rng)}{k}.so"
                ver = rng.randint(0, 9)
                files.append(Entry(f"usr/lib/x86_64-linux-gnu/{lib}.{ver}.{rng.randint(0, 30)}.0", "f", 0o644))
                files.append(Entry(f"usr/lib/x86_64-linux-gnu/{lib}.{ver}", "l", 0o777,
                                   f"{lib}.{ver}.{rng.randint(0, 30)}.0"))
            elif kind == "bin":
                name = f"{_word(rng)}{k}"
                files.append(Entry(f"usr/bin/{name}", "f", 0o755))
                if rng.random() < 0.05:
                    files.append(Entry(f"usr/bin/{name}-alias", "h", 0o755, f"usr/bin/{name}"))
            else:
                _subtree(rng, f"etc/{_word(rng)}{k}", min(left, _package_size(rng, 5)), ".conf", 2, files)
    # Symlinks point at an existing sibling: fix each to the file written just before it.
    fixed: list[Entry] = []
    for e in files:
        if e.kind == "l" and fixed and fixed[-1].kind == "f":
            e = Entry(e.path, "l", 0o777, fixed[-1].path.rsplit("/", 1)[1])
        fixed.append(e)
    return _with_dirs(fixed)


def _with_dirs(entries: Iterable[Entry]) -> list[Entry]:
    """Sort into walk order (parents first, names sorted) and add every parent directory."""
    by_path = {e.path: e for e in entries}
    dirs: set[str] = set()
    for p in by_path:
        parts = p.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    for d in dirs:
        by_path.setdefault(d, Entry(d, "d", 0o755))
    return sorted(by_path.values(), key=lambda e: e.path.split("/"))


def _small_content(path: str) -> tuple[bytes, bool]:
    """A file's bytes as a function of its path alone (so every layout of the tree agrees)."""
    key = zlib.crc32(path.encode())
    needle = key % NEEDLE_EVERY == 0
    rng = random.Random(key)
    size = rng.randint(40, 180)
    words = [path.rsplit("/", 1)[-1], "=", str(rng.getrandbits(32))]
    if needle:
        words.append(NEEDLE)
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(_SYL))
    text = " ".join(words)
    return (text[:size - 1] if not needle else text).encode() + b"\n", needle


# -- binary-like bytes --------------------------------------------------------


def binary_pool(size: int, seed: int = SEED) -> bytes:
    """``size`` bytes that gzip compresses about as well as an ELF executable does."""
    rng = random.Random(seed ^ 0x5EED)
    # Skewed byte frequencies: 0x00, 0xff and a few x86 opcodes are common.
    hot = [0x00] * 50 + [0xFF] * 12 + [0x48, 0x89, 0x8B, 0xE8, 0x0F, 0x83, 0x24, 0x44, 0x85, 0xC0] * 3
    table = bytes(hot[i] if i < len(hot) else i for i in range(256))
    symbols = [f"_ZN{len(w)}{w}E{_word(rng)}\0".encode() for w in (_word(rng, 3) for _ in range(2000))]
    out = bytearray()
    while len(out) < size:
        r = rng.random()
        if r < 0.50 and len(out) > 4096:  # a back-reference gzip can find
            n = rng.randint(8, 300)
            start = len(out) - rng.randint(n, min(32000, len(out)))
            out += out[start:start + n]
        elif r < 0.60:
            out += b"".join(rng.choice(symbols) for _ in range(rng.randint(1, 6)))
        else:
            out += rng.randbytes(rng.randint(16, 240)).translate(table)
    return bytes(out[:size])


class _Pool:
    """Deterministic binary-like data of any length, as slices of one pool."""

    def __init__(self, size: int = 64 << 20) -> None:
        self.data = binary_pool(size)

    def chunks(self, rng: random.Random, n: int) -> Iterator[bytes]:
        while n > 0:
            take = min(n, _COPY, len(self.data) // 2)
            off = rng.randrange(0, len(self.data) - take)
            yield self.data[off:off + take]
            n -= take


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (for `tarfile.addfile`)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._it = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: "memoryview | bytearray") -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


# -- tar writing --------------------------------------------------------------


def _info(path: str, kind: str, mode: int, size: int = 0, target: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path)
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.size = size
    ti.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}[kind]
    ti.linkname = target
    return ti


def _write_small_layer(out: BinaryIO, entries: Iterable[Entry]) -> dict[str, int]:
    """Write one layer of small files; returns counts by kind and of files holding NEEDLE."""
    counts = {"f": 0, "d": 0, "l": 0, "h": 0, "needle": 0, "bytes": 0}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            counts[e.kind] += 1
            if e.kind == "f":
                data, needle = _small_content(e.path)
                counts["needle"] += needle
                counts["bytes"] += len(data)
                tar.addfile(_info(e.path, "f", e.mode, len(data)), io.BytesIO(data))
            else:
                tar.addfile(_info(e.path, e.kind, e.mode, 0, e.target))
    return counts


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY):
            h.update(chunk)
    return h.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, "f", 0o644, len(data)), io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: str) -> None:
    with open(path, "rb") as f:
        tar.addfile(_info(name, "f", 0o644, os.fstat(f.fileno()).st_size), f)


def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(diff_ids))],
    }, sort_keys=True).encode()


def _write_docker_archive(dest: str, layer_files: list[str], tag: str) -> list[str]:
    """A docker-save (v1.2 manifest.json) archive of the given layer tars; returns their diff ids."""
    diff_ids = [_sha256_file(p) for p in layer_files]
    config = _config(diff_ids)
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{d}/layer.tar" for d in diff_ids]}]
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for d, p in zip(diff_ids, layer_files):
            tar.addfile(_info(d, "d", 0o755))
            _add_bytes(tar, f"{d}/VERSION", b"1.0")
            _add_file(tar, f"{d}/layer.tar", p)
        _add_bytes(tar, config_name, config)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        _add_bytes(tar, "repositories", json.dumps({tag.split(":")[0]: {tag.split(":")[1]: diff_ids[-1]}}).encode())
    return diff_ids


# -- the images ---------------------------------------------------------------


def _resolve(desc: dict[str, object], where: str) -> dict[str, object]:
    """``*_path`` entries are file names next to the description: make them absolute."""
    return {k: os.path.join(os.path.abspath(where), os.path.basename(v)) if k.endswith("_path") and isinstance(v, str)
            else v for k, v in desc.items()}


def _fresh(desc_path: str, params: Mapping[str, object]) -> dict[str, object] | None:
    try:
        with open(desc_path) as f:
            desc = _resolve(json.load(f), os.path.dirname(desc_path))
    except (OSError, ValueError):
        return None
    if desc.get("params") != dict(params):
        return None
    files = [v for k, v in desc.items() if k.endswith("_path") and isinstance(v, str)]
    return desc if all(os.path.exists(p) for p in files) else None


def _publish(desc_path: str, desc: dict[str, object]) -> dict[str, object]:
    """Write the description (file names only, so the work directory can move) atomically."""
    stored = {k: os.path.basename(v) if k.endswith("_path") and isinstance(v, str) else v for k, v in desc.items()}
    with _atomic(desc_path) as tmp, open(tmp, "w") as f:
        json.dump(stored, f, indent=1)
    return _resolve(stored, os.path.dirname(desc_path))


@contextmanager
def _atomic(path: str) -> Iterator[str]:
    """A temporary name to write ``path`` under; renamed to ``path`` only if the block succeeds.

    A run killed half way leaves a stray ``.tmp``, never a truncated file under the real name.
    """
    tmp = path + ".tmp"
    yield tmp
    os.replace(tmp, path)


def _cached(workdir: str, name: str, params: Mapping[str, object],
            build: Callable[[], dict[str, object]]) -> dict[str, object]:
    """The description of image ``name`` in ``workdir``: the stored one if it was made with
    ``params`` and its files are there, else ``build()``'s (which writes them), published."""
    desc_path = os.path.join(workdir, f"{name}.json")
    if (desc := _fresh(desc_path, params)) is not None:
        return desc
    return _publish(desc_path, {"params": params, **build()})


def build_tree_image(workdir: str, n: int) -> dict[str, object]:
    """The ``n``-file single-layer image: ``archive_path`` (docker-save) and ``layer_path`` (its tar)."""
    name = f"tree-{n}"
    return _cached(workdir, name, {"version": GENERATOR_VERSION, "n": n, "seed": SEED},
                   lambda: _write_tree_image(workdir, name, n))


def _write_tree_image(workdir: str, name: str, n: int) -> dict[str, object]:
    entries = tree_entries(n)
    layer = os.path.join(workdir, f"{name}.layer.tar")
    with _atomic(layer) as tmp, open(tmp, "wb") as f:
        counts = _write_small_layer(f, entries)
    archive = os.path.join(workdir, f"{name}.docker.tar")
    with _atomic(archive) as tmp:
        _write_docker_archive(tmp, [layer], f"bench/tree-{n}:latest")
    return {"archive_path": archive, "layer_path": layer, "members": len(entries), "counts": counts}


def build_layered_image(workdir: str, n: int, layers: int) -> dict[str, object]:
    """The files of `build_tree_image` (same ``n``) split over ``layers`` layers."""
    name = f"tree-{n}-x{layers}"
    return _cached(workdir, name, {"version": GENERATOR_VERSION, "n": n, "layers": layers, "seed": SEED},
                   lambda: _write_layered_image(workdir, name, n, layers))


def _write_layered_image(workdir: str, name: str, n: int, layers: int) -> dict[str, object]:
    entries = [e for e in tree_entries(n) if e.kind != "d"]
    per = -(-len(entries) // layers)
    tmpdir = os.path.join(workdir, f"{name}.layers.tmp")
    os.makedirs(tmpdir, exist_ok=True)
    paths = []
    total = {"f": 0, "d": 0, "l": 0, "h": 0, "needle": 0, "bytes": 0}
    for i in range(layers):
        chunk = entries[i * per:(i + 1) * per]
        # A hard link must be in the layer of its target: keep such pairs together.
        names = {e.path for e in chunk}
        chunk = [e if e.kind != "h" or e.target in names else Entry(e.path, "f", e.mode) for e in chunk]
        p = os.path.join(tmpdir, f"{i:03d}.tar")
        with open(p, "wb") as f:
            counts = _write_small_layer(f, _with_dirs(chunk))
        for k, v in counts.items():
            total[k] += v
        paths.append(p)
    archive = os.path.join(workdir, f"{name}.docker.tar")
    with _atomic(archive) as tmp:
        _write_docker_archive(tmp, paths, f"bench/{name}:latest")
    for p in paths:
        os.unlink(p)
    os.rmdir(tmpdir)
    return {"archive_path": archive, "layers": layers, "counts": total}


def bigfile_name() -> str:
    return "opt/bench/data/blob.bin"


def build_bigfile_image(workdir: str, size: int) -> dict[str, object]:
    """One layer with a ``size``-byte binary-like file; records where its bytes sit in the archive."""
    name = f"bigfile-{size >> 20}m"
    return _cached(workdir, name, {"version": GENERATOR_VERSION, "size": size, "seed": SEED},
                   lambda: _write_bigfile_image(workdir, name, size))


def _write_bigfile_image(workdir: str, name: str, size: int) -> dict[str, object]:
    pool = _Pool()
    rng = random.Random(SEED + 1)
    layer = os.path.join(workdir, f"{name}.layer.tar")
    with _atomic(layer) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("opt", "opt/bench", "opt/bench/data"):
            tar.addfile(_info(d, "d", 0o755))
        _add_bytes(tar, "opt/bench/README", b"a large file for the cat benchmark\n")
        tar.addfile(_info(bigfile_name(), "f", 0o644, size), _ChunkReader(pool.chunks(rng, size)))
    archive = os.path.join(workdir, f"{name}.docker.tar")
    with _atomic(archive) as tmp:
        _write_docker_archive(tmp, [layer], f"bench/{name}:latest")
    with tarfile.open(layer) as t:
        inner = t.getmember(bigfile_name()).offset_data
    with tarfile.open(archive) as t:
        outer = next(m for m in t.getmembers() if m.name.endswith("/layer.tar")).offset_data
    return {"archive_path": archive, "layer_path": layer, "member": bigfile_name(), "size": size,
            "offset_in_archive": outer + inner, "offset_in_layer": inner}


def _deflate_block(args: tuple[bytes, bytes, bool, int]) -> bytes:
    """Raw deflate of one block primed with the 32 KiB before it (pigz's trick)."""
    window, block, last, level = args
    z = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, window) if window else \
        zlib.compressobj(level, zlib.DEFLATED, -15, 9)
    return z.compress(block) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class _ParallelGzip(io.RawIOBase):
    """A gzip member written by all cores: 4 MiB blocks deflated in parallel, as pigz does.

    The result is one ordinary gzip stream (blocks joined at sync-flush
    points, each primed with the previous 32 KiB), so any gunzip reads it;
    ``sha``/``n`` describe the uncompressed bytes (the layer's diff id).
    """

    BLOCK = 4 << 20

    def __init__(self, out: BinaryIO, level: int = 6) -> None:
        super().__init__()
        import multiprocessing

        self.out = out
        self.level = level
        self.sha = hashlib.sha256()
        self.crc = 0
        self.n = 0
        self._buf = bytearray()
        self._window = b""
        self._pool = multiprocessing.get_context("fork").Pool(os.cpu_count() or 2)
        self._pending: list["multiprocessing.pool.AsyncResult[bytes]"] = []
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")  # no name, mtime 0, unix

    def writable(self) -> bool:
        return True

    def write(self, b: "bytes | bytearray | memoryview") -> int:  # type: ignore[override]
        self.sha.update(b)
        self.crc = zlib.crc32(b, self.crc)
        self.n += len(b)
        self._buf += b
        while len(self._buf) >= self.BLOCK:
            self._submit(bytes(self._buf[:self.BLOCK]), False)
            del self._buf[:self.BLOCK]
        return len(b)

    def _submit(self, block: bytes, last: bool) -> None:
        self._pending.append(self._pool.apply_async(_deflate_block, ((self._window, block, last, self.level),)))
        self._window = block[-32768:]
        while len(self._pending) > 2 * (os.cpu_count() or 2):
            self.out.write(self._pending.pop(0).get())

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._submit(bytes(self._buf), True)
            for p in self._pending:
                self.out.write(p.get())
            self.out.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.n & 0xFFFFFFFF))
        finally:
            self._pool.terminate()
            self._pool.join()
            super().close()


def build_gzip_image(workdir: str, size: int) -> dict[str, object]:
    """An oci-archive with one ``tar+gzip`` layer of binary-like files totalling about ``size`` bytes."""
    name = f"gzip-{size >> 20}m"
    return _cached(workdir, name, {"version": GENERATOR_VERSION, "size": size, "seed": SEED},
                   lambda: _write_gzip_image(workdir, name, size))


def _write_gzip_image(workdir: str, name: str, size: int) -> dict[str, object]:
    pool = _Pool()
    rng = random.Random(SEED + 2)
    files: list[tuple[str, int]] = []
    total = 0
    k = 0
    while total < size:  # sizes log-uniform from 4 KiB to 16 MiB, like libraries and binaries
        k += 1
        n = min(int(math.exp(rng.uniform(math.log(4096), math.log(16 << 20)))), size - total)
        where = rng.choice(("usr/lib/x86_64-linux-gnu", "usr/bin", "usr/libexec/bench", "opt/app/lib"))
        files.append((f"{where}/{_word(rng)}{k}.so" if "lib" in where else f"{where}/{_word(rng)}{k}", max(n, 1)))
        total += max(n, 1)
    entries = _with_dirs(Entry(p, "f", 0o755) for p, _ in files)
    sizes = dict(files)
    layer_gz = os.path.join(workdir, f"{name}.layer.tar.gz")
    with _atomic(layer_gz) as tmp, open(tmp, "wb") as raw:
        with _ParallelGzip(raw) as hashing:
            with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for e in entries:
                    if e.kind == "d":
                        tar.addfile(_info(e.path, "d", 0o755))
                    else:
                        tar.addfile(_info(e.path, "f", e.mode, sizes[e.path]),
                                    _ChunkReader(pool.chunks(rng, sizes[e.path])))
    diff_id = hashing.sha.hexdigest()
    uncompressed = hashing.n
    blob = _sha256_file(layer_gz)
    config = _config([diff_id])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{hashlib.sha256(config).hexdigest()}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{blob}",
                    "size": os.path.getsize(layer_gz)}],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{hashlib.sha256(manifest).hexdigest()}", "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
    archive = os.path.join(workdir, f"{name}.oci.tar")
    with _atomic(archive) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            tar.addfile(_info(d, "d", 0o755))
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, "index.json", index)
        _add_bytes(tar, f"blobs/sha256/{hashlib.sha256(manifest).hexdigest()}", manifest)
        _add_bytes(tar, f"blobs/sha256/{hashlib.sha256(config).hexdigest()}", config)
        _add_file(tar, f"blobs/sha256/{blob}", layer_gz)
    ordered = [(e.path, sizes[e.path]) for e in entries if e.kind == "f"]
    return {"archive_path": archive, "layer_path": layer_gz, "files": ordered, "file_bytes": total,
            "uncompressed": uncompressed, "compressed": os.path.getsize(layer_gz)}
