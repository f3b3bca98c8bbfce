"""imagefs.manifest: images and layer order from every archive layout, and choosing one image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from builder import (file, layer_tar, write_docker25_archive, write_docker_archive, write_legacy_archive,
                     write_oci_archive, write_tar)
from imagefs.archive import Archive
from imagefs.errors import ImageFormatError, ImageSelectError
from imagefs.manifest import Image, LayerRef, normalize_ref, read_images, select_image

LAYERS = [[file("a", b"1")], [file("b", b"22")], [file("c", b"333")]]
TARS = [layer_tar(entries) for entries in LAYERS]
DIFF_IDS = ["sha256:" + hashlib.sha256(t).hexdigest() for t in TARS]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Any]:
    """``load(writer, *args, **kw)``: write an archive with a builder writer, return (archive, images)."""
    opened: list[Archive] = []
    count = 0

    def _load(writer: Any, *args: Any, **kw: Any) -> tuple[Archive, list[Image]]:
        nonlocal count
        count += 1
        path = tmp_path / f"archive{count}.tar"
        writer(str(path), *args, **kw)
        archive = Archive(str(path))
        opened.append(archive)
        return archive, read_images(archive)

    yield _load
    for a in opened:
        a.close()


def write(path: Path, files: dict[str, Any], symlinks: list[tuple[str, str]] | None = None) -> str:
    """An outer tar of ``files``; values that are not bytes are written as JSON."""
    write_tar(str(path), [(k, v if isinstance(v, bytes) else json.dumps(v).encode()) for k, v in files.items()],
              symlinks or [])
    return str(path)


def images_of(path: str) -> list[Image]:
    a = Archive(path)
    try:
        return read_images(a)
    finally:
        a.close()


def layer_contents(archive: Archive, image: Image) -> list[bytes]:
    return [archive.read(layer.member) for layer in image.layers]


# --- The four layouts ------------------------------------------------------------------------------

def test_docker_archive(load: Any) -> None:
    archive, images = load(write_docker_archive, LAYERS, tags=["test:latest", "other:1"])
    (img,) = images
    assert img.tags == ("test:latest", "other:1")
    config_name = json.loads(archive.read(b"manifest.json"))[0]["Config"]
    assert img.id == "sha256:" + sha(archive.read(config_name.encode()))
    assert img.short_id == img.id[7:19]
    assert layer_contents(archive, img) == TARS  # base first
    assert [layer.member for layer in img.layers] == [f"{d[7:]}.tar".encode() for d in DIFF_IDS]
    assert [layer.diff_id for layer in img.layers] == DIFF_IDS
    assert all(layer.digest is None and layer.media_type is None for layer in img.layers)
    assert img.config["rootfs"]["diff_ids"] == DIFF_IDS
    assert img.platform is None


def test_docker25_archive_prefers_manifest_json(load: Any) -> None:
    archive, images = load(write_docker25_archive, LAYERS, tags=["new:25"])
    assert archive.exists(b"index.json") and archive.exists(b"oci-layout")
    (img,) = images
    assert img.tags == ("new:25",)
    assert layer_contents(archive, img) == TARS
    assert [layer.digest for layer in img.layers] == DIFF_IDS  # uncompressed: blob digest == diff id
    assert [layer.member for layer in img.layers] == [f"blobs/sha256/{d[7:]}".encode() for d in DIFF_IDS]
    assert [layer.diff_id for layer in img.layers] == DIFF_IDS


def test_oci_archive(load: Any) -> None:
    archive, images = load(write_oci_archive, LAYERS, ref="example.com/team/app:2.0")
    (img,) = images
    assert img.tags == ("example.com/team/app:2.0",)
    assert layer_contents(archive, img) == TARS
    assert [layer.digest for layer in img.layers] == DIFF_IDS
    assert [layer.diff_id for layer in img.layers] == DIFF_IDS
    assert {layer.media_type for layer in img.layers} == {"application/vnd.oci.image.layer.v1.tar"}
    assert img.config["rootfs"]["diff_ids"] == DIFF_IDS


def test_oci_archive_without_a_ref_name(load: Any) -> None:
    _, (img,) = load(write_oci_archive, LAYERS, ref=None)
    assert img.tags == ()


def test_legacy_archive(load: Any) -> None:
    archive, images = load(write_legacy_archive, LAYERS, tag="old/school:v1")
    (img,) = images
    assert img.tags == ("old/school:v1",)
    assert layer_contents(archive, img) == TARS  # parent chain walked and reversed: base first
    top = json.loads(archive.read(f"{img.id}/json".encode()))
    assert img.config == top and "parent" in top
    assert img.layers[-1].member == f"{img.id}/layer.tar".encode()
    assert all(layer.diff_id is None and layer.digest is None for layer in img.layers)


def test_every_layout_gives_the_same_image_id_and_layers(load: Any) -> None:
    got = []
    for writer in (write_docker_archive, write_docker25_archive, write_oci_archive):
        archive, (img,) = load(writer, LAYERS)
        got.append((img.id, layer_contents(archive, img)))
    assert got[0] == got[1] == got[2]


def test_single_layer_and_layerless_images(load: Any) -> None:
    archive, (img,) = load(write_docker_archive, LAYERS[:1])
    assert layer_contents(archive, img) == TARS[:1]
    _, (empty,) = load(write_docker_archive, [])
    assert empty.layers == ()


def test_multi_image_docker_archive(load: Any) -> None:
    archive, images = load(write_docker_archive, [], images=[
        (LAYERS[:2], ["base:1", "base:latest"]),
        (LAYERS, ["app:1"]),
        (LAYERS[2:], []),
    ])
    assert [img.tags for img in images] == [("base:1", "base:latest"), ("app:1",), ()]
    assert [layer_contents(archive, img) for img in images] == [TARS[:2], TARS, TARS[2:]]
    assert len({img.id for img in images}) == 3
    # The shared base layers are the same archive members.
    assert images[0].layers == images[1].layers[:2]


# --- Legacy parent chains --------------------------------------------------------------------------

def legacy_files(chain: list[tuple[str, str | None]], tars: list[bytes]) -> dict[str, Any]:
    """``<id>/json`` and ``<id>/layer.tar`` for (id, parent) pairs, written top layer first."""
    files: dict[str, Any] = {}
    for (layer_id, parent), tar in reversed(list(zip(chain, tars))):
        meta: dict[str, Any] = {"id": layer_id}
        if parent:
            meta["parent"] = parent
        files[f"{layer_id}/json"] = meta
        files[f"{layer_id}/VERSION"] = b"1.0"
        files[f"{layer_id}/layer.tar"] = tar
    return files


CHAIN = [("1111" * 16, None), ("2222" * 16, "1111" * 16), ("3333" * 16, "2222" * 16)]


def test_legacy_parent_chain_order_by_hand(tmp_path: Path) -> None:
    files = legacy_files(CHAIN, TARS)
    files["repositories"] = {"repo": {"latest": CHAIN[2][0], "v1": CHAIN[2][0]}, "other": {"x": CHAIN[1][0]}}
    path = write(tmp_path / "legacy.tar", files)
    a = Archive(path)
    try:
        top, middle = read_images(a)
        assert top.id == CHAIN[2][0] and top.tags == ("repo:latest", "repo:v1")
        assert [layer.member for layer in top.layers] == [f"{i}/layer.tar".encode() for i, _ in CHAIN]
        assert layer_contents(a, top) == TARS
        assert middle.id == CHAIN[1][0] and middle.tags == ("other:x",)
        assert layer_contents(a, middle) == TARS[:2]
    finally:
        a.close()


def test_legacy_without_repositories_finds_the_top_layers(tmp_path: Path) -> None:
    path = write(tmp_path / "legacy.tar", legacy_files(CHAIN, TARS))
    (img,) = images_of(path)
    assert img.id == CHAIN[2][0] and img.tags == ()
    assert [layer.member for layer in img.layers] == [f"{i}/layer.tar".encode() for i, _ in CHAIN]


@pytest.mark.parametrize("with_repositories", [True, False])
@pytest.mark.parametrize("loop", [
    [("aaaa" * 16, "bbbb" * 16), ("bbbb" * 16, "aaaa" * 16)],
    [("aaaa" * 16, "aaaa" * 16)],
    [("aaaa" * 16, "bbbb" * 16), ("bbbb" * 16, "cccc" * 16), ("cccc" * 16, "bbbb" * 16)],
], ids=["pair", "self", "tail"])
def test_legacy_parent_loop(tmp_path: Path, loop: list[tuple[str, str]], with_repositories: bool) -> None:
    files = legacy_files(loop, TARS)
    if with_repositories:
        files["repositories"] = {"r": {"t": loop[0][0]}}
    path = write(tmp_path / "loop.tar", files)
    with pytest.raises(ImageFormatError) as err:
        images_of(path)
    assert path in str(err.value)
    if with_repositories:
        assert "loops" in str(err.value).replace(path, "")


def test_legacy_parent_loop_without_repositories_names_the_loop(tmp_path: Path) -> None:
    path = write(tmp_path / "cycle.tar", legacy_files([("aaaa" * 16, "bbbb" * 16), ("bbbb" * 16, "aaaa" * 16)], TARS))
    with pytest.raises(ImageFormatError) as err:
        images_of(path)
    assert "loop" in str(err.value).replace(path, "")  # the tmp_path itself says "loop"


def test_legacy_missing_parent(tmp_path: Path) -> None:
    files = legacy_files([("aaaa" * 16, "ffff" * 16)], TARS)
    files["repositories"] = {"r": {"t": "aaaa" * 16}}
    with pytest.raises(ImageFormatError, match="legacy layer ffffffffffff has no json"):
        images_of(write(tmp_path / "a.tar", files))


def test_legacy_missing_layer_tar(tmp_path: Path) -> None:
    files = legacy_files(CHAIN, TARS)
    del files[f"{CHAIN[0][0]}/layer.tar"]
    files["repositories"] = {"r": {"t": CHAIN[2][0]}}
    with pytest.raises(ImageFormatError, match=f"layer {CHAIN[0][0]}/layer.tar, which the archive does not hold"):
        images_of(write(tmp_path / "a.tar", files))


@pytest.mark.parametrize(("files", "message"), [
    ({"repositories": b"{nope", "x/layer.tar": b""}, "repositories is not valid JSON"),
    ({"repositories": ["r"], "x/layer.tar": b""}, "repositories is not a JSON object"),
    ({"repositories": {"r": "x"}, "x/layer.tar": b""}, "repositories entry r is not an object"),
    ({"repositories": {"r": {"t": "x"}}, "x/json": [1], "x/layer.tar": b""}, "x/json is not an object"),
    ({"repositories": {"r": {"t": "x"}}, "x/json": b"{", "x/layer.tar": b""}, "x/json is not valid JSON"),
    ({"x/json": b"{", "x/layer.tar": b""}, "x/json is not valid JSON"),
    ({"x/layer.tar": b""}, "holds no images"),
    ({"repositories": {}}, "holds no images"),
])
def test_broken_legacy_archives(tmp_path: Path, files: dict[str, Any], message: str) -> None:
    with pytest.raises(ImageFormatError, match=message):
        images_of(write(tmp_path / "a.tar", files))


@pytest.mark.parametrize("meta", [[1], None, "text"])
def test_legacy_json_not_an_object_without_repositories(tmp_path: Path, meta: Any) -> None:
    with pytest.raises(ImageFormatError, match="not an object"):
        images_of(write(tmp_path / "a.tar", {"x/json": meta, "x/layer.tar": b""}))


# --- Broken manifest.json archives -----------------------------------------------------------------

def docker_files(manifest: Any, config: bytes | None = None, layers: dict[str, bytes] | None = None) -> dict[str, Any]:
    """A manifest.json archive: ``manifest`` (bytes as is), ``config.json`` and layer files."""
    files: dict[str, Any] = {"manifest.json": manifest}  # write() JSON-encodes what is not bytes
    if config is not None:
        files["config.json"] = config
    files.update(layers or {})
    return files


GOOD_CONFIG = json.dumps({"rootfs": {"diff_ids": DIFF_IDS[:1]}}).encode()


@pytest.mark.parametrize(("manifest", "config", "layers", "message"), [
    (b"not json at all", None, None, "manifest.json is not valid JSON"),
    (b"\xff\xfe garbage", None, None, "manifest.json is not valid JSON"),
    ([], None, None, "manifest.json lists no images"),
    ({}, None, None, "manifest.json lists no images"),
    ({"Config": "config.json"}, None, None, "manifest.json lists no images"),
    (["x"], None, None, "manifest.json has an entry without Config and Layers"),
    ([{"Layers": []}], None, None, "manifest.json has an entry without Config and Layers"),
    ([{"Config": "config.json"}], GOOD_CONFIG, None, "manifest.json has an entry without Config and Layers"),
    ([{"Config": "config.json", "Layers": "a.tar"}], GOOD_CONFIG, None, "without Config and Layers"),
    ([{"Config": "missing.json", "Layers": []}], None, None, "refers to missing.json, which the archive does not hold"),
    ([{"Config": "config.json", "Layers": []}], b"{bad", None, "image config config.json is not valid JSON"),
    ([{"Config": "config.json", "Layers": [7]}], GOOD_CONFIG, None, "a layer that is not a file name"),
    ([{"Config": "config.json", "Layers": ["gone.tar"]}], GOOD_CONFIG, None,
     "the manifest names layer gone.tar, which the archive does not hold"),
    ([{"Config": "config.json", "Layers": ["l.tar", "gone.tar"]}], GOOD_CONFIG, {"l.tar": TARS[0]},
     "the manifest names layer gone.tar"),
])
def test_broken_manifest_json(tmp_path: Path, manifest: Any, config: bytes | None, layers: dict[str, bytes] | None,
                              message: str) -> None:
    path = write(tmp_path / "a.tar", docker_files(manifest, config, layers))
    with pytest.raises(ImageFormatError, match=message) as err:
        images_of(path)
    assert str(err.value).startswith(path) and "\n" not in str(err.value)


def test_config_without_diff_ids_is_tolerated(tmp_path: Path) -> None:
    for config in (b"{}", b"[]", b'"text"', b'{"rootfs": {"diff_ids": [1, "sha256:x"]}}'):
        manifest = [{"Config": "config.json", "Layers": ["l.tar", "m.tar"], "RepoTags": None}]
        path = write(tmp_path / "a.tar", docker_files(manifest, config, {"l.tar": TARS[0], "m.tar": TARS[1]}))
        (img,) = images_of(path)
        assert img.tags == ()
        assert len(img.layers) == 2 and img.layers[0].diff_id is None


def test_config_not_an_object_counts_as_empty(tmp_path: Path) -> None:
    """Whatever else reads Image.config (layers, commit) may take it for a dict."""
    for config in (b"[]", b"[1]", b'"abc"', b"7", b"null"):
        path = write(tmp_path / "a.tar", docker_files([{"Config": "config.json", "Layers": ["l.tar"]}], config,
                                                      {"l.tar": TARS[0]}))
        (img,) = images_of(path)
        assert img.config == {} and img.id == "sha256:" + sha(config)


def _counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import imagefs.manifest as manifest

    calls = [0]
    real = json.loads

    def loads(raw: Any, *a: Any, **kw: Any) -> Any:
        calls[0] += 1
        return real(raw, *a, **kw)

    monkeypatch.setattr(manifest.json, "loads", loads)
    return calls


def test_entries_sharing_a_config_parse_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile manifest.json of many entries naming one big config costs one parse, not one each."""
    manifest = [{"Config": "config.json", "Layers": ["l.tar"], "RepoTags": [f"t:{i}"]} for i in range(500)]
    path = write(tmp_path / "a.tar", docker_files(manifest, GOOD_CONFIG, {"l.tar": TARS[0]}))
    calls = _counting_loads(monkeypatch)
    images = images_of(path)
    assert len(images) == 500 and calls[0] == 2  # manifest.json and config.json


