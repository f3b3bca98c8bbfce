"""Mount every archive of ../shared/corpus and compare `listing.py` of the mount with the oracle.

The oracle of ``<image>.<format>.tar`` is ``<image>.oracle.tsv`` (structure,
owners, modes, content, link targets, hard-link groups, xattrs) and
``<image>.oracle.mtime.tsv`` (path, type, whole-second mtime), as the corpus
README describes.  ``multi.podman-docker.tar`` holds several images and is
mounted once per image with ``--image``.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TIMEOUT, Mounter, corpus_file, run_cli

pytestmark = pytest.mark.corpus

IMAGES = ("small-base", "small-layered", "vfswh")
UNCOMPRESSED = [f"{i}.{fmt}.tar" for i in IMAGES for fmt in ("podman-docker", "skopeo-docker")] + [
    f"{i}.legacy-v1.tar" for i in ("small-base", "small-layered")
]
COMPRESSED = [f"{i}.{fmt}" for i in IMAGES
              for fmt in ("podman-docker.tar.gz", "podman-oci.tar", "skopeo-oci-gzip.tar", "skopeo-oci-zstd.tar")]
MULTI = "multi.podman-docker.tar"
MULTI_IMAGES = {  # --image -> oracle
    "localhost/small-base:latest": "small-base",
    "localhost/small-layered:latest": "small-layered",
    "localhost/small-layered:alias": "small-layered",
}

CASES = (
    [pytest.param(a, None, a.split(".")[0], id=a) for a in UNCOMPRESSED]
    + [pytest.param(MULTI, ref, oracle, id=f"{MULTI}[{ref}]") for ref, oracle in MULTI_IMAGES.items()]
    + [pytest.param(a, None, a.split(".")[0], id=a) for a in COMPRESSED]
)


def _diff(want: str, got: str, what: str) -> str:
    lines = list(difflib.unified_diff(want.splitlines(), got.splitlines(), f"oracle {what}", "mount", lineterm="", n=0))
    more = f"\n... and {len(lines) - 60} more diff lines" if len(lines) > 60 else ""
    return "\n".join(lines[:60]) + more


def _listing(corpus: Path, mountpoint: Path) -> tuple[str, str]:
    """(listing.py MOUNT, its mtime view: path, type, mtime) -- one walk with --mtime.

    ``listing.py --mtime`` prints exactly the plain listing plus a last column
    (header included), so both comparisons come from one walk of the mount.
    """
    r = subprocess.run([sys.executable, str(corpus / "listing.py"), "--mtime", str(mountpoint)],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"listing.py failed: {r.stderr[-2000:]}"
    plain, mtimes = [], []
    for i, line in enumerate(r.stdout.splitlines()):
        fields = line.split("\t")
        assert fields[-1] == "mtime" if i == 0 else len(fields) == 11, line
        plain.append("\t".join(fields[:-1]))
        if i > 0:
            mtimes.append("\t".join((fields[0], fields[1], fields[10])))
    return "\n".join(plain) + "\n", "\n".join(mtimes) + "\n"


@pytest.mark.fuse
@pytest.mark.parametrize("archive, image, oracle", CASES)
def test_mount_matches_oracle(mounted: Mounter, corpus_dir: Path, archive: str, image: str | None,
                              oracle: str) -> None:
    m = mounted(corpus_file(corpus_dir, archive), image=image)
    got, got_mtimes = _listing(corpus_dir, m.mountpoint)
    want = (corpus_dir / f"{oracle}.oracle.tsv").read_text()
    assert got == want, "listing differs from the oracle:\n" + _diff(want, got, "tsv")
    # mtimes: the body of the mtime oracle (its header names the types it covers)
    want_mtimes = "".join((corpus_dir / f"{oracle}.oracle.mtime.tsv").read_text().splitlines(True)[1:])
    assert got_mtimes == want_mtimes, "mtimes differ from the oracle:\n" + _diff(want_mtimes, got_mtimes, "mtime")


def test_every_corpus_archive_is_covered(corpus_dir: Path) -> None:
    """A new archive in the corpus must get a case here."""
    present = {p.name for p in corpus_dir.iterdir() if p.name.endswith((".tar", ".tar.gz"))}
    assert present == set(UNCOMPRESSED) | set(COMPRESSED) | {MULTI}


def test_images_of_the_multi_archive(corpus_dir: Path, imagefs_bin: list[str]) -> None:
    r = run_cli(imagefs_bin, "images", "--json", corpus_dir / MULTI)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["tags"] for row in rows] == [
        ["localhost/small-base:latest"], ["localhost/small-layered:latest", "localhost/small-layered:alias"],
    ]
    assert [row["layers"] for row in rows] == [1, 7]
