"""The writable mount (``imagefs mount --overlay DIR``) against kernel overlayfs as the oracle.

One image holds a copy of the base tree (`overlay_support.BASE_LAYERS`) per scripted sequence,
at ``/<sequence name>/``.  Every sequence of shell commands and python steps runs in its own
copy, first on

(a) kernel overlayfs (``mount -t overlay``, the layers as lowerdirs built from the same builder
    description: whiteouts as 0/0 character devices, opaque directories with
    ``trusted.overlay.opaque=y``; ``redirect_dir=off`` so that renaming an image directory is
    EXDEV as the spec allows, ``index=on`` so that hard links survive copy-up), then on
(b) imagefs with a fresh scratch dir, mounted at the same path (so paths that programs write
    into files, such as a venv's, are the same).

Per sequence (one test each) the comparison covers: what every step printed or returned, the
merged trees (``listing.py``), the scratch dir against the kernel's upperdir (normalised, see
`overlay_support.normalized_upper`), and the tree after an unmount and a remount with the same
DIR.  The two mounts are made once per module (`runs`), which keeps the whole set fast.

Then single-mount tests: statfs and mount options, refused overlay directories, and crashes
(SIGKILL of the daemon in a write loop and in the middle of a copy-up).

Every mount is cleaned up whatever happens (conftest's `Mounter` discipline for imagefs:
``imagefs umount``, ``fusermount3 -u``, ``-uz``, kill; ``umount``/``umount -l`` for the
kernel's), and every subprocess and wait has a timeout.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import builder as b
import overlay_support as ovs
from conftest import (CORPUS_DIR, TIMEOUT, Mounter, assert_one_line_error, is_mounted, mount_entry, process_alive,
                      processes_for, wait_until)

pytestmark = pytest.mark.fuse

LISTING = CORPUS_DIR / "listing.py"
BASE_PYTHON = getattr(sys, "_base_executable", None) or sys.executable


def _source_tar(path: Path) -> None:
    """A source tree as a tarball, partly over the image's paths (tar -x replaces those)."""
    long_dir = "usr/src/proj/" + "/".join(["d" * 40] * 3)
    entries = [
        b.dir("usr/src", mode=0o755),
        b.dir("usr/src/proj", mode=0o755, uid=1000, gid=1000),
        b.file("usr/src/proj/Makefile", b"all:\n\tcc -o app main.c\n", uid=1000, gid=1000),
        b.file("usr/src/proj/main.c", b"int main(void) { return 0; }\n" * 50, uid=1000, gid=1000),
        b.file("usr/src/proj/configure", b"#!/bin/sh\nexit 0\n", mode=0o755, uid=1000, gid=1000),
        b.symlink("usr/src/proj/current", "main.c", uid=1000, gid=1000),
        b.hardlink("usr/src/proj/main-copy.c", "usr/src/proj/main.c"),
        b.file("usr/src/proj/tagged", b"x", xattrs={"user.tag": b"value"}),
        b.dir("usr/src/proj/private", mode=0o700),
        b.file("usr/src/proj/private/key", b"secret\n", mode=0o600),
        b.dir("usr/src/proj/" + "d" * 40, mode=0o755),
        b.dir("usr/src/proj/" + "/".join(["d" * 40] * 2), mode=0o755),
        b.dir(long_dir, mode=0o755),
        b.file(long_dir + "/" + "f" * 120, b"deep\n"),
        b.dir("etc", mode=0o755),
        b.file("etc/hostname", b"from tar\n", mode=0o600),  # replaces an image file
        b.dir("usr/lib", mode=0o775),  # an image directory: tar -x sets its mode
        b.file("usr/lib/libbar.so.1", b"bar\n", mode=0o755),
        b.symlink("usr/lib/libfoo.so", "libfoo.so.9"),  # replaces an image symlink
        b.dir("opt/app", mode=0o755),
        b.file("opt/app/main.py", b"print('patched')\n"),
        b.hardlink("opt/app/main-hl.py", "opt/app/main.py"),
    ]
    path.write_bytes(b.layer_tar(entries))


def _git_steps() -> list[str]:
    return [
        "sh:cd opt/app && git init -q -b main && git add -A && git commit -q -m 'in an image dir'"
        " && git rm -q --cached v2 && git commit -q -m rm && git ls-files && git gc -q 2>&1; git count-objects",
        "sh:git init -q -b main repo && cd repo && echo hello > README && mkdir src && echo 'x=1' > src/a.py"
        " && chmod +x src/a.py && ln -s README link && git add -A && git commit -q -m first && git log --format=%H%n%s",
        "sh:cd repo && echo more >> README && git mv src/a.py src/b.py && git commit -qam second && git status"
        " --porcelain && git log --format='%H %s' && git fsck --no-progress 2>&1 | sort",
        "sh:cd repo && git checkout -q -b topic && echo t > t && git add t && git commit -qm t"
        " && git checkout -q main && git merge -q --no-edit topic && git log --format=%s | sort",
    ]


