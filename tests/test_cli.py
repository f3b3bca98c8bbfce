"""The command line: bad input gives one line and a non-zero exit, never a traceback or a mount.

Anything that may mount runs as a subprocess through `conftest.Mounter`
(whose finalizer removes whatever got mounted); commands that cannot mount
(``--help``, ``images``) run in-process through click's `CliRunner`.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner, Result

import builder as b
import cli
from conftest import Mounter, assert_one_line_error, cli_after, run_cli

GOOD_LAYERS = [[b.dir("etc"), b.file("etc/hello", b"hello\n"), b.file("etc/blob", bytes(range(256)) * 64)]]


# -- bad archives ----------------------------------------------------------------


def _good(path: Path) -> Path:
    b.write_docker_archive(str(path), GOOD_LAYERS)
    return path


def _missing(tmp: Path) -> Path:
    return tmp / "no-such-archive.tar"


def _directory(tmp: Path) -> Path:
    (tmp / "a-directory").mkdir()
    return tmp / "a-directory"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.tar").write_bytes(b"")
    return tmp / "empty.tar"


def _not_a_tar(tmp: Path) -> Path:
    (tmp / "text.tar").write_bytes(b"this is not a tar archive\n" * 100)
    return tmp / "text.tar"


def _zeros(tmp: Path) -> Path:
    (tmp / "zeros.tar").write_bytes(bytes(10240))  # an empty tar: just the end-of-archive blocks
    return tmp / "zeros.tar"


def _tar_not_image(tmp: Path) -> Path:
    b.write_tar(str(tmp / "plain.tar"), [("README", b"hello\n"), ("src/main.c", b"int main;\n")])
    return tmp / "plain.tar"


def _truncated_in_layer(tmp: Path) -> Path:
    """A valid two-layer archive cut in the middle of the second layer's data."""
    full = tmp / "full.tar"
    layer2 = [b.file("data/big", os.urandom(256 * 1024))]
    b.write_docker_archive(str(full), GOOD_LAYERS + [layer2])
    with tarfile.open(full) as tf:
        big = max((m for m in tf.getmembers() if m.name.endswith(".tar")), key=lambda m: m.size)
        cut = big.offset_data + big.size // 2
    (tmp / "truncated.tar").write_bytes(full.read_bytes()[:cut])
    return tmp / "truncated.tar"


def _layer_truncated(tmp: Path) -> Path:
    """A complete outer archive whose layer tar is cut in the middle of a member's data."""
    layer = b.layer_tar([b.file("a", os.urandom(64 * 1024)), b.file("b", b"after")])
    b.write_docker_archive(str(tmp / "bad-layer.tar"), [layer[:32 * 1024]])
    return tmp / "bad-layer.tar"


