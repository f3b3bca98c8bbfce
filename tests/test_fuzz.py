"""Fuzzing with hypothesis (bounded for CI) and the replay of every failure ever found: issue 7, part 2.

Properties, each ``max_examples=300`` and derandomized (``IMAGEFS_FUZZ_EXAMPLES=N``
for a longer, random campaign), the whole module well under a minute:

* `test_scan_mutated_layers`: `tarscan.scan` over real layer tars from
  ``tests/fuzz/seeds/layers`` (docker/podman layers of the corpus, and GNU tar's
  long-name, sparse and v7 dialects) after random mutations: bit flips,
  truncations, header fields rewritten with a valid checksum, PAX records
  inserted, header blocks spliced in from other seeds.  Only `TarFormatError`
  may escape, the scan ends (bounded reads), data offsets strictly increase and
  every member is normalised (`fuzztargets.check_members`).
* `test_mutated_layer_through_the_library`: the same mutants as the one layer of
  an image (plain, gzip or zstd) through `ImageTree.open`: an `ImageFSError` or a
  tree `fuzztargets.check_tree` accepts (every read EIO or bytes of the archive).
* `test_manifests_of_every_shape`: the seed archives of ``tests/fuzz/seeds/archives``
  (docker-archive, OCI gzip, OCI zstd, legacy) with their manifest.json,
  index.json, repositories, configs and OCI manifests replaced by random JSON
  of the right and of the wrong shape, strings pointing outside the archive,
  members dropped or garbled.  `read_images` + `select_image` may only raise
  `ImageFSError`; when they give images, the whole library pipeline is run and
  its tree checked (`fuzztargets.build_target`).
* `test_merge_random_members`: `merge` + `write_index` over random member
  lists (paths with ``..``/``.wh.`` names, every kind, hard links anywhere):
  never raises; the index is consistent (`fuzztargets.check_index`) and equals
  an independent flat model of the union rules.

Known bugs (``fuzztargets.KNOWN_BUGS``) are tolerated by the properties (noted as
hypothesis events, see ``--hypothesis-show-statistics``) so that the run stays
green and still fails on anything new; each is pinned by an ``xfail(strict=True)``
test here or in test_hostile.py, and by its file in ``tests/fuzz/regressions/``
(`test_regression_replays` runs every file there without tolerance).

``IMAGEFS_FUZZ_SAVE=1`` saves every failing input hypothesis finds (shrunk) to
``tests/fuzz/regressions/``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import fuzztargets as ft  # noqa: E402
from conftest import require_c_half  # noqa: E402
from imagefs.errors import TarFormatError  # noqa: E402
from imagefs.paths import normalize  # noqa: E402
from imagefs.tarscan import BLOCK, HARDLINK, Member  # noqa: E402

CAMPAIGN = os.environ.get("IMAGEFS_FUZZ_EXAMPLES")
EXAMPLES = int(CAMPAIGN or "300")
SAVE = bool(os.environ.get("IMAGEFS_FUZZ_SAVE"))
# The bounded default run is derandomized: the same examples on every run, so a test run
# (CI's included) passes or fails on the code alone.  New inputs are a campaign's job
# (IMAGEFS_FUZZ_EXAMPLES=N): random, and what it finds goes to tests/fuzz/regressions/.
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=CAMPAIGN is None,
    database=None if CAMPAIGN is None or os.environ.get("CI") else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Scratch space: every example writes an index, and write_index fsyncs; on tmpfs that is free.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
LAYER_SEEDS = {p.name: p.read_bytes() for p in sorted((ft.SEEDS / "layers").glob("*.tar"))}
ARCHIVE_SEEDS = sorted((ft.SEEDS / "archives").glob("*.tar*"))


def _header_offsets(data: bytes) -> list[int]:
    """Where the header blocks of a (valid) tar are, extended headers included."""
    out, pos = [], 0
    while pos + BLOCK <= len(data):
        h = data[pos:pos + BLOCK]
        if h == bytes(BLOCK):
            break
        out.append(pos)
        field = h[124:136]
        size = (int.from_bytes(field[1:], "big") if field[0] & 0x80
                else int(field.split(b"\0")[0].strip() or b"0", 8))
        if h[156:157] in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0
        pos += BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK
    return out or [0]


HEADERS = {name: _header_offsets(data) for name, data in LAYER_SEEDS.items()}


def _tolerate(target: Callable[[], Any], kind: str, payload: Callable[[], bytes], suffix: str = ".tar") -> Any:
    """Run ``target``; a known bug becomes an event, anything else fails (and is saved)."""
    try:
        return target()
    except ft.Runaway as e:
        if SAVE:
            ft.save_smallest(kind, "Runaway", payload(), suffix=suffix)
        raise AssertionError(f"runaway: {e}") from None
    except Exception as e:  # noqa: BLE001 - classified below
        bug = ft.known_bug(e)
        if SAVE:
            ft.save_smallest(kind, ft.signature(e), payload(), suffix=suffix)
        if bug is None:
            raise
        event(f"known bug: {bug.id}")
        return None


# -- tarscan -----------------------------------------------------------------------------------

FIELDS = {  # name: (start, end) in a header block
    "name": (0, 100), "mode": (100, 108), "uid": (108, 116), "gid": (116, 124), "size": (124, 136),
    "mtime": (136, 148), "typeflag": (156, 157), "linkname": (157, 257), "magic": (257, 265),
    "devmajor": (329, 337), "devminor": (337, 345), "prefix": (345, 500), "gnu-sparse": (386, 504),
}
TYPEFLAGS = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"L", b"K", b"x", b"X", b"g", b"S", b"D",
             b"V", b"M", b"N", b"\0", b"A", b"\xff"]
PATHS = [b"../../etc/passwd", b"/etc/shadow", b"./a//b/", b"..", b"/", b".wh..wh..opq", b"a/.wh.b",
         b".wh.", b".wh...", b"a\0b", b"x" * 200, b"usr/bin/../../..", b"", b"a/" * 60]


def _octal(n: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, n))[-(width - 1):] + b"\0"


@st.composite
def field_value(draw: st.DrawFn, width: int) -> bytes:
    choice = draw(st.integers(0, 7))
    if choice == 0:
        v = draw(st.integers(0, 8 ** (width - 1) - 1))
        return _octal(v, width)
    if choice == 1:  # base-256, positive or negative
        n = draw(st.integers(-(1 << (8 * width - 2)), (1 << (8 * width - 2))))
        raw = n.to_bytes(width, "big", signed=True)
        return raw if n < 0 else bytes([raw[0] | 0x80]) + raw[1:]
    if choice == 2:
        return draw(st.binary(min_size=width, max_size=width))
    if choice == 3:
        return draw(st.sampled_from([b" " * width, b"\0" * width, b"\xff" * width, b"8" * width,
                                     (b"7" * (width - 1) + b" ")[:width], b"-1".ljust(width, b"\0")]))
    if choice == 4 and width == 1:
        return draw(st.sampled_from(TYPEFLAGS))
    if choice == 5 and width >= 8:
        return draw(st.sampled_from(PATHS)).ljust(width, b"\0")[:width]
    if choice == 6:
        return b"ustar\x0000"[:width].ljust(width, b"\0") if width >= 6 else b"0" * width
    return _octal(draw(st.integers(0, 4096)), width) if width > 1 else b"0"


PAX_KEYS = [b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"SCHILY.devmajor", b"SCHILY.devminor",
            b"SCHILY.xattr.user.x", b"LIBARCHIVE.xattr.user.%41", b"GNU.sparse.map", b"GNU.sparse.size",
            b"GNU.sparse.realsize", b"GNU.sparse.offset", b"GNU.sparse.numbytes", b"GNU.sparse.major",
            b"GNU.sparse.minor", b"GNU.sparse.name", b"atime", b"comment", b"hdrcharset", b"uname"]
PAX_VALUES = st.one_of(
    st.integers(-5, 1 << 70).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"1", b"0,0,5,10", b"1,2,3", b"-1", b"1.5", b"1e9", b"9" * 40, b"0x10", b"=",
                     b"\n", b"1.", b".5", b"-", b"AAAA", b"!!", b"1,", b",", *PATHS]),
    st.binary(max_size=24),
)


@st.composite
def pax_block(draw: st.DrawFn) -> bytes:
    records = draw(st.lists(st.tuples(st.sampled_from(PAX_KEYS), PAX_VALUES), min_size=1, max_size=5))
    if draw(st.integers(0, 9)) == 0:  # a malformed record area
        data = draw(st.sampled_from([b"5 a=b", b"99 path=x\n", b"3 x\n", b"abc", b"0 =\n", b" 5 a=\n",
                                     b"6 a=b\n\0\0\0", b"1000000000000000000000 a=b\n"]))
        from builder import raw_header

        return raw_header(b"PaxHeader/x", size=len(data), typeflag=b"x") + ft.pad(data)
    return ft.pax(records, typeflag=draw(st.sampled_from([b"x", b"x", b"g", b"X"])))


@st.composite
def mutated_layer(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(sorted(LAYER_SEEDS)))
    data = bytearray(LAYER_SEEDS[name])
    heads = HEADERS[name]
    note(f"seed {name}")
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["flip", "field", "field", "field", "truncate", "splice", "pax", "drop", "dup"]))
        if not data:
            break
        if op == "flip":
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "field":
            at = draw(st.sampled_from(heads))
            if at + BLOCK > len(data):
                continue
            lo, hi = FIELDS[draw(st.sampled_from(sorted(FIELDS)))]
            data[at + lo:at + hi] = draw(field_value(hi - lo))
            data[at:at + BLOCK] = ft.with_checksum(data[at:at + BLOCK])
        elif op == "truncate":
            cut = draw(st.integers(0, len(data)))
            if draw(st.booleans()):
                cut -= cut % BLOCK
            del data[cut:]
        elif op == "splice":
            other = draw(st.sampled_from(sorted(LAYER_SEEDS)))
            src = draw(st.sampled_from(HEADERS[other]))
            block = LAYER_SEEDS[other][src:src + BLOCK * draw(st.integers(1, 3))]
            at = draw(st.sampled_from(heads))
            if draw(st.booleans()):
                data[at:at] = block
            else:
                data[at:at + len(block)] = block
        elif op == "pax":
            at = draw(st.sampled_from(heads))
            data[at:at] = draw(pax_block())
        elif op == "drop":
            at = draw(st.sampled_from(heads))
            del data[at:at + BLOCK]
        else:  # duplicate a member's header
            at = draw(st.sampled_from(heads))
            data[at:at] = data[at:at + BLOCK]
    return bytes(data)


@FUZZ
@given(data=mutated_layer(), length_known=st.booleans())
def test_scan_mutated_layers(data: bytes, length_known: bool) -> None:
    with ft.deadline(10):
        result = _tolerate(lambda: ft.scan_target(data, length_known), "scan", lambda: data)
    event("TarFormatError" if isinstance(result, TarFormatError) else "scanned")


@FUZZ
@given(data=mutated_layer(), comp=st.sampled_from(["none", "none", "gzip", "zstd"]))
def test_mutated_layer_through_the_library(data: bytes, comp: str) -> None:
    """The mutated layer as an image (plain, gzip or zstd): an ImageFSError or a consistent tree."""
    if comp == "gzip":
        import gzip

        blob = gzip.compress(data, mtime=0)
    elif comp == "zstd":
        import zstandard

        blob = zstandard.ZstdCompressor().compress(data)
    else:
        blob = data
    with tempfile.TemporaryDirectory(prefix="imagefs-fuzz-", dir=SCRATCH) as tmp:
        path = os.path.join(tmp, "layer.tar")
        ft.write_blob_archive(path, [blob])
        raw = Path(path).read_bytes()
        with ft.deadline(20):
            got = _tolerate(lambda: ft.build_target(path, os.path.join(tmp, "cache")), "build", lambda: raw)
    event(f"build: {type(got).__name__}")


@pytest.mark.parametrize("name", sorted(LAYER_SEEDS))
def test_every_seed_scans_cleanly(name: str) -> None:
    for length_known in (True, False):
        assert isinstance(ft.scan_target(LAYER_SEEDS[name], length_known), list)


# -- manifests ------------------------------------------------------------------------------------

JSON_KEYS = ["Config", "Layers", "RepoTags", "manifests", "digest", "mediaType", "annotations", "size",
             "org.opencontainers.image.ref.name", "parent", "rootfs", "diff_ids", "config", "layers",
             "platform", "os", "architecture", "variant", "id", "schemaVersion", "latest"]
MEDIA_TYPES = ["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.layer.v1.tar"]
HOSTILE_STRINGS = ["../x.tar", "/etc/passwd", "../../../../etc/passwd", "", ".", "..", "./", "/",
                   "sha256:../../etc/passwd", "sha256:", "sha256:" + "0" * 64, "\ud800", "a\x00b", "x" * 300,
                   "blobs/sha256/", "manifest.json", "repositories", "index.json"]


_JSON_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {}


def json_values(member_names: list[str], digests: list[str]) -> st.SearchStrategy[Any]:
    strings = st.one_of(
        st.text(max_size=8), st.sampled_from(HOSTILE_STRINGS), st.sampled_from(MEDIA_TYPES),
        st.sampled_from(member_names or ["x"]), st.sampled_from(digests or ["sha256:00"]),
    )
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 1 << 70), st.floats(allow_nan=False), strings)
    return st.recursive(
        scalars,
        lambda c: st.one_of(st.lists(c, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(JSON_KEYS), st.text(max_size=4)), c, max_size=4)),
        max_leaves=10,
    )


def _read_seed(path: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    files, links = [], []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            if m.isfile():
                files.append((m.name, tf.extractfile(m).read()))  # type: ignore[union-attr]
            elif m.issym():
                links.append((m.name, m.linkname))
    return files, links


SEED_MEMBERS = {p.name: _read_seed(p) for p in ARCHIVE_SEEDS if p.suffix == ".tar"}


def _paths_of(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths_of(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths_of(v, prefix + (i,))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc[path[0]] = _replace(doc[path[0]], path[1:], value)
    return doc


@st.composite
def mutated_archive(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    seed = draw(st.sampled_from(sorted(SEED_MEMBERS)))
    note(f"seed {seed}")
    files, links = SEED_MEMBERS[seed]
    files = list(files)
    links = list(links)
    names = [n for n, _ in files] + [n for n, _ in links]
    digests = ["sha256:" + n.rsplit("/", 1)[-1] for n in names if n.startswith("blobs/sha256/")]
    values = _JSON_STRATEGIES.get(seed)
    if values is None:
        values = _JSON_STRATEGIES[seed] = json_values(names, digests)
    for _ in range(draw(st.integers(1, 4))):
        jsons = [i for i, (_n, b) in enumerate(files) if b[:1] in (b"{", b"[", b'"') and len(b) < 1 << 16]
        op = draw(st.sampled_from(["json", "json", "json", "json", "drop", "garble", "add", "deep"]))
        if op == "json" and jsons:
            i = draw(st.sampled_from(jsons))
            try:
                doc = json.loads(files[i][1])
            except (ValueError, RecursionError):
                continue
            path = draw(st.sampled_from(_paths_of(doc)))
            if draw(st.integers(0, 4)) == 0 and path:
                parent = _replace(doc, (), doc)
                for k in path[:-1]:
                    parent = parent[k]
                del parent[path[-1]]
            else:
                doc = _replace(doc, path, draw(values))
            files[i] = (files[i][0], json.dumps(doc).encode())
        elif op == "drop" and files:
            del files[draw(st.integers(0, len(files) - 1))]
        elif op == "garble" and files:
            i = draw(st.integers(0, len(files) - 1))
            files[i] = (files[i][0], draw(st.sampled_from([b"", b"{", b"\xff\xfe", b"null", b"[]", b"{}", b"1e999",
                                                           b"NaN", b'"\\ud800"', b"\0" * 10])))
        elif op == "add":
            name = draw(st.sampled_from(["manifest.json", "index.json", "repositories", "oci-layout",
                                         "x/json", "x/layer.tar", *names]))
            if draw(st.booleans()):
                links.append((name, draw(st.sampled_from([*names, *HOSTILE_STRINGS[:4], name]))))
            else:
                files.append((name, json.dumps(draw(values)).encode()))
        elif op == "deep" and jsons:
            i = draw(st.sampled_from(jsons))
            files[i] = (files[i][0], b"[" * 50_000 + b"]" * 50_000)
    return files, links


def _write_archive(path: str, files: list[tuple[str, bytes]], links: list[tuple[str, str]]) -> bytes:
    from builder import write_tar

    write_tar(path, files, [(n, t) for n, t in links if "\0" not in n + t])
    return Path(path).read_bytes()


@FUZZ
@given(arch=mutated_archive())
def test_manifests_of_every_shape(arch: tuple[list[tuple[str, bytes]], list[tuple[str, str]]]) -> None:
    files, links = arch
    with tempfile.TemporaryDirectory(prefix="imagefs-fuzz-", dir=SCRATCH) as tmp:
        path = os.path.join(tmp, "archive.tar")
        try:
            raw = _write_archive(path, files, links)
        except (ValueError, UnicodeEncodeError, tarfile.TarError):
            assume(False)
            return
        with ft.deadline(20):
            result = _tolerate(lambda: ft.archive_target(path), "archive", lambda: raw)
            if isinstance(result, list):
                event("images")
                built = _tolerate(lambda: ft.build_target(path, os.path.join(tmp, "cache")), "build", lambda: raw)
                event(f"build: {type(built).__name__}")
            elif result is not None:
                event(f"refused: {type(result).__name__}")


@pytest.mark.parametrize("seed", ARCHIVE_SEEDS, ids=lambda p: p.name)
def test_every_seed_archive_builds(seed: Path, tmp_path: Path) -> None:
    assert isinstance(ft.archive_target(str(seed)), list)
    report = ft.build_target(str(seed), str(tmp_path / "cache"))
    assert isinstance(report, ft.TreeReport) and report.files > 0


# -- merge ------------------------------------------------------------------------------------------

COMPONENTS = [b"a", b"b", b"c", b".wh.a", b".wh.b", b".wh.c", b".wh..wh..opq", b".wh.", b".wh..", b".wh...",
              b".wh..wh.x", b"..", b".", b""]
KIND_NAMES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", HARDLINK: "hardlink",
              stat.S_IFIFO: "fifo", stat.S_IFCHR: "chardev"}

# Member paths are what tarscan yields: normalised (it drops NUL names and resolves ".." at the root).
ALL_PATHS = sorted({normalize(b"/".join(c)) for n in range(4) for c in __import__("itertools").product(COMPONENTS, repeat=n)})
norm_paths = st.sampled_from(ALL_PATHS)
link_targets = st.sampled_from([p for p in ALL_PATHS if p])


@st.composite
def members(draw: st.DrawFn) -> Member:
    path = draw(norm_paths)
    kind = draw(st.sampled_from(sorted(KIND_NAMES)))
    linkname = b""
    size = sparse = None
    if kind == HARDLINK:
        linkname = draw(link_targets)
    elif kind == stat.S_IFLNK:
        linkname = draw(st.sampled_from([b"/etc/passwd", b"../../..", b"a", b"", b"loop"]))
    elif kind == stat.S_IFREG:
        size = draw(st.sampled_from([0, 1, 511, 1 << 20, 1 << 40]))
        if draw(st.integers(0, 7)) == 0:
            sparse = ((0, 1), (1 << 30, 5))
    n = draw(st.integers(0, 1 << 16))  # one draw for the rest: mode, mtime, offset, xattrs
    xattrs = ((b"user.a", b"%d" % n),) if n % 5 == 0 else ()
    return Member(path, kind, n & 0o7777, n % 3, 0, size or 0, (n - (1 << 15)) * 10**9, linkname, 0,
                  n * 512, xattrs, sparse)


layer_lists = st.lists(st.lists(members(), max_size=10), min_size=1, max_size=4)


def model_union(layers: list[list[Member]]) -> dict[bytes, tuple[str, Any]]:
    """An independent, flat model of imagefs.merge: path -> ("dir", member|None) or ("node", id, member).

    Written from merge.py's documented rules, not its code: per layer whiteouts
    first (against lower layers), then entries in order; parents are created as
    0755 directories replacing non-directories; a hard link shares the node its
    target has at that moment (not a directory, must exist), else it is skipped;
    aufs bookkeeping (``.wh..wh.*`` components) is dropped, but hard links of the
    same layer may point at its files.
    """
    state: dict[bytes, tuple[Any, ...]] = {}

    def aufs_meta(p: bytes) -> bool:  # .wh..wh.plnk/... bookkeeping: dropped (the opaque marker is not)
        parts = p.split(b"/")
        return any(c.startswith(b".wh..wh.") and not (c == b".wh..wh..opq" and i == len(parts) - 1)
                   for i, c in enumerate(parts))

    def subtree(p: bytes) -> list[bytes]:
        return [k for k in state if k.startswith(p + b"/")] if p else list(state)

    def remove(p: bytes) -> None:
        for k in subtree(p):
            del state[k]
        state.pop(p, None)

    node_id = 0
    for layer in layers:
        entries, outs = [], []
        hidden: dict[bytes, tuple[Any, ...]] = {}  # aufs hard-link targets: linkable, never shown
        for m in layer:
            if aufs_meta(m.path):
                if m.kind not in (stat.S_IFDIR, HARDLINK):
                    node_id += 1
                    hidden[m.path] = ("node", node_id, m)
                continue
            parent, _, base = m.path.rpartition(b"/")
            if not base.startswith(b".wh."):
                entries.append(m)
            elif base == b".wh..wh..opq":
                outs.append(("opaque", parent))
            elif base.startswith(b".wh..wh.") or base[4:] in (b"", b".", b".."):
                continue
            else:
                outs.append(("whiteout", parent + b"/" + base[4:] if parent else base[4:]))
        for what, p in outs:
            if what == "opaque":
                if p == b"" or (p in state and state[p][0] == "dir"):
                    for k in subtree(p):
                        del state[k]
            elif p in state:
                remove(p)
        for m in entries:
            if m.path == b"":
                continue  # the root's attributes: not modelled
            parts = m.path.split(b"/")
            for i in range(1, len(parts)):
                anc = b"/".join(parts[:i])
                if anc not in state or state[anc][0] != "dir":
                    state[anc] = ("dir", None)
            existing = state.get(m.path)
            if m.kind == stat.S_IFDIR:
                if existing is not None and existing[0] == "dir":
                    state[m.path] = ("dir", m)
                else:
                    remove(m.path)
                    state[m.path] = ("dir", m)
            elif m.kind == HARDLINK:
                target = hidden.get(m.linkname) or state.get(m.linkname)
                if target is None or target[0] == "dir":
                    continue
                remove(m.path)
                state[m.path] = target
            else:
                remove(m.path)
                node_id += 1
                state[m.path] = ("node", node_id, m)
    return state  # type: ignore[return-value]


@FUZZ
@given(layers=layer_lists)
def test_merge_random_members(layers: list[list[Member]]) -> None:
    with tempfile.TemporaryDirectory(prefix="imagefs-fuzz-", dir=SCRATCH) as tmp:
        names = _tolerate(lambda: ft.merge_target(layers, tmp), "merge",
                          lambda: json.dumps([[ft.member_to_json(m) for m in layer] for layer in layers]).encode(),
                          suffix=".json")
        if names is None:
            return
        model = model_union(layers)
        got = {p: ino for ino, ps in names.items() for p in ps}
        assert set(got) == set(model), f"paths differ: only imagefs {set(got) - set(model)}, only model {set(model) - set(got)}"
        # Same kinds, same file data, hard links grouped alike.
        attrs = ft.LAST_INDEX_ATTRS
        groups: dict[Any, set[int]] = {}
        for p, entry in model.items():
            a, target = attrs[got[p]]
            if entry[0] == "dir":
                assert stat.S_ISDIR(a.mode), p
                m = entry[1]
                assert stat.S_IMODE(a.mode) == (m.mode if m is not None else 0o755), p
            else:
                m = entry[2]
                assert stat.S_IFMT(a.mode) == m.kind, p
                assert (a.size, a.data_offset, a.mtime_ns) == (m.size, m.offset, m.mtime_ns), p
                if m.kind == stat.S_IFLNK:
                    assert target == m.linkname, p
                groups.setdefault(entry[1], set()).add(got[p])
        for node, inos in groups.items():
            assert len(inos) == 1, f"model node {node} is {len(inos)} inodes"
        assert len({next(iter(v)) for v in groups.values()}) == len(groups), "two model nodes share an inode"


# -- regressions ----------------------------------------------------------------------------------------

REGRESSION_FILES = sorted(p for p in ft.REGRESSIONS.glob("*") if p.name.split("-", 1)[0] in
                          ("scan", "archive", "build", "merge"))
KNOWN = ft.known_regressions()


def _regression_param(p: Path) -> Any:
    info = KNOWN.get(p.name)
    marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {info['reason']}")] if info else []
    return pytest.param(p, marks=marks, id=p.name)


@pytest.mark.parametrize("path", [_regression_param(p) for p in REGRESSION_FILES])
def test_regression_replays(path: Path, tmp_path: Path) -> None:
    """Every input a fuzzer ever failed on, replayed through its target without tolerance."""
    with ft.deadline(30):
        ft.replay(path, str(tmp_path))


def test_regressions_are_all_accounted_for() -> None:
    """KNOWN.json lists only files that exist, each with the bug it shows."""
    ids = {b.id for b in ft.KNOWN_BUGS} | {"hostile-only"}
    for name, info in KNOWN.items():
        assert (ft.REGRESSIONS / name).exists(), name
        assert info.get("bug") in ids and info.get("reason"), name


def _scan_outcome(data: bytes, length_known: bool, fast: bool) -> tuple[Any, ...]:
    """Everything a scan shows: members, warnings, or the error (type and message)."""
    from imagefs import tarscan

    saved = tarscan._tarfast
    tarscan._tarfast = saved if fast else None
    warnings: list[str] = []
    try:
        members = list(tarscan.scan(ft.BytesReader(data), len(data) if length_known else None, warnings.append))
        return ("ok", members, warnings)
    except TarFormatError as e:
        return ("error", str(e), warnings)
    finally:
        tarscan._tarfast = saved


@FUZZ
@given(data=mutated_layer(), length_known=st.booleans())
def test_c_scanner_agrees_with_the_python_one(data: bytes, length_known: bool) -> None:
    """imagefs._tarfast takes runs of plain headers off the Python scanner; on any input,
    valid or mangled, the two must show the same members, warnings and errors."""
    from imagefs import tarscan

    require_c_half(tarscan, "_tarfast")
    with ft.deadline(10):
        fast = _scan_outcome(data, length_known, fast=True)
        slow = _scan_outcome(data, length_known, fast=False)
    event(fast[0])
    assert fast == slow