SEQUENCES: list[tuple[str, list[str], dict]] = [
    ("untouched", ["sh:ls -A . etc usr/share/doc opt/app var/cache"], {}),
    ("appends", [
        "sh:echo more >> etc/hostname && printf x >> etc/conf && echo new >> opt/new.txt",
        "sh:for i in 1 2 3; do echo $i >> etc/big; echo $i >> var/lib/state/db; done",
        "sh:cat etc/hostname etc/conf opt/new.txt var/lib/state/db; tail -c 6 etc/big | od -c",
        "sh:echo home >> home/user/.profile && stat -c '%n %a %u %g %s' home/user/.profile home/user",
    ], {}),
    ("truncates", [
        "py:truncate",
        "sh:: > etc/single; truncate -s 5 var/lib/state/db; stat -c '%n %s' etc/single var/lib/state/db",
        "sh:truncate -s 0 usr/share/doc/pkg1/README && cat usr/share/doc/pkg1/README | wc -c",
    ], {}),
    ("rename_files", [
        "sh:mv etc/hostname etc/conf && cat etc/conf && ls -A etc",
        "sh:mv opt/app/v2 etc/v2 && ls -A opt/app etc",
        "sh:echo n > new && mv new usr/bin/tool && cat usr/bin/tool",
        "sh:echo a > a1 && echo b > b1 && mv a1 b1 && cat b1",
        "sh:mv etc/hl-a etc/hl-moved && cat etc/hl-b etc/hl-moved",
        "sh:mv usr/lib/libfoo.so libfoo-link && readlink libfoo-link",
        "sh:mv run/ctl run/ctl2 && stat -c '%n %F' run/ctl2",
        "sh:mv etc/single usr/share/man/man1/single && mv usr/share/man/man1/single etc/single.back && cat etc/single.back",
        "sh:mv -T etc/big usr 2>&1; echo rc=$?",
    ], {}),
    ("rename_dirs", [
        "py:rename_dirs",
        "sh:mv usr/share/doc/pkg1 usr/share/doc/pkg1.moved; echo rc=$?; ls -A usr/share/doc usr/share/doc/pkg1.moved",
        "sh:mkdir x && mv -T x usr 2>&1; echo rc=$?",
        "sh:mkdir -p n1/n2 && echo n > n1/n2/f && mv n1 usr/share/n1 && mv usr/share/n1/n2 n2 && ls -AR n2 usr/share/n1",
    ], {}),
    ("rm_rf", [
        "sh:rm -rf usr/share",
        "sh:rm -rf var/cache opt",
        "sh:rm -rf home/user/.profile etc/hl-a run/ctl",
        "sh:ls -A usr var . etc home/user run",
        "sh:rm -rf usr var etc && ls -A .",
    ], {}),
    ("recreate_after_delete", [
        "sh:rm -rf usr/share/doc && mkdir usr/share/doc && echo x > usr/share/doc/new && mkdir usr/share/doc/pkg1"
        " && ls -A usr/share/doc/pkg1 usr/share/doc",
        "sh:rm etc/hostname && echo again > etc/hostname && cat etc/hostname",
        "sh:rm -rf opt/app && mkdir -p opt/app/sub && ls -A opt/app",
        "sh:rm etc/conf && mkdir etc/conf && ls -A etc/conf",
        "sh:rmdir srv && echo file > srv && cat srv",
        "sh:rm -rf var/cache && mkdir var/cache && ls -A var/cache",
        "sh:rm usr/lib/libfoo.so && mkdir usr/lib/libfoo.so && ls -A usr/lib",
        "sh:rm -rf usr/share/man && echo notadir > usr/share/man && cat usr/share/man",
    ], {}),
    ("chmod_chown_touch", [
        "sh:chmod 600 etc/hostname && chmod u+s usr/bin/tool && chown 123:456 etc/conf && chmod 700 usr/share/doc"
        " && chmod 1777 var/log && chown -h 7:8 usr/lib/libfoo.so",
        "sh:touch -m -d @1600000000 etc/single && stat -c '%n %a %u %g %Y' etc/hostname usr/bin/tool etc/conf"
        " usr/share/doc var/log etc/single",
        "sh:stat -c '%n %u %g' usr/lib/libfoo.so",
        "sh:chmod 000 etc/big && stat -c '%a' etc/big && head -c 3 etc/big | od -An -tx1",
        "sh:chmod g+w run/ctl && chown 1:1 home/user && stat -c '%n %a %u' run/ctl home/user",
    ], {}),
    ("hard_links", [
        "sh:ln etc/single etc/single-link && echo more >> etc/single-link && cat etc/single && stat -c '%h' etc/single",
        "sh:ln usr/bin/tool tool-hl && ln opt/app/main.py usr/main.py && stat -c '%n %h' tool-hl usr/main.py",
        "sh:ln etc/hl-a etc/hl-c && echo x >> etc/hl-c && cat etc/hl-b",
        "sh:ln usr usr2 2>&1; echo rc=$?",
        "sh:ln etc/single etc/conf 2>&1; echo rc=$?",
        "sh:echo new > brandnew && ln brandnew brandnew2 && stat -c %h brandnew",
        "sh:rm etc/single && cat etc/single-link",
    ], {}),
    ("git", "GIT", {"volatile": ["*/.git/index"], "timeout": 120}),
    ("tar_extract", [
        "sh:tar -x --xattrs --xattrs-include='user.*' --numeric-owner -f \"$SRC_TAR\" -C . && echo ok",
        "sh:tar -x --xattrs --xattrs-include='user.*' --numeric-owner -f \"$SRC_TAR\" -C . && echo again",
        "sh:find usr/src opt/app usr/lib | sort && cat etc/hostname && readlink usr/lib/libfoo.so",
        "sh:tar -c --sort=name --numeric-owner -f - usr/src | tar -t -v -f - | awk '{print $1, $2, $3, $6}' | sort",
    ], {}),
    ("venv", [
        "sh:\"$PY\" -m venv venv && echo created",
        "sh:venv/bin/python -c 'import sys; print(sys.prefix != sys.base_prefix, sys.prefix)'",
        "sh:venv/bin/python -m pip --version | cut -d' ' -f1,2",
        "sh:cat venv/pyvenv.cfg | grep -v '^version' | sort; ls -A venv venv/bin | sort",
    ], {"volatile": ["*.pyc"], "timeout": 240}),
    ("open_flags", ["py:open_flags"], {}),
    ("sparse", ["py:sparse", "sh:du -k sparse | cut -f1 | awk '{print ($1 < 1024)}'"], {}),
    ("unlink_open", ["py:unlink_open"], {}),
    ("special_files", ["py:special_files", "sh:mkfifo f1 && stat -c '%n %F %a %t %T' f1 run/newfifo run/zero run/blk"],
     {}),
    ("symlinks", ["py:symlinks", "sh:ln -sfn /etc/hostname usr/lib/libfoo.so.1 && readlink usr/lib/libfoo.so.1"], {}),
    ("xattrs", ["py:xattrs"], {}),
    ("xattr_create_replace_flags", ["py:xattr_flags"], {}),
    ("fsync", ["py:fsync", "sh:sync etc/hostname && sync -f . && echo synced"], {}),
    ("cache_coherence", ["py:cache_coherence"], {}),
    ("inode_stability", ["py:inode_stability"], {}),
    ("rename_noreplace", ["py:rename_noreplace"], {}),
    ("many_small_changes", [
        "sh:for i in $(seq 1 200); do echo $i > tmp/f$i; done; for i in $(seq 1 200 | shuf --random-source=/dev/zero);"
        " do mv tmp/f$i tmp/g$i; done; rm tmp/g1*; ls tmp | wc -l",
        "sh:mkdir -p a/b/c/d/e && cp -a usr/share a/b/c/d/e/ && rm -rf a/b/c/d/e/share/doc && find a | sort | wc -l",
        "sh:cp -a etc etc.bak && rm -rf etc && mv etc.bak etc && ls -A etc && cat etc/conf",
    ], {}),
    # Probes of behaviour that once differed from kernel overlayfs.
    ("inode_reuse_after_delete", ["py:inode_reuse"], {}),
    ("read_fd_sees_copy_up", ["py:read_fd_sees_copy_up"], {}),
    ("hardlink_alias_after_unlink", ["py:hardlink_alias_after_unlink"], {}),
    ("link_then_unlink_the_new_name", ["py:link_then_unlink"], {}),
    ("fstat_of_unlinked_open_file", ["py:fstat_unlinked"], {}),
    ("rename_recreated_dir", ["py:rename_recreated_dir"], {}),
    # Image directories are listed from the index in C, which remembers nothing: once the
    # kernel's attributes expire (1 s), it asks for those inodes by number.
    ("listed_entries_after_the_timeout", [
        "sh:ls -la usr/share/doc usr/share/doc/pkg1 etc > /dev/null && sleep 1.2"
        " && stat -c '%n %F %a %s %h' usr/share/doc/* usr/share/doc/pkg1/* etc/*",
        "sh:cd usr/share/doc/pkg1 && sleep 1.2 && \"$PY\" -c 'import os; print(os.getcwd().split(\"/\")[-3:])'"
        " && wc -c < README",
        "sh:ls etc > /dev/null && sleep 1.2 && echo x >> etc/conf && rm etc/single && stat -c '%n %s' etc/conf"
        " && stat etc/single 2>&1 | sed 's/.*: //'",
    ], {}),
    ("setgid_directory", [
        "sh:chgrp 50 var/log && chmod g+s var/log && touch var/log/f && mkdir var/log/d && ln -s f var/log/l"
        " && mkfifo var/log/p && stat -c '%n %a %g' var/log/f var/log/d var/log/p && stat -c '%n %g' var/log/l",
        "sh:mkdir var/log/d/deeper && stat -c '%n %a %g' var/log/d/deeper",
    ], {}),
    ("cp_a_mode_at_once", [
        "sh:cp -a etc/conf conf2 && stat -c '%n %a %u %g' conf2 && cp -a var/lib/state state2"
        " && stat -c '%n %a' state2 state2/db",
    ], {}),
    ("recreated_dir_keeps_its_inode", [
        "sh:rm -rf usr/share/doc && mkdir usr/share/doc && a=$(stat -c %i usr/share/doc) && sleep 1.2"
        " && b=$(stat -c %i usr/share/doc) && [ \"$a\" = \"$b\" ] && echo same",
        "sh:cd usr/share/doc && sleep 1.2 && \"$PY\" -c 'import os; print(os.getcwd().split(\"/\")[-2:])'",
        "sh:rm -rf var/cache && mkdir -p n/cache && mv n/cache var/cache && a=$(stat -c %i var/cache) && sleep 1.2"
        " && b=$(stat -c %i var/cache) && [ \"$a\" = \"$b\" ] && echo same",
    ], {}),
    ("parent_mtime_after_hard_link_copy_up", [
        "sh:echo x >> etc/hl-a && sleep 1.1",  # past the attr timeout
        "sh:stat -c '%n %Y' etc && cat etc/hl-a",
    ], {}),
    ("parent_mtime_after_copy_up", [
        "sh:chmod 600 usr/share/doc/pkg1/README && echo >> etc/conf && sleep 1.1",  # past the attr timeout
        "sh:stat -c '%n %Y' usr usr/share usr/share/doc usr/share/doc/pkg1",
    ], {}),
]