def test_oci_descriptors_sharing_a_manifest_parse_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oci = OCI()
    desc = oci.image(TARS[:1])
    path = oci.write(tmp_path / "a.tar", [annotated(desc, f"r:{i % 50}") for i in range(300)])
    calls = _counting_loads(monkeypatch)
    images = images_of(path)
    assert sorted(i.tags[0] for i in images) == sorted(f"r:{i}" for i in range(50))
    assert calls[0] == 3  # index.json, the manifest, the config


def test_too_many_images_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imagefs.manifest as manifest

    monkeypatch.setattr(manifest, "MAX_IMAGES", 5)
    entries = [{"Config": "config.json", "Layers": ["l.tar"]}] * 6
    path = write(tmp_path / "a.tar", docker_files(entries, GOOD_CONFIG, {"l.tar": TARS[0]}))
    with pytest.raises(ImageFormatError, match="more than 5 images"):
        images_of(path)


def test_legacy_many_tops_over_one_long_chain_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """n tags on the ends of n branches of one long chain walk n^2 layers: refused past a budget."""
    import imagefs.manifest as manifest

    monkeypatch.setattr(manifest, "_MAX_LEGACY_STEPS", 1000)
    ids = [f"{i:064x}" for i in range(60)]
    files: dict[str, Any] = {}
    for i, layer_id in enumerate(ids):
        files[f"{layer_id}/json"] = {"id": layer_id, **({"parent": ids[i - 1]} if i else {})}
        files[f"{layer_id}/layer.tar"] = TARS[0]
    files["repositories"] = {"r": {f"t{i}": layer_id for i, layer_id in enumerate(ids)}}
    with pytest.raises(ImageFormatError, match="implausibly long"):
        images_of(write(tmp_path / "a.tar", files))
    monkeypatch.setattr(manifest, "_MAX_LEGACY_STEPS", 60 * 61 // 2)
    assert len(images_of(write(tmp_path / "b.tar", files))) == 60


def test_not_an_image_archive(tmp_path: Path) -> None:
    path = write(tmp_path / "a.tar", {"README": b"hello", "src/main.c": b"int main;"})
    with pytest.raises(ImageFormatError, match="is a tar archive but not a container image") as err:
        images_of(path)
    assert str(err.value).startswith(path)


# --- OCI layouts built by hand ---------------------------------------------------------------------

class OCI:
    """An OCI layout assembled blob by blob."""

    def __init__(self) -> None:
        self.files: dict[str, Any] = {"oci-layout": {"imageLayoutVersion": "1.0.0"}}

    def blob(self, data: bytes | Any) -> dict[str, Any]:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.files[f"blobs/sha256/{sha(raw)}"] = raw
        return {"digest": f"sha256:{sha(raw)}", "size": len(raw)}

    def image(self, tars: list[bytes], arch: str = "amd64") -> dict[str, Any]:
        config = self.blob({"architecture": arch, "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(t) for t in tars]}})
        layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **self.blob(t)} for t in tars]
        manifest = self.blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                              "layers": layers})
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}

    def index(self, descs: list[dict[str, Any]], media_type: str | None = "application/vnd.oci.image.index.v1+json"
              ) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": 2, "manifests": descs}
        if media_type:
            doc["mediaType"] = media_type
        d = self.blob(doc)
        return {"mediaType": media_type, **d} if media_type else d

    def write(self, path: Path, top: list[dict[str, Any]]) -> str:
        self.files["index.json"] = {"schemaVersion": 2, "manifests": top}
        return write(path, self.files)


