"""Mount options and daemon start-up, without a mount: `-o` parsing, what
libfuse says when it refuses, and which pyfuse3 is installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT
from imagefs import fuseops
from imagefs.errors import MountError
from imagefs.mount import MountOptions, _find_mount, _stderr_captured, _unescape_mountinfo, fuse_options, split_o


DEFAULTS = ["fsname=imagefs", "subtype=imagefs", "ro", "nosuid", "nodev", "default_permissions"]


def _opts(*extra: str, **kw: object) -> MountOptions:
    return MountOptions(extra=split_o(extra), **kw)  # type: ignore[arg-type]


def test_defaults_are_read_only_nosuid_nodev() -> None:
    assert fuse_options(_opts()) == DEFAULTS
    assert "ro" not in fuse_options(_opts(overlay="/scratch"))


def test_user_options_pass_through_and_fsname_replaces_ours() -> None:
    got = fuse_options(_opts("noatime,fsname=ubuntu", "allow_other"))
    assert got[-3:] == ["noatime", "fsname=ubuntu", "allow_other"]
    assert "fsname=imagefs" not in got


@pytest.mark.parametrize(("given", "want"), [
    (("max_read=4096,max_read=65536",), [*DEFAULTS, "max_read=65536"]),
    (("subtype=zz", "subtype=yy"), [o for o in DEFAULTS if o != "subtype=imagefs"] + ["subtype=yy"]),
    (("noexec,exec",), [*DEFAULTS, "exec"]),
    (("exec,noexec,atime,noatime,atime",), [*DEFAULTS, "noexec", "atime"]),
    (("sync,async",), [*DEFAULTS, "async"]),
    (("nosuid,nodev,ro",), ["fsname=imagefs", "subtype=imagefs", "default_permissions", "nosuid", "nodev", "ro"]),
])
def test_each_option_once_and_the_last_one_wins(given: tuple[str, ...], want: list[str]) -> None:
    """As mount(8) reads -o: of a repeated option, or a flag and its opposite,
    the last counts.  libfuse takes the first of two max_read values and the
    kernel the last (the INIT then fails), and an order that changed from run
    to run (a set) made such mounts flaky."""
    assert fuse_options(_opts(*given)) == want


@pytest.mark.parametrize("opt", ["rw", "suid", "dev"])
def test_options_that_would_weaken_the_mount_are_refused(opt: str) -> None:
    with pytest.raises(MountError, match="read-only"):
        fuse_options(_opts(opt))


def test_ro_contradicts_overlay() -> None:
    with pytest.raises(MountError, match="contradicts --overlay"):
        fuse_options(_opts("ro", overlay="/scratch"))


@pytest.mark.parametrize(("given", "want"), [((), 0), (("max_read=65536",), 65536),
                                             (("max_read=4096,max_read=131072",), 131072)])
def test_max_read_is_the_last_one_given(given: tuple[str, ...], want: int) -> None:
    assert _opts(*given).max_read == want


@pytest.mark.parametrize("opt", ["max_read=", "max_read=abc", "max_read=0", "max_read=-1", "max_read=1e6",
                                 "max_read=\u00b2", "max_read=\u0663"])  # digits to str.isdigit, not to int()
def test_max_read_must_be_a_number_of_bytes(opt: str) -> None:
    with pytest.raises(MountError, match="number of bytes"):
        fuse_options(_opts(opt))


def test_max_read_needs_the_patched_pyfuse3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock pyfuse3 leaves max_read at 0 in INIT and libfuse then refuses the
    mount (EPROTO): say so before indexing rather than fail in the daemon."""
    monkeypatch.setattr(fuseops, "PATCH_LEVEL", 7)
    with pytest.raises(MountError, match="needs the pyfuse3 that imagefs patches"):
        fuse_options(_opts("max_read=65536"))
    monkeypatch.setattr(fuseops, "PATCH_LEVEL", 8)
    assert "max_read=65536" in fuse_options(_opts("max_read=65536"))


def test_stderr_of_c_code_is_caught_and_passed_on(capfd: pytest.CaptureFixture[str]) -> None:
    """libfuse writes why it refused a mount to fd 2 (the daemon's log); the
    daemon needs the line for the user's one-line error."""
    with _stderr_captured() as said:
        os.write(2, b"FUSE library version: 3.14.0\n\nfuse: unknown option(s): `-o bogus'\n")
        assert said == []  # filled when the block ends
    assert said == ["FUSE library version: 3.14.0", "fuse: unknown option(s): `-o bogus'"]
    assert capfd.readouterr().err == "FUSE library version: 3.14.0\n\nfuse: unknown option(s): `-o bogus'\n"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # fd 2 is back


def test_the_topmost_mount_and_its_type_from_mountinfo() -> None:
    lines = [
        b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n",
        b"40 22 0:45 / /mnt/my\\040img ro,nosuid,nodev shared:7 master:2 - fuse.imagefs imagefs ro\n",
        b"41 40 0:46 / /mnt/x rw - tmpfs tmpfs rw\n",
        b"42 41 0:47 / /mnt/x rw - fuse.zz src rw,user_id=0\n",  # mounted over the tmpfs
        b"43 1 0:48 / /mnt/odd rw - weird\\040type src rw\n",
    ]
    assert _find_mount(lines, b"/mnt/my img") == ("0:45", "fuse.imagefs")  # escaped path, optional fields
    assert _find_mount(lines, b"/mnt/x") == ("0:47", "fuse.zz")  # the last one is on top
    assert _find_mount(lines, b"/mnt/odd") == ("0:48", "weird type")
    assert _find_mount(lines, b"/mnt") is None
    assert _find_mount([b"broken line\n", b"1 2 0:1 / /mnt/y rw\n"], b"/mnt/y") is None


def test_mount_device_reads_escaped_mountinfo() -> None:
    assert _unescape_mountinfo(rb"/tmp/a\040b\011c\134d") == b"/tmp/a b\tc\\d"
    assert _unescape_mountinfo(b"/plain") == b"/plain"


def test_the_patched_pyfuse3_is_the_one_installed() -> None:
    """ci/setup.sh builds pyfuse3 with ci/patch_pyfuse3.py; a build that fell back to
    the stock wheel still works, only slower, so only CI (IMAGEFS_REQUIRE_C) insists.
    Here rather than with the mounts, so that a machine without FUSE still checks."""
    import pyfuse3
    from pyfuse3 import _pyfuse3

    level = int(subprocess.run([sys.executable, str(PROJECT_ROOT / "ci" / "patch_pyfuse3.py"), "--level"],
                               capture_output=True, text=True, check=True).stdout)
    installed = getattr(_pyfuse3, "IMAGEFS_PATCH", 0)
    if installed != level and not os.environ.get("IMAGEFS_REQUIRE_C"):
        pytest.skip(f"pyfuse3 patch level {installed}, ci/patch_pyfuse3.py makes {level}")
    assert installed == level == fuseops.PATCH_LEVEL
    assert hasattr(pyfuse3, "imagefs_serve")