def _params() -> list:
    out = []
    for name, _steps, opts in SEQUENCES:
        marks = []
        if opts.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=opts["xfail"]))
        if name == "git" and shutil.which("git") is None:
            marks.append(pytest.mark.skip(reason="git is not installed"))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def _step_env(work: Path) -> dict[str, str]:
    home = work / "home"
    home.mkdir(exist_ok=True)
    src = work / "src.tar"
    if not src.exists():
        _source_tar(src)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C", "TZ": "UTC",
        "PY": BASE_PYTHON, "SRC_TAR": str(src),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_AUTHOR_DATE": "@1700000000 +0000",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_COMMITTER_DATE": "@1700000000 +0000", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1",
    }


def _active_sequences() -> list[tuple[str, list[str], dict]]:
    out = []
    for name, steps, opts in SEQUENCES:
        if steps == "GIT":
            if shutil.which("git") is None:
                continue
            steps = _git_steps()
        out.append((name, steps, opts))
    return out


def _volatile() -> list[str]:
    return sorted({v for _n, _s, o in SEQUENCES for v in o.get("volatile", [])})


class Runs:
    """Every sequence run once on kernel overlayfs and once on imagefs (each in its own copy of
    the base tree, ``/<sequence name>/``), with the trees and the scratch/upper dirs recorded."""

    def __init__(self, work: Path, mounter: Mounter, kernel: ovs.KernelOverlays, listing_py: Path) -> None:
        self.seqs = _active_sequences()
        names = [n for n, _s, _o in self.seqs]
        self.layers = ovs.prefixed(ovs.BASE_LAYERS, names)
        self.image_dirs = ovs.image_dirs(self.layers)
        self.archive = work / "image.tar"
        b.write_docker_archive(str(self.archive), self.layers)
        self.archive_bytes = self.archive.read_bytes()
        self.mp = work / "mnt"
        self.mp.mkdir()
        self.env = _step_env(work)
        volatile = _volatile()

        lowers = ovs.materialize(self.layers, work / "lower")
        kernel.mount(lowers, work / "k-upper", work / "k-work", self.mp)
        self.k_results = self._run_all(parallel=4)
        self.k_tree = ovs.listing(listing_py, self.mp, volatile)
        kernel.umount(self.mp)
        self.k_upper = ovs.normalized_upper(work / "k-upper", "kernel", self.image_dirs, volatile)

        self.scratch = work / "scratch"
        mounter(self.archive, "--overlay", str(self.scratch), mountpoint=self.mp)
        self.results = self._run_all()
        self.tree = ovs.listing(listing_py, self.mp, volatile)
        r = mounter.run("umount", self.mp)
        assert r.returncode == 0, f"imagefs umount failed: {r.stderr}"
        assert wait_until(lambda: not processes_for(self.mp), timeout=TIMEOUT), "the daemon did not exit"
        self.upper = ovs.normalized_upper(self.scratch, "imagefs", self.image_dirs, volatile)
        mounter(self.archive, "--overlay", str(self.scratch), mountpoint=self.mp)
        self.tree_again = ovs.listing(listing_py, self.mp, volatile, no_hash=True)
        r = mounter.run("umount", self.mp)
        assert r.returncode == 0, f"imagefs umount failed: {r.stderr}"

    def _run_all(self, parallel: int = 1) -> dict[str, object]:
        """Run the sequences (each works in its own subtree), the slow ones first.

        Each sequence's directory is copied up first (a chmod to its own mode: nothing is created
        or deleted), before anything is deleted: the inode renumbering bug (see
        inode_reuse_after_delete) could otherwise take the cwd away from a runner and make
        unrelated sequences fail.  For the same reason git, which works in an image directory,
        runs first, and on imagefs the sequences run one after the other: run concurrently, one
        sequence's deletions and another's creations make that bug hit at random (ESTALE in git)."""
        from concurrent.futures import ThreadPoolExecutor

        for name, _steps, _opts in self.seqs:
            d = self.mp / name
            os.chmod(d, stat.S_IMODE(os.stat(d).st_mode))

        def one(seq: tuple[str, list[str], dict]) -> tuple[str, object]:
            name, steps, opts = seq
            try:
                return name, ovs.run_steps(self.mp / name, steps, self.env, timeout=opts.get("timeout", 60))
            except (AssertionError, subprocess.TimeoutExpired) as e:
                return name, f"the steps failed to run: {e}"

        ordered = sorted(self.seqs, key=lambda s: (s[0] != "git", -s[2].get("timeout", 60)))
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            return dict(pool.map(one, ordered))