def annotated(desc: dict[str, Any], ref: str) -> dict[str, Any]:
    return {**desc, "annotations": {"org.opencontainers.image.ref.name": ref}}


def with_platform(desc: dict[str, Any], arch: str, variant: str | None = None) -> dict[str, Any]:
    plat = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
    return {**desc, "platform": plat}


def test_oci_nested_index(tmp_path: Path) -> None:
    oci = OCI()
    amd = with_platform(oci.image(TARS[:2], "amd64"), "amd64")
    arm = with_platform(oci.image(TARS[1:], "arm64"), "arm64", "v8")
    inner = oci.index([amd, arm])
    outer = oci.index([inner], media_type=None)  # recognised by its manifests list alone
    path = oci.write(tmp_path / "a.tar", [annotated(outer, "multi:1")])
    a = Archive(path)
    try:
        images = read_images(a)
        assert [(img.tags, img.platform) for img in images] == [(("multi:1",), "linux/amd64"),
                                                               (("multi:1",), "linux/arm64/v8")]
        assert layer_contents(a, images[0]) == TARS[:2]
        assert layer_contents(a, images[1]) == TARS[1:]
        assert images[1].config["architecture"] == "arm64"
    finally:
        a.close()


def test_oci_inner_ref_name_wins_and_several_top_level_manifests(tmp_path: Path) -> None:
    oci = OCI()
    inner = oci.index([annotated(oci.image(TARS[:1]), "inner:tag")])
    path = oci.write(tmp_path / "a.tar", [annotated(inner, "outer:tag"), oci.image(TARS[2:])])
    images = images_of(path)
    assert [img.tags for img in images] == [("inner:tag",), ()]


