"""``imagefs commit DIR --archive A -o OUT -t TAG``: the scratch dir as a new top layer.

Checked: the new archive's manifest.json and config (diff_ids, history, RepoTags), that every
layer file matches its diff_id, that the new archive shows exactly the tree the overlay
showed (library walk, and listing.py of real mounts), that the original archive is
byte-identical afterwards, and `podman load` when podman is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import builder as b
import overlay_support as ovs
from conftest import CORPUS_DIR, TIMEOUT, Mounter, assert_one_line_error, run_cli
from imagefs import BuildOptions, ImageTree
from imagefs.overlay import Found, Overlay

BINARY = bytes(range(256))


# -- helpers ---------------------------------------------------------------------------------------


def sha256_file(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def view(ov: Overlay) -> dict[bytes, tuple]:
    """The merged tree: path -> (type, mode, uid, gid, content/target/rdev, xattrs, hard-link group)."""
    out: dict[bytes, tuple] = {}
    ids: dict[Any, list[bytes]] = {}

    def walk(d: Found) -> None:
        for _name, child in ov.listdir(d):
            st = ov.stat(child)
            if stat.S_ISREG(st.mode):
                if child.upper:
                    what: Any = Path(os.fsdecode(ov.up(child.path))).read_bytes()
                    ids.setdefault(("u", os.lstat(ov.up(child.path)).st_ino), []).append(child.path)
                else:
                    what = ov.read_lower(child, 0, 1 << 31)
                    ids.setdefault(("l", child.lower), []).append(child.path)
            elif stat.S_ISLNK(st.mode):
                what = ov.readlink(child)
            elif stat.S_ISCHR(st.mode) or stat.S_ISBLK(st.mode):
                what = st.rdev
            else:
                what = None
            out[child.path] = (stat.S_IFMT(st.mode), stat.S_IMODE(st.mode), st.uid, st.gid, what,
                               tuple(sorted(ov.xattrs(child).items())))
            if stat.S_ISDIR(st.mode):
                walk(child)

    walk(ov.root())
    group = {p: min(g) for g in ids.values() if len(g) > 1 for p in g}
    return {p: v + (group.get(p),) for p, v in out.items()}


def image_view(archive: Path, tmp_path: Path, image: str | None = None) -> dict[bytes, tuple]:
    empty = tmp_path / f"empty-{len(list(tmp_path.iterdir()))}"
    empty.mkdir()
    with ImageTree.open(str(archive), BuildOptions(use_cache=False, image=image)) as tree:
        return view(Overlay(tree, str(empty)))


class Changes:
    """An Overlay over ``archive`` in ``scratch``, changed through the library (no FUSE)."""

    def __init__(self, archive: Path, scratch: Path, image: str | None = None, layer: int | None = None) -> None:
        scratch.mkdir(exist_ok=True)
        self.tree = ImageTree.open(str(archive), BuildOptions(use_cache=False, image=image, layer=layer))
        self.ov = Overlay(self.tree, str(scratch))

    def f(self, path: str | bytes) -> Found:
        p = path.encode() if isinstance(path, str) else path
        found = self.ov.resolve(p)
        assert found is not None, path
        return found

    def pn(self, path: str | bytes) -> tuple[Found, bytes]:
        p = path.encode() if isinstance(path, str) else path
        head, _, name = p.rpartition(b"/")
        return self.f(head), name

    def create(self, path: str | bytes, data: bytes, mode: int = 0o644) -> None:
        fd, _ = self.ov.create(*self.pn(path), stat.S_IFREG | mode, os.O_WRONLY, 0, 0)
        os.write(fd, data)
        os.close(fd)

    def append(self, path: str, data: bytes) -> None:
        fd = self.ov.open_upper(self.f(path), os.O_WRONLY | os.O_APPEND)
        os.write(fd, data)
        os.close(fd)

    def rm_r(self, path: str) -> None:
        f = self.f(path)
        if self.ov.is_dir(f):
            for name, _ in list(self.ov.listdir(f)):
                self.rm_r(f"{path}/{name.decode()}")
            self.ov.rmdir(*self.pn(path))
        else:
            self.ov.unlink(*self.pn(path))

    def apply_standard_changes(self) -> None:
        self.append("etc/hostname", b"patched\n")
        self.create("etc/new.conf", b"new\n", mode=0o600)
        self.ov.setattr(self.f("usr/bin/tool"), mode=0o104755)
        self.ov.setattr(self.f("etc/conf"), uid=123, gid=456)
        self.ov.setxattr(self.f("etc/single"), b"user.bin", BINARY)
        self.ov.removexattr(self.f("etc/conf"), b"user.origin")
        self.rm_r("usr/share/doc")
        self.ov.mkdir(*self.pn("usr/share/doc"), stat.S_IFDIR | 0o755, 0, 0)
        self.create("usr/share/doc/NEWS", b"news\n")
        self.rm_r("var/cache")
        self.ov.unlink(*self.pn("usr/lib/libfoo.so"))
        self.ov.symlink(*self.pn("usr/lib/libfoo.so"), b"libfoo.so.2", 0, 0)
        self.append("etc/hl-a", b"more\n")  # a hard-linked image file: both names
        self.ov.link(self.f("etc/single"), *self.pn("etc/single-link"))
        self.ov.mknod(*self.pn("run/fifo2"), stat.S_IFIFO | 0o640, 0, 0, 0)
        self.ov.mknod(*self.pn("run/zero"), stat.S_IFCHR | 0o666, os.makedev(1, 5), 0, 0)
        self.ov.rmdir(*self.pn("srv"))
        self.create("srv", b"srv is a file now\n")
        self.ov.unlink(*self.pn("opt/app/main.py"))
        self.ov.rename(*self.pn("opt/app/v2"), *self.pn("opt/v2"))
        self.create(b"caf\xe9", b"a name that is not UTF-8\n")
        self.create("a" * 200, b"long name\n")

    def close(self) -> None:
        self.tree.close()


def standard_changes(archive: Path, scratch: Path) -> dict[bytes, tuple]:
    """`Changes.apply_standard_changes` to ``archive`` in ``scratch``; the tree the overlay then shows."""
    ch = Changes(archive, scratch)
    try:
        ch.apply_standard_changes()
        return view(ch.ov)
    finally:
        ch.close()


def commit_cli(cli: list[str], scratch: Path, archive: Path, out: Path, *extra: str) -> str:
    r = run_cli(cli, "commit", scratch, "--archive", archive, "-o", out, *extra)
    assert r.returncode == 0, f"imagefs commit failed ({r.returncode}): {r.stderr}"
    assert r.stdout.startswith(f"{out}: sha256:"), r.stdout
    return r.stdout.strip().rsplit(" ", 1)[1]


def read_archive(path: Path) -> tuple[list[dict], dict[str, bytes]]:
    with tarfile.open(path) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]
    return json.loads(members["manifest.json"]), members


@pytest.fixture
def base(tmp_path: Path) -> Path:
    archive = tmp_path / "base.tar"
    b.write_docker_archive(str(archive), ovs.BASE_LAYERS, tags=["test:base"])
    return archive


# -- the archive ------------------------------------------------------------------------------------


def test_manifest_config_and_layers(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    before = sha256_file(base)
    _old_manifest, old_members = read_archive(base)
    old_cfg = json.loads(old_members[_old_manifest[0]["Config"]])
    standard_changes(base, tmp_path / "scratch")
    out = tmp_path / "out.tar"
    image_id = commit_cli(imagefs_bin, tmp_path / "scratch", base, out, "-t", "test:patched", "-m", "my change")
    assert sha256_file(base) == before, "the original archive was changed"

    manifest, members = read_archive(out)
    assert len(manifest) == 1
    entry = manifest[0]
    assert entry["RepoTags"] == ["test:patched"]
    cfg_raw = members[entry["Config"]]
    assert image_id == "sha256:" + hashlib.sha256(cfg_raw).hexdigest()
    assert entry["Config"] == hashlib.sha256(cfg_raw).hexdigest() + ".json"
    cfg = json.loads(cfg_raw)
    diff_ids = cfg["rootfs"]["diff_ids"]
    assert cfg["rootfs"]["type"] == "layers"
    assert diff_ids[:-1] == old_cfg["rootfs"]["diff_ids"], "the original layers come first, unchanged"
    assert len(diff_ids) == 3 and len(entry["Layers"]) == 3
    for diff_id, name in zip(diff_ids, entry["Layers"]):
        assert name in members, f"{name} is named by manifest.json but missing"
        assert "sha256:" + hashlib.sha256(members[name]).hexdigest() == diff_id, f"{name} does not match its diff_id"
    assert cfg["history"][:-1] == old_cfg["history"]
    new = cfg["history"][-1]
    assert new["created_by"] == "my change" and not new.get("empty_layer")
    assert len([h for h in cfg["history"] if not h.get("empty_layer")]) == len(diff_ids)
    assert (cfg["architecture"], cfg["os"]) == (old_cfg["architecture"], old_cfg["os"])
    assert cfg.get("created")


def test_the_new_layer_is_the_changeset(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    standard_changes(base, tmp_path / "scratch")
    out = tmp_path / "out.tar"
    commit_cli(imagefs_bin, tmp_path / "scratch", base, out)
    manifest, members = read_archive(out)
    top = members[manifest[0]["Layers"][-1]]
    with tarfile.open(fileobj=io.BytesIO(top)) as tf:
        infos = tf.getmembers()
    by = {ti.name: ti for ti in infos}
    names = [ti.name for ti in infos]
    for n in names:
        assert not n.startswith(("/", "./", "../")) and "/../" not in n
        parent = n.rpartition("/")[0]
        if parent:
            assert parent in by and names.index(parent) < names.index(n), f"{n} comes before its directory"
    assert "usr/share/.wh.doc" not in by and "usr/share/doc/.wh..wh..opq" in by
    assert "var/.wh.cache" in by and "opt/app/.wh.main.py" in by and "opt/app/.wh.v2" in by
    assert by["usr/share/doc/NEWS"].isreg()
    assert by["etc/new.conf"].mode & 0o777 == 0o600
    assert by["usr/bin/tool"].mode == 0o4755
    assert (by["etc/conf"].uid, by["etc/conf"].gid) == (123, 456)
    assert by["etc/single"].pax_headers.get("SCHILY.xattr.user.bin") is not None
    links = {n for n in ("etc/hl-a", "etc/hl-b") if by[n].islnk()}
    assert len(links) == 1, "one name of the hard-linked pair is stored as a link to the other"
    assert by["etc/single-link"].islnk() or by["etc/single"].islnk()
    assert by["run/fifo2"].isfifo() and by["run/zero"].ischr() and (by["run/zero"].devmajor, by["run/zero"].devminor) == (1, 5)
    assert by["usr/lib/libfoo.so"].issym() and by["usr/lib/libfoo.so"].linkname == "libfoo.so.2"
    assert not any(ovs.TMP_PREFIX in n for n in names)


def test_the_new_archive_shows_the_overlay_tree(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    want = standard_changes(base, tmp_path / "scratch")
    out = tmp_path / "out.tar"
    commit_cli(imagefs_bin, tmp_path / "scratch", base, out, "-t", "test:patched")
    got = image_view(out, tmp_path)
    assert got.keys() == want.keys(), (sorted(set(want) - set(got)), sorted(set(got) - set(want)))
    diffs = {p: (want[p], got[p]) for p in want if want[p] != got[p]}
    assert not diffs


def test_a_dir_made_over_an_earlier_layer_commits_over_that_layer(base: Path, tmp_path: Path,
                                                                   imagefs_bin: list[str]) -> None:
    """`mount --layer 1 --overlay DIR`: the new image is layer 1 plus DIR, the tree the
    overlay showed, not the whole image plus DIR."""
    ch = Changes(base, tmp_path / "scratch", layer=1)
    try:
        ch.create("etc/new.conf", b"new\n")
        want = view(ch.ov)
    finally:
        ch.close()
    out = tmp_path / "out.tar"
    commit_cli(imagefs_bin, tmp_path / "scratch", base, out)
    assert image_view(out, tmp_path) == want
    manifest, members = read_archive(out)
    assert len(manifest[0]["Layers"]) == 2
    config = json.loads(members[manifest[0]["Config"]])
    non_empty = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(non_empty) == len(config["rootfs"]["diff_ids"]) == 2  # what loaders check
    assert not any(n.endswith(".tar") and b".wh..wh..imagefs-base" in d for n, d in members.items())


def test_commit_of_a_dir_made_over_another_image_is_refused(base: Path, tmp_path: Path,
                                                            imagefs_bin: list[str]) -> None:
    Changes(base, tmp_path / "scratch").close()
    other = tmp_path / "other.tar"
    b.write_docker_archive(str(other), [[b.file("x", b"other")]])
    r = run_cli(imagefs_bin, "commit", tmp_path / "scratch", "--archive", other, "-o", tmp_path / "out.tar")
    assert "holds changes to image" in assert_one_line_error(r)
    assert not (tmp_path / "out.tar").exists()


def test_commit_is_deterministic_and_ignores_temporaries(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    standard_changes(base, tmp_path / "scratch")
    out1, out2, out3 = tmp_path / "a.tar", tmp_path / "b.tar", tmp_path / "c.tar"
    commit_cli(imagefs_bin, tmp_path / "scratch", base, out1)
    commit_cli(imagefs_bin, tmp_path / "scratch", base, out2)
    (m1, _), (m2, _) = read_archive(out1), read_archive(out2)
    assert m1[0]["Layers"] == m2[0]["Layers"], "the same DIR must give the same layer bytes"
    assert m1[0]["RepoTags"] == []
    (tmp_path / "scratch" / (ovs.TMP_PREFIX + "1.2")).write_bytes(b"a half-made copy")
    (tmp_path / "scratch" / "etc" / (ovs.TMP_PREFIX + "1.3")).mkdir()
    (tmp_path / "scratch" / "etc" / (ovs.TMP_PREFIX + "1.3") / "inside").write_bytes(b"x")
    commit_cli(imagefs_bin, tmp_path / "scratch", base, out3)
    m3, c3 = read_archive(out3)
    with tarfile.open(fileobj=io.BytesIO(c3[m3[0]["Layers"][-1]])) as tf:
        names = tf.getnames()
    assert names and not [n for n in names if "imagefs-tmp" in n]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".imagefs-commit-")], "commit left its work dir"


@pytest.mark.parametrize("writer", ["oci-gzip", "docker25", "legacy"])
def test_commit_of_other_archive_formats(writer: str, tmp_path: Path, imagefs_bin: list[str]) -> None:
    archive = tmp_path / "base.tar"
    if writer == "oci-gzip":
        b.write_oci_archive(str(archive), ovs.BASE_LAYERS, compression="gzip")
    elif writer == "docker25":
        b.write_docker25_archive(str(archive), ovs.BASE_LAYERS)
    else:
        b.write_legacy_archive(str(archive), ovs.BASE_LAYERS)
    want = standard_changes(archive, tmp_path / "scratch")
    out = tmp_path / "out.tar"
    commit_cli(imagefs_bin, tmp_path / "scratch", archive, out, "-t", "x:y")
    manifest, members = read_archive(out)
    for diff_id, name in zip(json.loads(members[manifest[0]["Config"]])["rootfs"]["diff_ids"], manifest[0]["Layers"]):
        assert "sha256:" + hashlib.sha256(members[name]).hexdigest() == diff_id
    assert image_view(out, tmp_path) == want


def test_commit_of_one_image_of_several(tmp_path: Path, imagefs_bin: list[str]) -> None:
    archive = tmp_path / "multi.tar"
    other = [[b.dir("etc"), b.file("etc/other", b"other image\n")]]
    b.write_docker_archive(str(archive), [], images=[(ovs.BASE_LAYERS, ["a:1"]), (other, ["b:1"])])
    scratch = tmp_path / "scratch"
    ch = Changes(archive, scratch, image="a:1")
    ch.append("etc/hostname", b"x\n")
    want = view(ch.ov)
    ch.close()
    r = run_cli(imagefs_bin, "commit", scratch, "--archive", archive, "-o", tmp_path / "out.tar")
    assert r.returncode == 1
    assert_one_line_error(r)
    assert not (tmp_path / "out.tar").exists()
    commit_cli(imagefs_bin, scratch, archive, tmp_path / "out.tar", "--image", "a:1", "-t", "a:2")
    assert image_view(tmp_path / "out.tar", tmp_path) == want


def test_commit_errors_are_one_line(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    r = run_cli(imagefs_bin, "commit", tmp_path / "nothing", "--archive", base, "-o", tmp_path / "out.tar")
    assert r.returncode == 1
    assert_one_line_error(r)
    (tmp_path / "scratch").mkdir()
    r = run_cli(imagefs_bin, "commit", tmp_path / "scratch", "--archive", tmp_path / "missing.tar",
                "-o", tmp_path / "out.tar")
    assert r.returncode == 1
    assert_one_line_error(r)
    assert not (tmp_path / "out.tar").exists()
    r = run_cli(imagefs_bin, "commit", base, "--archive", base, "-o", tmp_path / "out.tar")
    assert "is not a directory" in assert_one_line_error(r)


@pytest.mark.parametrize("tag", ["BAD TAG!!", "path/Upper:x", "name:", "a..b:c", "x:" + "t" * 129, ":tag",
                                 "foo:t\u00e4g", "foo:\u0661\u0662", "a" * 240])
def test_commit_refuses_a_tag_loaders_refuse(base: Path, tmp_path: Path, imagefs_bin: list[str], tag: str) -> None:
    (tmp_path / "scratch").mkdir()
    r = run_cli(imagefs_bin, "commit", tmp_path / "scratch", "--archive", base, "-o", tmp_path / "out.tar", "-t", tag)
    assert "not an image name docker or podman would load" in assert_one_line_error(r)
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("tag", ["x", "test:patched", "localhost/a/b_c__d-e:v1.0", "registry.example:5000/x:1",
                                 "x:" + "t" * 128])
def test_commit_takes_the_tags_loaders_take(tag: str) -> None:
    from imagefs.commit import check_tag

    check_tag(tag)


def test_commit_refuses_a_layer_that_does_not_match_its_diff_id(base: Path, tmp_path: Path,
                                                               imagefs_bin: list[str]) -> None:
    """commit copies every layer anyway, hashing it: a damaged one must not pass into a new image."""
    (tmp_path / "scratch").mkdir()
    raw = bytearray(base.read_bytes())
    at = raw.index(b"#!/bin/sh\necho tool")  # usr/bin/tool, in the first layer
    raw[at] ^= 0x20
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(raw))
    r = run_cli(imagefs_bin, "commit", tmp_path / "scratch", "--archive", damaged, "-o", tmp_path / "out.tar")
    assert "does not match its diff_id" in assert_one_line_error(r)
    assert not (tmp_path / "out.tar").exists()


def test_commit_with_a_socket_in_the_dir(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    scratch = tmp_path / "scratch"
    ch = Changes(base, scratch)
    ch.append("etc/hostname", b"x\n")
    ch.close()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(scratch / "etc" / "sock"))
    s.close()
    out = tmp_path / "out.tar"
    r = run_cli(imagefs_bin, "commit", scratch, "--archive", base, "-o", out)
    assert "Traceback" not in r.stderr
    assert r.returncode == 0, r.stderr
    assert "etc/sock is a socket, which a layer cannot hold: left out of the image" in r.stderr
    tree = image_view(out, tmp_path)
    assert tree[b"etc/hostname"][4] == b"layer2\nx\n"


def test_commit_of_a_committed_image(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    standard_changes(base, tmp_path / "s1")
    first = tmp_path / "first.tar"
    commit_cli(imagefs_bin, tmp_path / "s1", base, first, "-t", "t:1")
    ch = Changes(first, tmp_path / "s2")
    ch.rm_r("usr/share/doc")  # an opaque directory of the layer below
    ch.append("etc/hostname", b"second\n")
    ch.ov.unlink(*ch.pn("etc/hl-b"))
    want = view(ch.ov)
    ch.close()
    second = tmp_path / "second.tar"
    commit_cli(imagefs_bin, tmp_path / "s2", first, second, "-t", "t:2")
    manifest, members = read_archive(second)
    assert len(manifest[0]["Layers"]) == 4
    assert len(json.loads(members[manifest[0]["Config"]])["history"]) == 4
    assert image_view(second, tmp_path) == want


# -- through real mounts -------------------------------------------------------------------------------


CHANGES_SH = r"""
set -e
echo patched >> etc/hostname
echo new > etc/new.conf && chmod 600 etc/new.conf
chmod u+s usr/bin/tool && chown 123:456 etc/conf
rm -rf usr/share/doc && mkdir usr/share/doc && echo news > usr/share/doc/NEWS
rm -rf var/cache opt/app/main.py
ln -sfn libfoo.so.2 usr/lib/libfoo.so
echo more >> etc/hl-a
ln etc/single etc/single-link
mkfifo run/fifo2 && mknod run/zero c 1 5
rmdir srv && echo file > srv
mv opt/app/v2 opt/v2
python3 -c 'import os; os.setxattr("etc/single", "user.bin", bytes(range(256))); os.setxattr("usr", "user.d", b"x")'
mkdir -p new/deep/dir && cp -a etc new/deep/dir/ && truncate -s 5000000 new/deep/sparse
"""


@pytest.mark.fuse
def test_committed_archive_mounts_to_the_overlay_view(base: Path, tmp_path: Path, mounted: Mounter,
                                                       imagefs_bin: list[str]) -> None:
    listing_py = CORPUS_DIR / "listing.py"
    if not listing_py.is_file():
        pytest.skip(f"{listing_py} is missing")
    before = sha256_file(base)
    scratch = tmp_path / "scratch"
    m = mounted(base, "--overlay", str(scratch))
    r = subprocess.run(["bash", "-c", CHANGES_SH], cwd=m.mountpoint, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    overlay_tree = ovs.listing(listing_py, m.mountpoint)
    assert mounted.run("umount", m.mountpoint).returncode == 0

    out = tmp_path / "out.tar"
    commit_cli(imagefs_bin, scratch, base, out, "-t", "test:patched")
    assert sha256_file(base) == before, "the original archive was changed"
    m2 = mounted(out)
    committed_tree = ovs.listing(listing_py, m2.mountpoint)
    assert committed_tree == overlay_tree, ovs.diff_lines(overlay_tree, committed_tree, "overlay", "committed")


@pytest.mark.fuse
def test_a_dir_serves_one_mount_and_commit_waits_for_its_unmount(base: Path, tmp_path: Path,
                                                                   mounted: Mounter) -> None:
    """Two mounts writing one DIR would each keep their own idea of it, and a commit
    while mounted could miss changes not yet written."""
    scratch = tmp_path / "scratch"
    m = mounted(base, "--overlay", str(scratch))
    (m.mountpoint / "new").write_bytes(b"n")
    mp2 = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", mounted.cache_dir, "--overlay", scratch, base, mp2, mountpoint=mp2)
    assert assert_one_line_error(r, mp2) == f"overlay directory {scratch} is in use by another mount"
    r = mounted.run("commit", scratch, "--archive", base, "-o", tmp_path / "out.tar")
    assert "in use by a mount: unmount it first" in assert_one_line_error(r)
    assert mounted.run("umount", m.mountpoint).returncode == 0
    r = mounted.run("commit", scratch, "--archive", base, "-o", tmp_path / "out.tar")
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_podman_loads_the_committed_archive(base: Path, tmp_path: Path, imagefs_bin: list[str]) -> None:
    standard_changes(base, tmp_path / "scratch")
    out = tmp_path / "out.tar"
    tag = f"localhost/imagefs-commit-test:{os.getpid()}"
    commit_cli(imagefs_bin, tmp_path / "scratch", base, out, "-t", tag)
    try:
        r = subprocess.run(["podman", "load", "-i", str(out)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0 and len(json.loads(r.stdout)[0]["RootFS"]["Layers"]) == 3
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, timeout=TIMEOUT)