@pytest.fixture(scope="module")
def runs(imagefs_bin: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    from conftest import fuse_unavailable

    why = fuse_unavailable()
    if why is not None:
        pytest.skip(f"FUSE tests need /dev/fuse and fusermount3: {why}")
    if not LISTING.is_file():
        pytest.skip(f"{LISTING} is missing (the shared corpus is not next to the project)")
    if os.geteuid() != 0:
        pytest.skip("kernel overlayfs (the oracle) needs root")
    work = tmp_path_factory.mktemp("overlay-oracle")
    mounter = Mounter(imagefs_bin, work)
    kernel = ovs.KernelOverlays()
    try:
        yield Runs(work, mounter, kernel, LISTING)
    finally:
        problems = kernel.cleanup() + mounter.cleanup()
    assert not problems, "cleanup after the overlay runs found leftovers: " + "; ".join(problems)


def _compare_results(kern: object, ours: object) -> list[str]:
    if not isinstance(kern, list) or not isinstance(ours, list):
        return [f"kernel: {kern}\nimagefs: {ours}"] if kern != ours else []
    problems = []
    for i, (k, o) in enumerate(zip(kern, ours)):
        if k != o:
            problems.append(f"step {i + 1} ({k.get('step')!r}):\n  kernel:  {k}\n  imagefs: {o}")
    return problems


def _subtree(lines: list[str], name: str) -> list[str]:
    return [ln for ln in lines if ln.split("\t", 1)[0] == f"/{name}" or ln.startswith(f"/{name}/")]


def _no_hash(line: str) -> str:
    f = line.split("\t")
    f[6] = "-"
    return "\t".join(f)


def _sub_upper(upper: dict, name: str) -> dict:
    out = {k: v for k, v in upper.items() if k == name or k.startswith(name + "/")}
    out["\0inodes"] = {k: v for k, v in upper["\0inodes"].items() if k.startswith(name + "/")}
    return out


@pytest.mark.parametrize("name", _params())
def test_sequence_matches_kernel_overlayfs(name: str, runs: Runs) -> None:
    problems = _compare_results(runs.k_results[name], runs.results[name])
    assert not problems, "the steps saw different things:\n" + "\n".join(problems)
    k_tree, tree = _subtree(runs.k_tree, name), _subtree(runs.tree, name)
    assert tree == k_tree, "merged trees differ:\n" + ovs.diff_lines(k_tree, tree, "kernel overlayfs", "imagefs")
    upper_diff = ovs.compare_uppers(_sub_upper(runs.upper, name), _sub_upper(runs.k_upper, name))
    assert not upper_diff, "scratch dir and upperdir differ:\n" + "\n".join(upper_diff[:60])


@pytest.mark.parametrize("name", [n for n, _s, o in SEQUENCES if not o.get("xfail")])
def test_remount_with_the_same_dir_shows_the_same_tree(name: str, runs: Runs) -> None:
    if name not in runs.results:
        pytest.skip(f"{name} did not run")
    before = [_no_hash(ln) for ln in _subtree(runs.tree, name)]  # contents were read through the first mount
    after = _subtree(runs.tree_again, name)
    assert after == before, "a remount shows another tree:\n" + ovs.diff_lines(before, after, "before", "after")


def test_scratch_dir_holds_no_temporaries(runs: Runs) -> None:
    leftovers = [p for p, v in runs.upper.items() if v == ("TEMPORARY",)]
    assert not leftovers


def test_the_archive_is_never_written(runs: Runs) -> None:
    assert runs.archive.read_bytes() == runs.archive_bytes


# -- single mounts: statfs, options, refusals ------------------------------------------------------------


def _small_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "image.tar"
    b.write_docker_archive(str(archive), ovs.BASE_LAYERS)
    return archive


def test_statfs_and_mount_options(mounted: Mounter, tmp_path: Path) -> None:
    scratch = tmp_path / "new" / "scratch"  # created by mount
    m = mounted(_small_archive(tmp_path), "--overlay", str(scratch))
    assert scratch.is_dir()
    entry = mount_entry(m.mountpoint)
    assert entry is not None and entry.fstype == "fuse.imagefs"
    assert {"rw", "nosuid", "nodev"} <= entry.options and "ro" not in entry.options
    v, host = os.statvfs(m.mountpoint), os.statvfs(scratch)
    assert v.f_bsize > 0 and v.f_blocks > 0 and v.f_namemax > 0
    assert (v.f_blocks, v.f_frsize) == (host.f_blocks, host.f_frsize), "statfs should describe DIR's file system"
    r = subprocess.run(["df", "-P", str(m.mountpoint)], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and "imagefs" in r.stdout


def test_refuses_an_overlay_dir_inside_the_mount(mounted: Mounter, tmp_path: Path) -> None:
    mp = mounted.new_mountpoint()
    r = mounted.run("mount", "--cache-dir", mounted.cache_dir, "--overlay", mp / "scratch",
                    _small_archive(tmp_path), mp, mountpoint=mp)
    assert r.returncode == 1, r.stderr
    assert "inside" in assert_one_line_error(r, mp)
    assert not (mp / "scratch").exists()


def test_refuses_an_overlay_dir_that_is_a_mountpoint(mounted: Mounter, tmp_path: Path) -> None:
    scratch = tmp_path / "tmpfs"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch)], check=True, timeout=TIMEOUT)
    try:
        mp = mounted.new_mountpoint()
        r = mounted.run("mount", "--cache-dir", mounted.cache_dir, "--overlay", scratch, _small_archive(tmp_path),
                        mp, mountpoint=mp)
        assert r.returncode == 1 and "mount point" in r.stderr, r.stderr
        assert not is_mounted(mp)
    finally:
        subprocess.run(["umount", "-l", str(scratch)], timeout=TIMEOUT)