def test_docker_manifest_list_media_type_is_an_index(tmp_path: Path) -> None:
    oci = OCI()
    lst = oci.index([oci.image(TARS)], media_type="application/vnd.docker.distribution.manifest.list.v2+json")
    (img,) = images_of(oci.write(tmp_path / "a.tar", [lst]))
    assert len(img.layers) == 3


def test_oci_index_nesting_too_deep(tmp_path: Path) -> None:
    oci = OCI()
    desc = oci.image(TARS[:1])
    for _ in range(10):
        desc = oci.index([desc])
    with pytest.raises(ImageFormatError, match="nest too deep"):
        images_of(oci.write(tmp_path / "a.tar", [desc]))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda oci, top: oci.files.__setitem__("index.json", b"{"), "index.json is not valid JSON"),
    (lambda oci, top: oci.files.__setitem__("index.json", {"manifests": "x"}), "index.json has no manifests list"),
    (lambda oci, top: oci.files.__setitem__("index.json", {"manifests": [1]}), "a manifest that is not an object"),
    (lambda oci, top: oci.files.__setitem__("index.json", {"manifests": [{"digest": "nocolon"}]}),
     "bad digest 'nocolon'"),
    (lambda oci, top: oci.files.__setitem__("index.json", {"manifests": [{"digest": "sha256:../../etc"}]}),
     "bad digest"),
    (lambda oci, top: oci.files.__setitem__("index.json", {"manifests": [{"digest": "sha256:" + "0" * 64}]}),
     "which the archive does not hold"),
    (lambda oci, top: oci.files.__delitem__(next(k for k in oci.files if oci.files[k] == TARS[0])),
     "the manifest names layer blobs/sha256/"),
], ids=["index-not-json", "no-list", "not-object", "bad-digest", "path-digest", "missing-manifest", "missing-layer"])
def test_broken_oci_layouts(tmp_path: Path, mutate: Any, message: str) -> None:
    oci = OCI()
    top = [oci.image(TARS)]
    oci.files["index.json"] = {"schemaVersion": 2, "manifests": top}
    mutate(oci, top)
    path = write(tmp_path / "a.tar", oci.files)
    with pytest.raises(ImageFormatError, match=message):
        images_of(path)


