"""`imagefs layers` (issue 5): per layer entries, added / modified / deleted, wasted bytes,
created_by from the image history (skipping ``empty_layer`` entries), --json and the summary line;
on archives built here and on the corpus's small-layered.

The counts follow the definitions in `imagefs.inspect`: ``entries`` are a layer's tar members
other than whiteouts and opaque markers; *added* is an entry at a path the lower layers did
not have; *modified* one that replaces an existing non-directory (or a directory by a
non-directory), a directory over a directory not counting; *deleted* every path a whiteout or
opaque marker removes; a regular file's bytes are *wasted* when no name of the final image
reaches them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import builder as b
from conftest import assert_one_line_error, corpus_file, run_cli
from imagefs import BuildOptions, ImageTree
from imagefs.diff import DiffOptions, TreeSource, diff

KEYS = {"index", "digest", "compressed_size", "size", "entries", "added", "modified", "deleted", "file_bytes",
        "wasted_bytes", "created_by", "compression"}


def layers(cli: list[str], cache: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(cli, "layers", "-q", "--cache-dir", cache, *args)


def layers_json(cli: list[str], cache: Path, archive: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    r = layers(cli, cache, "--json", *args, archive)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    rows, summary = recs[:-1], recs[-1]
    for row in rows:
        assert set(row) == KEYS, row
    assert summary["summary"] is True
    return rows, summary


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- known per-layer effects -----------------------------------------------------------------------

L1 = [
    b.dir("etc"), b.file("etc/a", b"a" * 100), b.file("etc/b", b"b" * 200), b.file("etc/c", b"c" * 300),
    b.file("etc/keep", b"keep me"), b.dir("var"), b.file("var/x", b"x" * 11), b.hardlink("etc/c2", "etc/c"),
]
L2 = [
    b.dir("etc"),                                   # repeated parent: not counted
    b.file("etc/a", b"A" * 50),                     # modified (overwrites 100 bytes of L1)
    b.whiteout("etc/b"),                            # deleted (200 bytes of L1 wasted)
    b.whiteout("etc/c"),                            # deleted, but etc/c2 still reaches its bytes
    b.file("etc/new", b"new!!"),                    # added
]
L3 = [
    b.dir("var"), b.opaque("var"),                  # deletes var/x (11 bytes of L1 wasted)
    b.file("var/y", b"yyy"),                        # added
    b.symlink("etc/keep", "a"),                     # modified: a file replaced (7 bytes of L1 wasted)
]
EXPECTED = [  # index, entries, added, modified, deleted, file_bytes, wasted_bytes
    (1, 8, 8, 0, 0, 100 + 200 + 300 + 7 + 11, 100 + 200 + 7 + 11),
    (2, 3, 1, 1, 2, 50 + 5, 0),
    (3, 3, 1, 1, 1, 3, 0),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("layers-cache")


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("known") / "known.tar"
    b.write_docker_archive(str(path), [L1, L2, L3])
    return path


def test_counts(imagefs_bin: list[str], cache: Path, known: Path) -> None:
    rows, summary = layers_json(imagefs_bin, cache, known)
    got = [(r["index"], r["entries"], r["added"], r["modified"], r["deleted"], r["file_bytes"], r["wasted_bytes"])
           for r in rows]
    assert got == EXPECTED
    assert summary == {"summary": True, "layers": 3, "file_bytes": 676, "wasted_bytes": 318}


def test_digests_sizes_and_created_by(imagefs_bin: list[str], cache: Path, known: Path) -> None:
    rows, _ = layers_json(imagefs_bin, cache, known)
    tars = [b.layer_tar(layer) for layer in (L1, L2, L3)]
    assert [r["digest"] for r in rows] == [_sha(t) for t in tars]
    assert [r["size"] for r in rows] == [len(t) for t in tars]
    assert [r["compressed_size"] for r in rows] == [len(t) for t in tars]
    assert [r["compression"] for r in rows] == ["none"] * 3
    assert [r["created_by"] for r in rows] == ["layer 1", "layer 2", "layer 3"]  # builder's history


def test_text_output(imagefs_bin: list[str], cache: Path, known: Path) -> None:
    r = layers(imagefs_bin, cache, known)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = r.stdout.splitlines()
    assert len(out) == 1 + 3 + 1
    assert out[0].split() == ["#", "DIGEST", "STORED", "SIZE", "ENTRIES", "ADDED", "MODIFIED", "DELETED", "WASTED",
                              "CREATED", "BY"]
    tars = [b.layer_tar(layer) for layer in (L1, L2, L3)]
    for line, (index, entries, added, modified, deleted, _fb, _w), t in zip(out[1:4], EXPECTED, tars):
        f = line.split()
        assert f[0] == str(index)
        assert f[1] == _sha(t).removeprefix("sha256:")[:12]
        assert f[6:10] == [str(entries), str(added), str(modified), str(deleted)]
        assert line.endswith(f"layer {index}")
    assert out[1].split()[10:12] == ["318", "B"]  # wasted, human-readable
    assert out[-1] == "3 layers, 676 B in files, 318 B wasted (47.0%) by files that later layers overwrite or delete"


def test_same_counts_in_every_format(imagefs_bin: list[str], cache: Path, known: Path, tmp_path: Path) -> None:
    want, want_summary = layers_json(imagefs_bin, cache, known)
    for name, write in (("oci-gzip", lambda p: b.write_oci_archive(p, [L1, L2, L3], compression="gzip")),
                        ("oci-zstd", lambda p: b.write_oci_archive(p, [L1, L2, L3], compression="zstd")),
                        ("docker25", lambda p: b.write_docker25_archive(p, [L1, L2, L3]))):
        path = tmp_path / f"{name}.tar"
        write(str(path))
        rows, summary = layers_json(imagefs_bin, cache, path)
        keys = ("index", "digest", "entries", "added", "modified", "deleted", "file_bytes", "wasted_bytes")
        assert [{k: r[k] for k in keys} for r in rows] == [{k: r[k] for k in keys} for r in want], name
        assert summary == want_summary


def test_uncompressed_size_of_a_compressed_layer(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    layer = [b.dir("etc"), b.file("etc/a", b"x" * 1000)]
    tar = b.layer_tar(layer)
    b.write_oci_archive(str(tmp_path / "o.tar"), [layer], compression="gzip")
    rows, _ = layers_json(imagefs_bin, cache, tmp_path / "o.tar")
    assert rows[0]["compressed_size"] == len(gzip.compress(tar, mtime=0))
    assert rows[0]["size"] == len(tar)


@pytest.mark.parametrize("lower, upper, row, wasted_below", [
    # a directory replaced by a file: modified; its subtree goes without being "deleted"
    ([b.dir("d"), b.file("d/f", b"f" * 10)], [b.file("d", b"ddd")], (1, 0, 1, 0), 10),
    # a file replaced by a directory: modified, and what is inside it added
    ([b.file("f", b"f" * 10)], [b.dir("f"), b.file("f/in", b"i")], (2, 1, 1, 0), 10),
    # a whiteout of a directory deletes the directory and everything below it
    ([b.dir("d"), b.dir("d/e"), b.file("d/e/f", b"1"), b.file("d/g", b"22")], [b.whiteout("d")], (0, 0, 0, 4), 3),
    # an opaque marker deletes what was in the directory, not the directory; a path the layer
    # puts back is modified, not deleted (the net effect, as imagefs diff shows it)
    ([b.dir("d"), b.file("d/f", b"1"), b.file("d/g", b"22")], [b.opaque("d"), b.file("d/f", b"1")], (1, 0, 1, 1), 3),
    # a whiteout of a path that does not exist deletes nothing
    ([b.file("f", b"1")], [b.whiteout("nothing-here")], (0, 0, 0, 0), 0),
    # a directory repeated with other attributes is not a modification
    ([b.dir("d", mode=0o755)], [b.dir("d", mode=0o700)], (1, 0, 0, 0), 0),
    # a whiteout never hides an entry of its own layer
    ([b.file("f", b"f" * 10)], [b.file("g", b"g"), b.whiteout("g")], (1, 1, 0, 0), 0),
], ids=["dir-to-file", "file-to-dir", "whiteout-dir", "opaque", "whiteout-nothing", "dir-attrs",
        "whiteout-own-layer"])
def test_upper_layer_effects(imagefs_bin: list[str], cache: Path, tmp_path: Path, lower: list[b.Entry],
                             upper: list[b.Entry], row: tuple[int, int, int, int], wasted_below: int) -> None:
    b.write_docker_archive(str(tmp_path / "x.tar"), [lower, upper])
    rows, summary = layers_json(imagefs_bin, cache, tmp_path / "x.tar")
    assert (rows[1]["entries"], rows[1]["added"], rows[1]["modified"], rows[1]["deleted"]) == row
    assert rows[0]["wasted_bytes"] == wasted_below
    assert rows[1]["wasted_bytes"] == 0
    assert summary["wasted_bytes"] == wasted_below


@pytest.mark.parametrize("lower, upper, deleted", [
    ([b.dir("d"), b.file("d/f", b"1")], [b.whiteout("d"), b.whiteout("d/f")], 2),
    ([b.dir("d"), b.file("d/f", b"1"), b.file("d/g", b"1")], [b.opaque("d"), b.whiteout("d/f")], 2),
    ([b.file("f", b"1")], [b.whiteout("f"), b.whiteout("f")], 1),
], ids=["dir-and-child", "opaque-and-child", "twice"])
def test_a_path_is_deleted_once(imagefs_bin: list[str], cache: Path, tmp_path: Path, lower: list[b.Entry],
                                upper: list[b.Entry], deleted: int) -> None:
    b.write_docker_archive(str(tmp_path / "x.tar"), [lower, upper])
    rows, _ = layers_json(imagefs_bin, cache, tmp_path / "x.tar")
    assert rows[1]["deleted"] == deleted


def test_a_tree_deeper_than_the_recursion_limit(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    """Paths may have 1,000 components: walking what an opaque directory hides is a loop."""
    deep = "/".join(["d"] * 990)
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file(f"{deep}/f", b"1")], [b.opaque("d")]])
    rows, _ = layers_json(imagefs_bin, cache, tmp_path / "x.tar")
    assert rows[1]["deleted"] == 989 + 1  # d's subdirectories and the file; d itself stays


def test_hard_link_keeps_the_bytes_of_a_deleted_name(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file("f", b"f" * 10)], [b.hardlink("h", "f")],
                                                      [b.whiteout("f")]])
    rows, summary = layers_json(imagefs_bin, cache, tmp_path / "x.tar")
    assert [(r["entries"], r["added"], r["modified"], r["deleted"]) for r in rows] == [
        (1, 1, 0, 0), (1, 1, 0, 0), (0, 0, 0, 1)]
    assert [r["file_bytes"] for r in rows] == [10, 0, 0]  # a hard link member carries no bytes
    assert summary["wasted_bytes"] == 0


def test_file_overwritten_within_its_own_layer_is_wasted(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file("f", b"1234"), b.file("f", b"123456")]])
    rows, summary = layers_json(imagefs_bin, cache, tmp_path / "x.tar")
    assert (rows[0]["entries"], rows[0]["file_bytes"], rows[0]["wasted_bytes"]) == (2, 10, 4)
    assert summary["wasted_bytes"] == 4


def test_no_waste(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file("f", b"1")], [b.file("g", b"22")]])
    r = layers(imagefs_bin, cache, tmp_path / "x.tar")
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == "2 layers, 3 B in files, 0 B wasted (0.0%) by files that later layers " \
                                        "overwrite or delete"


# -- created_by and empty_layer history entries ----------------------------------------------------------

HISTORY = [
    {"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:0123abcd in / "},
    {"created_by": "/bin/sh -c #(nop)  CMD [\"bash\"]", "empty_layer": True},
    {"created_by": "/bin/sh -c #(nop)  ENV A=1", "empty_layer": True},
    {"created_by": "/bin/sh -c apt-get update && apt-get install -y curl", "comment": "buildkit"},
    {"created_by": "LABEL x=y", "empty_layer": True},
    {"created_by": "COPY . /app # buildkit", "empty_layer": False},
    {"created_by": "ENTRYPOINT [\"/app/run\"]", "empty_layer": True},
]
CREATED_BY = ["/bin/sh -c #(nop) ADD file:0123abcd in / ",
              "/bin/sh -c apt-get update && apt-get install -y curl",
              "COPY . /app # buildkit"]
H_LAYERS = [[b.dir("bin"), b.file("bin/sh", b"#!")], [b.file("usr/bin/curl", b"curl")], [b.dir("app"), b.file("app/run", b"r")]]


def _config(tars: list[bytes], history: list[dict[str, Any]] | None) -> bytes:
    cfg: dict[str, Any] = {"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/app/run"]},
                           "rootfs": {"type": "layers", "diff_ids": [_sha(t) for t in tars]}}
    if history is not None:
        cfg["history"] = history
    return json.dumps(cfg).encode()


def write_docker_by_hand(path: Path, tars: list[bytes], history: list[dict[str, Any]] | None) -> None:
    config = _config(tars, history)
    members = [(f"{_sha(t)[7:]}/layer.tar", t) for t in tars]
    members.append((f"{_sha(config)[7:]}.json", config))
    members.append(("manifest.json", json.dumps([{"Config": f"{_sha(config)[7:]}.json", "RepoTags": ["hist:1"],
                                                 "Layers": [m for m, _ in members[:len(tars)]]}]).encode()))
    b.write_tar(str(path), members)


def write_oci_by_hand(path: Path, tars: list[bytes], history: list[dict[str, Any]] | None) -> None:
    config = _config(tars, history)
    blobs = [gzip.compress(t, mtime=0) for t in tars]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _sha(blob),
                    "size": len(blob)} for blob in blobs],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "hist:1"}}]}).encode()
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    members += [(f"blobs/sha256/{_sha(x)[7:]}", x) for x in (*blobs, config, manifest)]
    b.write_tar(str(path), members)


@pytest.mark.parametrize("writer", [write_docker_by_hand, write_oci_by_hand], ids=["docker", "oci"])
def test_created_by_skips_empty_layer_entries(imagefs_bin: list[str], cache: Path, tmp_path: Path,
                                              writer: Any) -> None:
    tars = [b.layer_tar(layer) for layer in H_LAYERS]
    writer(tmp_path / "h.tar", tars, HISTORY)
    rows, _ = layers_json(imagefs_bin, cache, tmp_path / "h.tar")
    assert [r["created_by"] for r in rows] == CREATED_BY
    assert [r["digest"] for r in rows] == [_sha(t) for t in tars]
    assert [(r["entries"], r["added"]) for r in rows] == [(2, 2), (1, 1), (2, 2)]
    r = layers(imagefs_bin, cache, tmp_path / "h.tar")
    out = r.stdout.splitlines()
    assert out[1].endswith(CREATED_BY[0][:60]) and out[2].endswith(CREATED_BY[1][:60])
    assert out[3].endswith("COPY . /app # buildkit")


def test_created_by_without_history(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    tars = [b.layer_tar(layer) for layer in H_LAYERS]
    write_docker_by_hand(tmp_path / "h.tar", tars, None)
    rows, _ = layers_json(imagefs_bin, cache, tmp_path / "h.tar")
    assert [r["created_by"] for r in rows] == ["", "", ""]


def test_created_by_with_fewer_history_entries_than_layers(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    tars = [b.layer_tar(layer) for layer in H_LAYERS]
    write_docker_by_hand(tmp_path / "h.tar", tars, [{"created_by": "one"}, {"created_by": "e", "empty_layer": True}])
    rows, _ = layers_json(imagefs_bin, cache, tmp_path / "h.tar")
    assert [r["created_by"] for r in rows] == ["one", "", ""]


def test_image_choice_in_a_multi_image_archive(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "multi.tar"
    b.write_docker_archive(str(path), [], images=[([L1], ["one:1"]), ([L1, L2, L3], ["three:3"])])
    rows, _ = layers_json(imagefs_bin, cache, path, "--image", "three:3")
    assert len(rows) == 3
    rows, _ = layers_json(imagefs_bin, cache, path, "--image", "one:1")
    assert [(r["entries"], r["wasted_bytes"]) for r in rows] == [(8, 0)]
    r = layers(imagefs_bin, cache, path)
    assert r.returncode != 0
    assert_one_line_error(r)


def test_an_unusable_cache_dir_is_a_warning(imagefs_bin: list[str], tmp_path: Path) -> None:
    b.write_docker_archive(str(tmp_path / "x.tar"), [[b.file("f", b"1")]])
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blobs").write_bytes(b"")  # where the layer state would go
    r = run_cli(imagefs_bin, "layers", "--cache-dir", cache, tmp_path / "x.tar")
    assert r.returncode == 0 and "1 layers" in r.stdout, r.stderr
    assert "warning: cache directory" in r.stderr and "not usable" in r.stderr
    r = run_cli(imagefs_bin, "index", "-q", "--cache-dir", cache, tmp_path / "x.tar")
    assert r.returncode == 0 and r.stdout.endswith("index not kept (the cache directory is not usable)\n"), r


def test_missing_archive(imagefs_bin: list[str], cache: Path, tmp_path: Path) -> None:
    r = layers(imagefs_bin, cache, tmp_path / "nope.tar")
    assert "nope.tar" in assert_one_line_error(r)


# -- the corpus: small-layered ----------------------------------------------------------------------------

# From the corpus README's table: layer tar bytes, tar entries, whiteouts + opaque markers.
README_BYTES = [437_760, 11_264, 27_648, 5_245_952, 1_164_288, 28_160, 20_480]
README_ENTRIES = [260, 20, 23, 4, 2108, 35, 32]
README_WHITEOUTS = [0, 10, 0, 0, 0, 4, 13]
# imagefs's own counts (checked below against the layer tars, the oracles and `imagefs diff`)
ADDED = [260, 0, 4, 3, 2107, 7, 6]
MODIFIED = [0, 0, 11, 0, 0, 8, 3]
DELETED = [0, 24, 0, 0, 0, 9, 14]
WASTED = [29_059, 0, 298, 0, 115, 50, 0]


def _layer_tars(docker_archive: Path) -> tuple[dict[str, Any], list[list[tarfile.TarInfo]]]:
    """The config and each layer's members, read with tarfile from a docker-archive."""
    with tarfile.open(docker_archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = json.load(outer.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        out = []
        for name in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(name)) as inner:
                out.append(inner.getmembers())
    return config, out


def _is_whiteout(m: tarfile.TarInfo) -> bool:
    return m.name.rsplit("/", 1)[-1].startswith(".wh.")


@pytest.mark.corpus
@pytest.mark.parametrize("archive", ["small-layered.podman-docker.tar", "small-layered.skopeo-oci-zstd.tar",
                                     "small-layered.podman-oci.tar"])
def test_corpus_small_layered(imagefs_bin: list[str], cache: Path, corpus_dir: Path, archive: str) -> None:
    path = corpus_file(corpus_dir, archive)
    config, members = _layer_tars(corpus_file(corpus_dir, "small-layered.podman-docker.tar"))
    rows, summary = layers_json(imagefs_bin, cache, path)
    assert [r["index"] for r in rows] == list(range(1, 8))
    # the README's table agrees with the layer tars...
    assert [len(ms) for ms in members] == README_ENTRIES
    assert [sum(map(_is_whiteout, ms)) for ms in members] == README_WHITEOUTS
    # ...and `entries` is the tar members less the whiteouts and opaque markers
    assert [r["entries"] for r in rows] == [n - w for n, w in zip(README_ENTRIES, README_WHITEOUTS)]
    assert [r["size"] for r in rows] == README_BYTES
    assert [r["digest"] for r in rows] == config["rootfs"]["diff_ids"]
    assert [r["created_by"] for r in rows] == [h["created_by"] for h in config["history"] if not h.get("empty_layer")]
    assert [r["created_by"][:6] for r in rows[1:]] == [f"step {i}" for i in range(1, 7)]
    assert [r["added"] for r in rows] == ADDED
    assert [r["modified"] for r in rows] == MODIFIED
    assert [r["deleted"] for r in rows] == DELETED
    assert [r["wasted_bytes"] for r in rows] == WASTED
    assert [r["file_bytes"] for r in rows] == [sum(m.size for m in ms if m.isreg() and not _is_whiteout(m))
                                               for ms in members]
    assert summary == {"summary": True, "layers": 7, "file_bytes": 5_525_820, "wasted_bytes": sum(WASTED)}
    if archive.endswith("podman-docker.tar"):
        assert [r["compressed_size"] for r in rows] == README_BYTES
    r = layers(imagefs_bin, cache, path)
    assert r.stdout.splitlines()[-1] == ("7 layers, 5.3 MiB in files, 28.8 KiB wasted (0.5%) by files that later "
                                         "layers overwrite or delete")


@pytest.mark.corpus
def test_corpus_step1_deletions_match_the_base_oracle(imagefs_bin: list[str], cache: Path, corpus_dir: Path) -> None:
    """Layer 2 (step 1) only deletes: its `deleted` is the number of base paths at or below its whiteouts."""
    path = corpus_file(corpus_dir, "small-layered.podman-docker.tar")
    _config, members = _layer_tars(path)
    targets = ["/" + m.name.rsplit("/", 1)[0] + "/" + m.name.rsplit("/", 1)[1][4:] if "/" in m.name
               else "/" + m.name[4:] for m in members[1] if _is_whiteout(m)]
    with open(corpus_dir / "small-base.oracle.tsv", encoding="ascii") as f:
        base = [line.split("\t", 1)[0] for line in f if not line.startswith("#")]
    gone = {p for p in base for t in targets if p == t or p.startswith(t + "/")}
    rows, _ = layers_json(imagefs_bin, cache, path)
    assert rows[1]["deleted"] == len(gone) == 24


@pytest.mark.corpus
def test_corpus_added_agrees_with_diff(cache: Path, corpus_dir: Path) -> None:
    """Per layer, `added` is what `imagefs diff --all ARCHIVE@N-1 ARCHIVE@N` lists as added
    (these layers create no implicit parent directories)."""
    path = corpus_file(corpus_dir, "small-layered.podman-docker.tar")
    trees = [ImageTree.open(str(path), BuildOptions(layer=n, cache_dir=str(cache))) for n in range(1, 8)]
    try:
        added = []
        for lower, upper in zip(trees, trees[1:]):
            changes = list(diff(TreeSource(lower), TreeSource(upper), DiffOptions(all=True)))
            added.append(sum(c.kind == "A" for c in changes))
        assert added == ADDED[1:]
    finally:
        for t in trees:
            t.close()


@pytest.mark.corpus
def test_corpus_wasted_bytes_agree_with_the_index(cache: Path, corpus_dir: Path) -> None:
    """A regular file member is wasted exactly when no inode of the final tree points at its bytes."""
    path = corpus_file(corpus_dir, "small-layered.podman-docker.tar")
    _config, members = _layer_tars(path)
    with ImageTree.open(str(path), BuildOptions(cache_dir=str(cache))) as tree:
        reachable = set()
        for ino in range(1, tree.index.n_inodes + 1):
            a = tree.attr(ino)
            if a.mode & 0o170000 == 0o100000:
                reachable.add((a.layer, a.data_offset))
    wasted = [sum(m.size for m in ms if m.isreg() and not _is_whiteout(m) and (i, m.offset_data) not in reachable)
              for i, ms in enumerate(members)]
    assert wasted == WASTED