def test_refuses_an_overlay_dir_that_is_not_writable(mounted: Mounter, tmp_path: Path) -> None:
    src, ro = tmp_path / "src", tmp_path / "ro"
    (src / "scratch").mkdir(parents=True)
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(ro)], check=True, timeout=TIMEOUT)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, timeout=TIMEOUT)
        mp = mounted.new_mountpoint()
        r = mounted.run("mount", "--cache-dir", mounted.cache_dir, "--overlay", ro / "scratch",
                        _small_archive(tmp_path), mp, mountpoint=mp)
        assert r.returncode == 1 and "writable" in r.stderr, r.stderr
        assert not is_mounted(mp)
    finally:
        subprocess.run(["umount", "-l", str(ro)], timeout=TIMEOUT)


def test_read_only_mount_stays_read_only(mounted: Mounter, tmp_path: Path) -> None:
    m = mounted(_small_archive(tmp_path))
    with pytest.raises(OSError) as ei:
        (m.mountpoint / "etc" / "hostname").write_bytes(b"x")
    assert ei.value.errno == errno.EROFS


# -- crashes --------------------------------------------------------------------------------------------------

WRITER = r"""
import os, sys
mp = sys.argv[1]
line = lambda i: b"%08d\n" % i
log = os.open(os.path.join(mp, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
host = os.open(os.path.join(mp, "etc/hostname"), os.O_WRONLY | os.O_APPEND)
i = 0
try:
    while True:
        os.write(log, line(i))
        os.fsync(log)
        os.write(host, line(i))
        os.fsync(host)
        tmp = os.path.join(mp, "etc/state.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"version %d\n" % i * 20)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(mp, "etc/conf"))
        print(i, flush=True)
        i += 1
except OSError as e:
    print("stopped", e.errno, flush=True)
"""