def test_oci_manifest_without_layers_list(tmp_path: Path) -> None:
    oci = OCI()
    config = oci.blob({"rootfs": {"diff_ids": []}})
    manifest = oci.blob({"schemaVersion": 2, "config": config, "layers": None})
    with pytest.raises(ImageFormatError, match="OCI manifest without a layers list"):
        images_of(oci.write(tmp_path / "a.tar", [manifest]))


def test_empty_oci_index_holds_no_images(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match="holds no images"):
        images_of(OCI().write(tmp_path / "a.tar", []))


# --- normalize_ref and select_image ----------------------------------------------------------------

@pytest.mark.parametrize(("ref", "normal"), [
    ("ubuntu", "ubuntu:latest"),
    ("ubuntu:22.04", "ubuntu:22.04"),
    ("docker.io/library/ubuntu", "ubuntu:latest"),
    ("index.docker.io/library/ubuntu:1", "ubuntu:1"),
    ("docker.io/user/app", "user/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("localhost:5000/app:v2", "localhost:5000/app:v2"),
    ("quay.io/org/app@sha256:abcd", "quay.io/org/app@sha256:abcd"),
    ("localhost/app", "localhost/app:latest"),
])
def test_normalize_ref(ref: str, normal: str) -> None:
    assert normalize_ref(ref) == normal


def img(id_hex: str, *tags: str) -> Image:
    return Image("sha256:" + id_hex.ljust(64, "0"), tuple(tags), (LayerRef(b"l.tar", None, None, None),))


BUSYBOX = img("b0b0b0b0", "busybox:latest", "busybox:1.36")
PODMAN = img("0dd0dd", "localhost/myapp:latest")
DOCKERIO = img("d0c4e4", "docker.io/library/alpine:3.19")
UNTAGGED = img("7777aaaa")
IMAGES = [BUSYBOX, PODMAN, DOCKERIO, UNTAGGED]


@pytest.mark.parametrize(("ref", "want"), [
    ("busybox", BUSYBOX),
    ("busybox:latest", BUSYBOX),
    ("busybox:1.36", BUSYBOX),
    ("docker.io/library/busybox", BUSYBOX),
    ("docker.io/library/busybox:1.36", BUSYBOX),
    ("docker.io/busybox", BUSYBOX),
    ("index.docker.io/library/busybox:latest", BUSYBOX),
    ("alpine:3.19", DOCKERIO),
    ("docker.io/library/alpine:3.19", DOCKERIO),
    ("myapp", PODMAN),
    ("myapp:latest", PODMAN),
    ("localhost/myapp", PODMAN),
    ("b0b0", BUSYBOX),
    ("b0b0b0b0", BUSYBOX),
    ("sha256:b0b0b0", BUSYBOX),
    ("B0B0B0", BUSYBOX),
    ("7777", UNTAGGED),
    ("sha256:" + UNTAGGED.id[7:], UNTAGGED),
    ("1", BUSYBOX),
    ("2", PODMAN),
    ("4", UNTAGGED),
])
def test_select_image(ref: str, want: Image) -> None:
    assert select_image(IMAGES, ref, "a.tar") is want


@pytest.mark.parametrize("ref", ["\u00b2", "\u0661"])  # digits to str.isdigit, not (all) to int()
def test_select_image_by_a_non_ascii_digit_is_no_index(ref: str) -> None:
    with pytest.raises(ImageSelectError, match="no image"):
        select_image(IMAGES, ref, "a.tar")


def test_select_the_only_image_without_a_ref() -> None:
    assert select_image([PODMAN], None, "a.tar") is PODMAN


def test_several_images_and_no_ref_lists_them() -> None:
    with pytest.raises(ImageSelectError) as err:
        select_image(IMAGES, None, "a.tar")
    msg = str(err.value)
    assert "a.tar holds 4 images" in msg and "--image" in msg and "\n" not in msg
    for tag in ("busybox:latest", "busybox:1.36", "localhost/myapp:latest", "docker.io/library/alpine:3.19",
                "<untagged>", "1: ", "4: ", "7777aaaa0000"):
        assert tag in msg


def test_several_images_in_a_real_archive_list_their_tags(load: Any) -> None:
    archive, images = load(write_docker_archive, [], images=[(LAYERS[:1], ["one:1"]), (LAYERS[1:], ["two:2"])])
    with pytest.raises(ImageSelectError, match=r"holds 2 images.*1: one:1 \(.*\); 2: two:2"):
        select_image(images, None, archive.path)
    assert select_image(images, "two:2", archive.path) is images[1]
    with pytest.raises(ImageSelectError, match="no image 'one'"):
        select_image(images, "one", archive.path)  # implies one:latest, which is not there


@pytest.mark.parametrize("ref", [
    "nope", "busybox:9", "myapp:2", "alpine",  # alpine:latest is not there, only alpine:3.19
    "5", "0", "ffff", "b0b", "sha256:",
])
def test_unknown_ref(ref: str) -> None:
    with pytest.raises(ImageSelectError) as err:
        select_image(IMAGES, ref, "a.tar")
    msg = str(err.value)
    assert msg.startswith(f"no image {ref!r} in a.tar") and "busybox:latest" in msg and "\n" not in msg


def test_ambiguous_ref() -> None:
    one, two = img("abcd1111", "registry.a/app:1"), img("abcd2222", "registry.b/app:1")
    for ref in ("abcd", "app:1"):
        with pytest.raises(ImageSelectError) as err:
            select_image([one, two], ref, "a.tar")
        msg = str(err.value)
        assert msg.startswith(f"{ref!r} is ambiguous in a.tar") and "registry.a/app:1" in msg
    assert select_image([one, two], "abcd2", "a.tar") is two
    assert select_image([one, two], "registry.a/app:1", "a.tar") is one


def test_exact_tag_beats_suffix_match_and_id_prefix() -> None:
    exact, suffix = img("1111", "app:1"), img("2222", "localhost/app:1")
    assert select_image([suffix, exact], "app:1", "a.tar") is exact
    beef_tag, beef_id = img("9999", "beef:latest"), img("beef")
    assert select_image([beef_id, beef_tag], "beef", "a.tar") is beef_tag


def test_image_listed_under_two_matching_tags_is_not_ambiguous() -> None:
    both = img("3333", "localhost/app:latest", "docker.io/library/app:latest")
    assert select_image([both, BUSYBOX], "app", "a.tar") is both


def test_library_prefix_without_registry() -> None:
    assert select_image(IMAGES, "library/busybox", "a.tar") is BUSYBOX


def _index_blob(oci: OCI, doc: Any, media_type: str | None = "application/vnd.oci.image.index.v1+json"
                ) -> dict[str, Any]:
    desc = oci.blob(doc)
    return {"mediaType": media_type, **desc} if media_type else desc


@pytest.mark.parametrize("shape", ["child-not-object", "annotations-not-object", "config-not-object",
                                   "nested-manifests-not-list"])
def test_wrongly_shaped_oci_documents(tmp_path: Path, shape: str) -> None:
    oci = OCI()
    if shape == "child-not-object":
        top = [_index_blob(oci, {"schemaVersion": 2, "manifests": [1]})]
    elif shape == "annotations-not-object":
        top = [{**oci.image(TARS[:1]), "annotations": ["org.opencontainers.image.ref.name"]}]
    elif shape == "config-not-object":
        top = [oci.blob({"schemaVersion": 2, "config": "sha256:abc", "layers": []})]
    else:
        top = [_index_blob(oci, {"schemaVersion": 2, "manifests": "not a list"})]
    with pytest.raises(ImageFormatError):
        images_of(oci.write(tmp_path / "a.tar", top))


def test_repotags_as_a_string_does_not_become_letters(tmp_path: Path) -> None:
    manifest = [{"Config": "config.json", "Layers": [], "RepoTags": "app:1"}]
    path = write(tmp_path / "a.tar", docker_files(manifest, b"{}"))
    try:
        (image,) = images_of(path)
    except ImageFormatError:
        return  # refusing it is fine too
    assert image.tags in ((), ("app:1",))