def _missing_layer(tmp: Path) -> Path:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    manifest = [{"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["0" * 64 + ".tar"]}]
    b.write_tar(str(tmp / "nolayer.tar"), [("manifest.json", json.dumps(manifest).encode()), ("config.json", config)])
    return tmp / "nolayer.tar"


def _bad_manifest_json(tmp: Path) -> Path:
    b.write_tar(str(tmp / "badjson.tar"), [("manifest.json", b"[{not json")])
    return tmp / "badjson.tar"



BAD_ARCHIVES: dict[str, Callable[[Path], Path]] = {
    "missing": _missing,
    "directory": _directory,
    "empty": _empty,
    "not-a-tar": _not_a_tar,
    "only-zero-blocks": _zeros,
    "tar-not-image": _tar_not_image,
    "truncated-in-layer": _truncated_in_layer,
    "layer-tar-truncated": _layer_truncated,
    "manifest-missing-layer": _missing_layer,
    "manifest-not-json": _bad_manifest_json,
}


@pytest.mark.fuse
@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_bad_archive(mounted: Mounter, tmp_path: Path, case: str) -> None:
    archive = BAD_ARCHIVES[case](tmp_path)
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", archive, mp, mountpoint=mp)
    assert_one_line_error(r, mp)
    assert os.listdir(mp) == []


@pytest.mark.parametrize("case", ["truncated-in-layer", "layer-tar-truncated"])
def test_error_shows_member_names_as_text(tmp_path: Path, imagefs_bin: list[str], case: str) -> None:
    r = run_cli(imagefs_bin, "index", "--cache-dir", tmp_path / "cache", BAD_ARCHIVES[case](tmp_path))
    msg = assert_one_line_error(r)
    assert "b'" not in msg and 'b"' not in msg, msg


def _drop_dac_override() -> None:
    """In the child: lose root's power to read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # PR_CAPBSET_DROP = 24; the capability is gone after exec
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_drop_dac_override() -> bool:
    try:
        r = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True,
                           preexec_fn=_drop_dac_override, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    eff = next((int(line.split()[1], 16) for line in r.stdout.splitlines() if line.startswith("CapEff:")), None)
    return eff is not None and not eff & 0b110


@pytest.mark.fuse
def test_unreadable_archive(mounted: Mounter, tmp_path: Path) -> None:
    archive = _good(tmp_path / "secret.tar")
    archive.chmod(0o000)
    mp = mounted.new_mountpoint()
    mounted.track(mp)
    kw: dict[str, object] = {}
    if os.geteuid() == 0:
        # root reads mode-000 files; run imagefs without the capabilities that allow it
        if not _can_drop_dac_override():
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE, so a mode-000 file is readable")
        kw["preexec_fn"] = _drop_dac_override
    r = run_cli(mounted.cli, "mount", "--cache-dir", tmp_path / "cache", archive, mp, **kw)
    msg = assert_one_line_error(r, mp)
    assert "ermission denied" in msg


# -- bad mountpoints and options ------------------------------------------------------


@pytest.mark.fuse
def test_mountpoint_missing(mounted: Mounter, tmp_path: Path) -> None:
    archive = _good(tmp_path / "good.tar")
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", archive, tmp_path / "nope", mountpoint=tmp_path / "nope")
    msg = assert_one_line_error(r)
    assert "does not exist" in msg
    assert not (tmp_path / "nope").exists()


@pytest.mark.fuse
def test_mountpoint_not_a_directory(mounted: Mounter, tmp_path: Path) -> None:
    archive = _good(tmp_path / "good.tar")
    target = tmp_path / "a-file"
    target.write_bytes(b"x")
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", archive, target, mountpoint=target)
    assert_one_line_error(r, target)


@pytest.mark.fuse
def test_mountpoint_already_a_mount(mounted: Mounter, tmp_path: Path) -> None:
    archive = _good(tmp_path / "good.tar")
    first = mounted(archive)
    pids = first.daemon_pids()
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", archive, first.mountpoint)
    msg = assert_one_line_error(r)
    assert "already" in msg
    # the first mount is untouched
    assert first.daemon_pids() == pids
    assert (first.mountpoint / "etc/hello").read_bytes() == b"hello\n"


@pytest.mark.fuse
@pytest.mark.parametrize("opt", ["rw", "suid", "dev", "ro,rw", "allow_other,rw"])
def test_writable_or_privileged_options_refused(mounted: Mounter, tmp_path: Path, opt: str) -> None:
    archive = _good(tmp_path / "good.tar")
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", "-o", opt, archive, mp, mountpoint=mp)
    msg = assert_one_line_error(r, mp)
    assert "read-only" in msg


@pytest.mark.fuse
def test_daemon_side_error_is_reported(mounted: Mounter, tmp_path: Path) -> None:
    archive = _good(tmp_path / "good.tar")
    mp = mounted.new_mountpoint()
    # passes the CLI's checks; libfuse refuses it inside the daemon
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", "-o", "no_such_fuse_option", archive, mp,
                    mountpoint=mp)
    msg = assert_one_line_error(r, mp)
    assert "did not become ready" not in msg
    # libfuse's own reason, which it writes to the daemon's stderr
    assert msg == f"cannot mount {mp}: fuse: unknown option(s): `-o no_such_fuse_option'"


@pytest.mark.fuse
@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_failed_fuse_handshake_is_an_error(mounted: Mounter, tmp_path: Path, foreground: bool) -> None:
    """libfuse ends the session when the kernel's INIT goes wrong, after the mount
    exists: that must not look like success (exit 0) or a silent daemon death.
    Made to happen here by keeping max_read from reaching pyfuse3's INIT."""
    archive = _good(tmp_path / "good.tar")
    mp = mounted.new_mountpoint()
    mounted.cli = cli_after("import imagefs.mount as m; m.MountOptions.max_read = property(lambda self: 0)")
    args = ["mount", "--cache-dir", tmp_path / "cache", "-o", "max_read=65536", archive, mp]
    r = mounted.run(*args[:1], *(["-f"] if foreground else []), *args[1:], mountpoint=mp)
    if foreground:  # libfuse's own reason reaches the terminal first
        libfuse, _, ours = r.stderr.partition("\n")
        assert libfuse.startswith("fuse: error: init()"), r.stderr
        r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout, ours)
    msg = assert_one_line_error(r, mp)
    assert "before it was ready" in msg and "handshake" in msg


@pytest.mark.fuse
def test_an_unwritable_log_file_is_one_error(mounted: Mounter, tmp_path: Path) -> None:
    archive = _good(tmp_path / "good.tar")
    mp = mounted.new_mountpoint()
    log = tmp_path / "no" / "such" / "dir" / "log"
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", "--log-file", log, archive, mp, mountpoint=mp)
    assert assert_one_line_error(r, mp) == f"cannot write the log file {log}: No such file or directory"


@pytest.mark.fuse
def test_a_relative_log_file_is_where_the_user_is(mounted: Mounter, tmp_path: Path) -> None:
    """The daemon changes to / before it opens its log: the name must be resolved first."""
    archive = _good(tmp_path / "good.tar")
    mp = mounted.new_mountpoint()
    name = f"imagefs-test-{os.getpid()}.log"
    mounted.track(mp)
    r = run_cli(mounted.cli, "mount", "--debug", "--cache-dir", tmp_path / "cache", "--log-file", name, archive, mp,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / name).stat().st_size > 0  # --debug: the daemon wrote there
    assert not os.path.exists("/" + name)


@pytest.mark.fuse
def test_layer_out_of_range(mounted: Mounter, tmp_path: Path) -> None:
    archive = _good(tmp_path / "good.tar")
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", "--layer", "5", archive, mp, mountpoint=mp)
    msg = assert_one_line_error(r, mp)
    assert "--layer 5" in msg


@pytest.mark.fuse
def test_umount_of_something_not_mounted(mounted: Mounter, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    msg = assert_one_line_error(mounted.run("umount", tmp_path / "plain"))
    assert "not mounted" in msg


# -- choosing the image --------------------------------------------------------------


def _multi(tmp: Path) -> Path:
    path = tmp / "multi.tar"
    b.write_docker_archive(str(path), [], images=[
        ([[b.file("which", b"first\n")]], ["localhost/app:latest", "localhost/app:v1"]),
        ([[b.file("which", b"second\n")]], ["example.com/app:latest"]),
        ([[b.file("which", b"third\n")]], ["tools:2.0"]),
    ])
    return path


@pytest.mark.fuse
def test_several_images_and_no_image(mounted: Mounter, tmp_path: Path) -> None:
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", _multi(tmp_path), mp, mountpoint=mp)
    msg = assert_one_line_error(r, mp)
    assert "--image" in msg
    for tag in ("localhost/app:latest", "localhost/app:v1", "example.com/app:latest", "tools:2.0"):
        assert tag in msg


@pytest.mark.fuse
@pytest.mark.parametrize("ref, words", [
    ("app", ["ambiguous", "localhost/app:latest", "example.com/app:latest"]),
    ("app:latest", ["ambiguous"]),
    ("nothere", ["no image", "tools:2.0"]),
    ("app:v9", ["no image"]),
    ("9", ["no image"]),
])
def test_ambiguous_or_unknown_image(mounted: Mounter, tmp_path: Path, ref: str, words: list[str]) -> None:
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", tmp_path / "cache", "--image", ref, _multi(tmp_path), mp, mountpoint=mp)
    msg = assert_one_line_error(r, mp)
    for w in words:
        assert w in msg


@pytest.mark.fuse
@pytest.mark.parametrize("ref, content", [
    ("localhost/app:v1", b"first\n"),
    ("example.com/app", b"second\n"),
    ("docker.io/library/tools:2.0", b"third\n"),
])
def test_image_selected(mounted: Mounter, tmp_path: Path, ref: str, content: bytes) -> None:
    m = mounted(_multi(tmp_path), image=ref)
    assert (m.mountpoint / "which").read_bytes() == content


# -- commands that do not mount: in-process ------------------------------------------


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def test_images_table(tmp_path: Path) -> None:
    archive = _multi(tmp_path)
    r = _invoke("images", str(archive))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["#", "ID", "LAYERS", "SIZE", "TAGS"]
    assert len(lines) == 4
    assert lines[1].split()[0] == "1" and lines[1].endswith("localhost/app:latest, localhost/app:v1")
    assert lines[2].split()[0] == "2" and lines[2].endswith("example.com/app:latest")
    assert lines[3].split()[0] == "3" and lines[3].endswith("tools:2.0")


def test_images_table_shows_platforms_where_there_are_some(tmp_path: Path) -> None:
    """A multi-platform OCI archive lists one image per platform, tags alike."""
    from test_manifest import OCI, TARS, annotated, with_platform

    oci = OCI()
    amd = with_platform(oci.image(TARS[:2], "amd64"), "amd64")
    arm = with_platform(oci.image(TARS[1:], "arm64"), "arm64", "v8")
    path = oci.write(tmp_path / "a.tar", [annotated(oci.index([amd, arm]), "multi:1")])
    lines = _invoke("images", str(path)).stdout.splitlines()
    assert lines[0].split() == ["#", "ID", "LAYERS", "SIZE", "PLATFORM", "TAGS"]
    assert [line.split()[-2:] for line in lines[1:]] == [["linux/amd64", "multi:1"], ["linux/arm64/v8", "multi:1"]]
    r = _invoke("images", str(_multi(tmp_path)))  # none named: no column
    assert "PLATFORM" not in r.stdout


def test_images_json(tmp_path: Path) -> None:
    archive = _multi(tmp_path)
    r = _invoke("images", "--json", str(archive))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    with tarfile.open(archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert [row["index"] for row in rows] == [1, 2, 3]
    assert [row["tags"] for row in rows] == [e["RepoTags"] for e in manifest]
    assert [row["id"] for row in rows] == ["sha256:" + e["Config"].removesuffix(".json") for e in manifest]
    assert [row["layers"] for row in rows] == [1, 1, 1]
    assert all(isinstance(row["size"], int) and row["size"] > 0 for row in rows)
    # the short id of the table is the start of the JSON id
    table = _invoke("images", str(archive)).stdout.splitlines()
    for line, row in zip(table[1:], rows):
        assert row["id"].removeprefix("sha256:").startswith(line.split()[1])


def test_images_of_legacy_and_oci_archives(tmp_path: Path) -> None:
    b.write_legacy_archive(str(tmp_path / "legacy.tar"), GOOD_LAYERS + [[b.file("x", b"2")]], tag="old/app:1.0")
    b.write_oci_archive(str(tmp_path / "oci.tar"), GOOD_LAYERS, ref="oci/app:2.0")
    legacy = [json.loads(x) for x in _invoke("images", "--json", str(tmp_path / "legacy.tar")).stdout.splitlines()]
    oci = [json.loads(x) for x in _invoke("images", "--json", str(tmp_path / "oci.tar")).stdout.splitlines()]
    assert [(r["tags"], r["layers"]) for r in legacy] == [(["old/app:1.0"], 2)]
    assert [(r["tags"], r["layers"]) for r in oci] == [(["oci/app:2.0"], 1)]


def test_text_from_the_archive_or_the_command_line_is_printed_safely(tmp_path: Path, imagefs_bin: list[str]) -> None:
    """Tags are the archive's (a lone surrogate, a terminal escape); a path given as
    bytes that are not UTF-8 decodes to surrogates.  A strict UTF-8 stdout must
    not fail on them after the work is done, and the terminal gets no escapes."""
    archive = tmp_path / "tags.tar"
    b.write_docker_archive(str(archive), GOOD_LAYERS, tags=("\ud800:x", "evil\x1b[2J:1"))
    odd = os.fsencode(tmp_path) + b"/odd\xff.tar"
    os.link(archive, odd)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"}
    env.pop("IMAGEFS_DEBUG", None)
    outs = []
    for args in (["images", str(archive)], ["index", "--no-cache", "-q", odd]):
        r = subprocess.run([*map(os.fsencode, imagefs_bin), *map(os.fsencode, args)], capture_output=True,
                           env=env, timeout=60)
        assert r.returncode == 0 and r.stderr == b"", (args, r.stderr)
        outs.append(r.stdout.decode("ascii"))  # what the terminal gets: escapes spelled out
    assert "\\ud800:x" in outs[0] and "evil\\x1b[2J:1" in outs[0]
    assert "odd\\udcff.tar: " in outs[1]


@pytest.mark.parametrize("case", ["missing", "not-a-tar", "tar-not-image", "manifest-missing-layer"])
def test_images_of_a_bad_archive(tmp_path: Path, imagefs_bin: list[str], case: str) -> None:
    r = run_cli(imagefs_bin, "images", BAD_ARCHIVES[case](tmp_path))
    assert_one_line_error(r)


@pytest.mark.parametrize("command", [None, *sorted(cli.main.commands)])
def test_help(command: str | None) -> None:
    args = ([command] if command else []) + ["--help"]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    r2 = CliRunner().invoke(cli.main, ([command] if command else []) + ["-h"])
    assert (r2.exit_code, r2.output) == (0, r.output)


def test_help_of_the_real_command(imagefs_bin: list[str]) -> None:
    r = run_cli(imagefs_bin, "--help")
    assert r.returncode == 0 and r.stderr == ""
    for command in ("mount", "umount", "images", "index"):
        assert command in r.stdout
    sub = run_cli(imagefs_bin, "mount", "--help")
    assert sub.returncode == 0 and sub.stderr == "" and "MOUNTPOINT" in sub.stdout


def test_version(imagefs_bin: list[str]) -> None:
    r = run_cli(imagefs_bin, "--version")
    assert r.returncode == 0
    assert r.stdout.startswith("imagefs") and __import__("imagefs").__version__ in r.stdout