def test_a_replaced_name_of_an_image_hard_link_is_its_own_inode_after_a_remount(mounted: Mounter,
                                                                                 tmp_path: Path) -> None:
    """A new file renamed over one name of a hard-linked image file is not the image
    file's copy: after a remount it must not take the image inode's number (the kernel
    then took the two names for one file: reads of one gave the other's bytes and writes
    went to the wrong file)."""
    archive = tmp_path / "hl.tar"
    b.write_docker_archive(str(archive), [[b.file("a", b"image content\n"), b.hardlink("b", "a"),
                                           b.file("c", b"c\n"), b.hardlink("d", "c")]])
    scratch = tmp_path / "scratch"
    m = mounted(archive, "--overlay", str(scratch))
    (m.mountpoint / "new").write_bytes(b"replacement\n")
    os.rename(m.mountpoint / "new", m.mountpoint / "b")
    with open(m.mountpoint / "d", "ab") as f:  # a copy-up: c and d stay one file
        f.write(b"more\n")
    mp = m.mountpoint
    assert mounted.run("umount", mp).returncode == 0
    assert wait_until(lambda: not processes_for(mp), timeout=TIMEOUT), "the daemon did not exit"
    mounted(archive, "--overlay", str(scratch), mountpoint=mp)
    assert (mp / "a").read_bytes() == b"image content\n" and (mp / "b").read_bytes() == b"replacement\n"
    assert os.stat(mp / "a").st_ino != os.stat(mp / "b").st_ino
    assert (os.stat(mp / "a").st_nlink, os.stat(mp / "b").st_nlink) == (2, 1)
    assert os.stat(mp / "c").st_ino == os.stat(mp / "d").st_ino and (mp / "c").read_bytes() == b"c\nmore\n"
    with open(mp / "b", "ab") as f:
        f.write(b"appended\n")
    assert (mp / "a").read_bytes() == b"image content\n"
    assert (scratch / "b").read_bytes() == b"replacement\nappended\n"


def test_a_hard_linked_image_file_is_found_by_the_name_the_kernel_knows(mounted: Mounter, tmp_path: Path) -> None:
    """a/x and b/y are one image file, whose first name (the index's) is a/x.  With a/x
    deleted and made anew, b/y must still be the image file: reads and writes by its
    inode number must not reach the new a/x (nor fail), in the same mount and after a
    remount."""
    archive = tmp_path / "hl.tar"
    b.write_docker_archive(str(archive), [[b.dir("a"), b.file("a/x", b"image\n"), b.dir("b"),
                                           b.hardlink("b/y", "a/x"), b.file("b/z", b"z\n")]])
    scratch = tmp_path / "scratch"
    mp = mounted(archive, "--overlay", str(scratch)).mountpoint
    os.stat(mp / "a" / "x")
    os.unlink(mp / "a" / "x")
    (mp / "a" / "x").write_bytes(b"new\n")
    assert sorted(os.listdir(mp / "b")) == ["y", "z"]
    with open(mp / "b" / "y", "ab") as f:
        f.write(b"appended\n")
    assert (mp / "a" / "x").read_bytes() == b"new\n"
    assert (mp / "b" / "y").read_bytes() == b"image\nappended\n"
    assert mounted.run("umount", mp).returncode == 0
    assert wait_until(lambda: not processes_for(mp), timeout=TIMEOUT), "the daemon did not exit"
    (scratch / "a" / "x").unlink()  # now: a/x deleted (a whiteout), b/y the image file
    (scratch / "a" / ".wh.x").write_bytes(b"")
    (scratch / "b" / "y").unlink()
    mounted(archive, "--overlay", str(scratch), mountpoint=mp)
    assert sorted(os.listdir(mp / "b")) == ["y", "z"]
    assert not (mp / "a" / "x").exists()
    assert (mp / "b" / "y").read_bytes() == b"image\n"
    with open(mp / "b" / "y", "ab") as f:
        f.write(b"again\n")
    assert (mp / "b" / "y").read_bytes() == b"image\nagain\n" and not (mp / "a" / "x").exists()


def test_hard_linked_symlinks_and_fifos_stay_one_inode_through_a_copy_up(mounted: Mounter, tmp_path: Path) -> None:
    archive = tmp_path / "hl.tar"
    b.write_docker_archive(str(archive), [[b.symlink("s", "target"), b.hardlink("t", "s"),
                                           b.fifo("p"), b.hardlink("q", "p")]])
    mp = mounted(archive, "--overlay", str(tmp_path / "scratch")).mountpoint
    os.chown(mp / "s", 7, 8, follow_symlinks=False)  # copies s up
    os.chmod(mp / "p", 0o600)
    for a, b_ in (("s", "t"), ("p", "q")):
        sa, sb = os.lstat(mp / a), os.lstat(mp / b_)
        assert (sa.st_ino, sa.st_nlink) == (sb.st_ino, 2) and sb.st_nlink == 2, (a, b_)
    assert os.readlink(mp / "t") == "target" and os.lstat(mp / "t").st_uid == 7
    assert stat.S_IMODE(os.lstat(mp / "q").st_mode) == 0o600


def test_a_file_copied_up_by_a_failed_operation_is_still_found_by_number(mounted: Mounter, tmp_path: Path) -> None:
    """setxattr copies the file up before the host refuses the value: nobody registered
    the copy, and the kernel, which still knows the file by number, must find it."""
    archive = tmp_path / "a.tar"
    b.write_docker_archive(str(archive), [[b.file("f", b"content\n")]])
    scratch = tmp_path / "scratch"
    mp = mounted(archive, "--overlay", str(scratch)).mountpoint
    fd = os.open(mp / "f", os.O_RDONLY)
    try:
        try:
            os.setxattr(mp / "f", "user.big", b"x" * 60000)
        except OSError as e:
            refused = e.errno
        else:
            pytest.skip("the file system under DIR takes 60 kB xattrs")
        assert refused in (errno.ENOSPC, errno.E2BIG, errno.ERANGE, errno.EOPNOTSUPP), refused
        assert (scratch / "f").exists(), "the failed setxattr copied f up"
        assert os.fstat(fd).st_size == 8 and os.pread(fd, 100, 0) == b"content\n"
        with open(mp / "f", "ab") as g:  # by the cached entry, by number
            g.write(b"more\n")
        assert (mp / "f").read_bytes() == b"content\nmore\n" == (scratch / "f").read_bytes()
    finally:
        os.close(fd)


def test_setting_an_acl_is_refused_so_tools_fall_back_to_chmod(mounted: Mounter, tmp_path: Path) -> None:
    """An access ACL changes the mode, which FUSE cannot tell the kernel's cache about."""
    archive = tmp_path / "a.tar"
    b.write_docker_archive(str(archive), [[b.file("f", b"x", mode=0o640)]])
    m = mounted(archive, "--overlay", str(tmp_path / "scratch"))
    acl = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000000ffffffff")
    with pytest.raises(OSError) as e:
        os.setxattr(m.mountpoint / "f", "system.posix_acl_access", acl)
    assert e.value.errno == errno.EOPNOTSUPP
    assert stat.S_IMODE(os.stat(m.mountpoint / "f").st_mode) == 0o640


def test_sigkill_of_the_daemon_mid_write_loses_nothing_acknowledged(mounted: Mounter, tmp_path: Path) -> None:
    archive = _small_archive(tmp_path)
    scratch = tmp_path / "scratch"
    m = mounted(archive, "--overlay", str(scratch))
    pid = m.daemon_pid()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(m.mountpoint)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd="/")
    acked = -1
    try:
        deadline = time.monotonic() + TIMEOUT
        while acked < 40 and time.monotonic() < deadline:
            out = writer.stdout.readline()  # type: ignore[union-attr]
            if not out:
                break
            acked = int(out)
        assert acked >= 40, f"the writer did not get going: {writer.stderr.read() if writer.poll() else ''}"  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        rest, err = writer.communicate(timeout=TIMEOUT)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(TIMEOUT)
    for out in rest.splitlines():
        if out.strip().isdigit():
            acked = int(out)
    assert "stopped" in rest, f"the writer should have seen an error once the daemon died: {rest[-200:]} {err[-500:]}"
    assert wait_until(lambda: not process_alive(pid), timeout=TIMEOUT)
    r = mounted.run("umount", m.mountpoint)
    assert r.returncode == 0, f"imagefs umount of the stale mount failed: {r.stderr}"
    assert not is_mounted(m.mountpoint)

    mounted(archive, "--overlay", str(scratch), mountpoint=m.mountpoint)
    ideal = b"".join(b"%08d\n" % i for i in range(acked + 2))
    log = (m.mountpoint / "log").read_bytes()
    assert ideal.startswith(log), "the log holds bytes that were never written"
    assert len(log) >= 9 * (acked + 1), f"acknowledged (fsynced) lines are missing: {len(log) // 9} < {acked + 1}"
    host = (m.mountpoint / "etc/hostname").read_bytes()
    assert host.startswith(b"layer2\n") and ideal.startswith(host[7:])
    assert len(host) - 7 >= 9 * (acked + 1)
    conf = (m.mountpoint / "etc/conf").read_bytes()
    versions = {b"version %d\n" % i * 20: i for i in range(acked + 2)}
    assert conf in versions and versions[conf] >= acked, f"etc/conf is not a complete recent version: {conf[:40]!r}"
    leftovers = [n for _d, _s, files in os.walk(scratch) for n in files if n.startswith(ovs.TMP_PREFIX)]
    assert not leftovers, f"temporaries left in DIR after the remount: {leftovers}"


HUGE = bytes(range(256)) * ((48 << 20) // 256)


def test_sigkill_during_copy_up_shows_the_old_file(mounted: Mounter, tmp_path: Path) -> None:
    archive = tmp_path / "huge.tar"
    b.write_docker_archive(str(archive), [[b.dir("etc"), b.file("etc/huge", HUGE), b.file("etc/small", b"s\n")]])
    scratch = tmp_path / "scratch"
    m = mounted(archive, "--overlay", str(scratch))
    pid = m.daemon_pid()
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'ab'); f.write(b'tail'); f.close(); print('done')",
         str(m.mountpoint / "etc/huge")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd="/")
    try:
        def copying() -> bool:
            d = scratch / "etc"
            return d.is_dir() and any(n.startswith(ovs.TMP_PREFIX) for n in os.listdir(d))

        wait_until(lambda: copying() or writer.poll() is not None, timeout=TIMEOUT, interval=0.001)
        saw_copy = copying()
        os.kill(pid, signal.SIGKILL)
        writer.communicate(timeout=TIMEOUT)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(TIMEOUT)
    assert saw_copy, "the copy-up was not caught in progress (too fast?)"
    assert wait_until(lambda: not process_alive(pid), timeout=TIMEOUT)
    r = mounted.run("umount", m.mountpoint)
    assert r.returncode == 0, r.stderr
    mounted(archive, "--overlay", str(scratch), mountpoint=m.mountpoint)
    data = (m.mountpoint / "etc/huge").read_bytes()
    assert data in (HUGE, HUGE + b"tail"), f"a half-copied file is visible: {len(data)} bytes"
    assert (m.mountpoint / "etc/small").read_bytes() == b"s\n"
    leftovers = [n for _d, _s, files in os.walk(scratch) for n in files if n.startswith(ovs.TMP_PREFIX)]
    assert not leftovers, f"temporaries left in DIR after the remount: {leftovers}"
