#!/usr/bin/env python3
"""Coverage-guided fuzzing of imagefs with atheris (libFuzzer), for a bounded time.

    pip install atheris
    python tests/fuzz/atheris_fuzz.py scan    --seconds 60     # tarscan.scan on layer bytes
    python tests/fuzz/atheris_fuzz.py archive --seconds 60     # Archive + read_images (+ the library pipeline)
    python tests/fuzz/atheris_fuzz.py manifest --seconds 60    # the same, libFuzzer mutating one JSON member

``archive`` feeds whole outer tars (header checksums make most mutants a plain
"not a tar"); ``manifest`` is structure-aware: byte 0 picks a seed archive,
byte 1 one of its JSON members (manifest.json, index.json, repositories,
configs, OCI manifests, legacy <id>/json), byte 2 drops manifest.json /
index.json / repositories, and the rest of the input *is* that member's new
content, so libFuzzer (with tests/fuzz/json.dict) mutates JSON directly.

Not collected by pytest (no test_ prefix).  The targets are those of
tests/fuzz/fuzztargets.py, seeded from tests/fuzz/seeds/ (and every file in
tests/fuzz/regressions/ of the same kind).  Known bugs (fuzztargets.KNOWN_BUGS)
are counted and fuzzing goes on; any other exception, invariant violation or
runaway (more than --input-timeout seconds on one input) is counted by its
signature and its smallest input kept in --save-dir (default
tests/fuzz/regressions/), and fuzzing goes on too.  At the end (and every
--report seconds) a summary is printed and written to --stats as JSON:
inputs tried, known-bug hits, distinct new failures.

Extra arguments after ``--`` go to libFuzzer (e.g. ``-- -jobs=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["imagefs"]):
    import fuzztargets as ft  # noqa: E402
    from imagefs.errors import ImageFSError  # noqa: E402,F401

SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
# libFuzzer owns ITIMER_REAL/SIGALRM (its -timeout); our per-input deadline counts CPU time instead.
ft.DEADLINE_TIMER = (__import__("signal").ITIMER_VIRTUAL, __import__("signal").SIGVTALRM)


class Campaign:
    def __init__(self, target: str, seconds: float, input_timeout: float, save_dir: Path, stats: Path,
                 report: float) -> None:
        self.target = target
        self.seconds = seconds
        self.input_timeout = input_timeout
        self.save_dir = save_dir
        self.stats_path = stats
        self.report_every = report
        self.start = time.monotonic()
        self.last_report = self.start
        self.inputs = 0
        self.outcomes: Counter[str] = Counter()
        self.known: Counter[str] = Counter()
        self.new: Counter[str] = Counter()
        self.new_files: dict[str, str] = {}
        self.tmp = tempfile.mkdtemp(prefix="imagefs-atheris-", dir=SCRATCH)
        self.last_payload = b""

    # -- one input -------------------------------------------------------------------------

    def one(self, data: bytes) -> None:
        self.inputs += 1
        try:
            with ft.deadline(self.input_timeout):
                self.outcomes[self._run(data)] += 1
        except (Exception, ft.Runaway) as e:  # noqa: BLE001 - every failure is classified
            bug = ft.known_bug(e)
            if bug is not None:
                self.known[bug.id] += 1
            else:
                sig = ft.signature(e) if not isinstance(e, ft.Runaway) else f"Runaway@{ft._innermost_imagefs_frame(e)}"
                if sig not in self.new:
                    print(f"\n[imagefs-fuzz] NEW failure {sig}: {str(e)[:300]}", file=sys.stderr, flush=True)
                self.new[sig] += 1
                if self.target == "manifest":  # keep the archive it built, replayable as is
                    kind, payload = "archive", self.last_payload
                elif self.target == "scan":  # the bytes scanned (checksums fixed)
                    kind, payload = "scan", self.last_payload
                else:
                    kind, payload = "archive", data
                p = ft.save_smallest(kind, sig, payload, self.save_dir)
                self.new_files[sig] = str(p)
        now = time.monotonic()
        if now - self.last_report >= self.report_every:
            self.report()
        if now - self.start >= self.seconds:
            self.report(final=True)
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)
            os._exit(0)

    def _run(self, data: bytes) -> str:
        if self.target == "scan":
            if data[:1] and data[0] & 1:  # odd first byte: make every header's checksum right
                data = fix_checksums(data)
            self.last_payload = data
            a = ft.scan_target(data, True)
            ft.scan_target(data, False)
            return "TarFormatError" if isinstance(a, Exception) else "scanned"
        path = os.path.join(self.tmp, "archive.tar")
        if self.target == "manifest":
            if not manifest_archive(data, path):
                return "unused"
            with open(path, "rb") as f:
                self.last_payload = f.read()
        else:
            with open(path, "wb") as f:
                f.write(data)
        try:
            result = ft.archive_target(path)
            if not isinstance(result, list):
                return f"refused: {type(result).__name__}"
            cache = os.path.join(self.tmp, "cache")
            built = ft.build_target(path, cache, timeout=0)
            return f"built: {type(built).__name__}"
        finally:
            for name in os.listdir(self.tmp):
                p = os.path.join(self.tmp, name)
                if os.path.isdir(p):
                    import shutil

                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.unlink(p)

    # -- reporting -------------------------------------------------------------------------

    def summary(self) -> dict[str, object]:
        return {
            "target": self.target,
            "seconds": round(time.monotonic() - self.start, 1),
            "inputs": self.inputs,
            "outcomes": dict(self.outcomes),
            "known_bug_hits": dict(self.known),
            "new_failures": dict(self.new),
            "new_failure_files": self.new_files,
            "distinct_failures": len(self.known) + len(self.new),
        }

    def report(self, final: bool = False) -> None:
        self.last_report = time.monotonic()
        s = self.summary()
        self.stats_path.write_text(json.dumps(s, indent=1, sort_keys=True))
        label = "FINAL" if final else "progress"
        print(f"\n[imagefs-fuzz] {label}: {s['inputs']} inputs in {s['seconds']} s; known bugs {s['known_bug_hits']}; "
              f"new failures {s['new_failures']}", file=sys.stderr, flush=True)


def fix_checksums(data: bytes) -> bytes:
    """Walk the headers the way the scanner will and give each a correct checksum, so
    that byte-level mutations reach the header parsing instead of the checksum test."""
    out = bytearray(data)
    pos = 0
    while pos + 512 <= len(out):
        block = out[pos:pos + 512]
        if block == bytes(512):
            break
        out[pos:pos + 512] = ft.with_checksum(block)
        field = bytes(block[124:136])
        if field[0] & 0x80:
            size = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big") if field[0] != 0xFF else 0
        else:
            try:
                size = int(field.split(b"\0")[0].strip() or b"0", 8)
            except ValueError:
                size = 0
        if block[156:157] in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0
        pos += 512 + (min(max(size, 0), len(out)) + 511) // 512 * 512
    return bytes(out)


def _layouts() -> list[tuple[str, list[tuple[str, bytes]], list[tuple[str, str]]]]:
    import tarfile

    out = []
    for p in sorted((ft.SEEDS / "archives").glob("*.tar")):
        files, links = [], []
        with tarfile.open(p) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    files.append((m.name, tf.extractfile(m).read()))  # type: ignore[union-attr]
                elif m.issym():
                    links.append((m.name, m.linkname))
        out.append((p.name, files, links))
    return out


LAYOUTS = _layouts()


def _json_members(files: list[tuple[str, bytes]]) -> list[int]:
    return [i for i, (_n, b) in enumerate(files) if b[:1] in (b"{", b"[")]


def manifest_archive(data: bytes, path: str) -> bool:
    """Build the archive a ``manifest`` input describes (see the module docstring)."""
    from builder import write_tar

    if len(data) < 3:
        return False
    _name, files, links = LAYOUTS[data[0] % len(LAYOUTS)]
    jsons = _json_members(files)
    i = jsons[data[1] % len(jsons)]
    drop = {n for bit, n in ((1, "manifest.json"), (2, "index.json"), (4, "repositories")) if data[2] & bit}
    members = [(n, data[3:] if k == i else b) for k, (n, b) in enumerate(files) if n not in drop or k == i]
    write_tar(path, members, links)
    return True


def manifest_seeds(dest: Path) -> None:
    for li, (_name, files, _links) in enumerate(LAYOUTS):
        for mi, i in enumerate(_json_members(files)):
            (dest / f"seed-{li}-{mi}").write_bytes(bytes([li, mi, 0]) + files[i][1])


def corpus_dirs(target: str, work: Path) -> list[str]:
    """A writable corpus dir (libFuzzer adds to the first) plus the read-only seeds."""
    live = work / f"corpus-{target}"
    live.mkdir(parents=True, exist_ok=True)
    if target == "manifest":
        seed_dir = work / "seeds-manifest"
        seed_dir.mkdir(exist_ok=True)
        manifest_seeds(seed_dir)
        return [str(live), str(seed_dir)]
    seeds = [ft.SEEDS / ("layers" if target == "scan" else "archives")]
    regress = work / f"regressions-{target}"
    regress.mkdir(exist_ok=True)
    prefix = "scan-" if target == "scan" else ("archive-", "build-")
    for p in ft.REGRESSIONS.glob("*"):
        if p.name.startswith(prefix) and p.suffix == ".tar":
            (regress / p.name).write_bytes(p.read_bytes())
    return [str(live), *map(str, seeds), str(regress)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=["scan", "archive", "manifest"])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--input-timeout", type=float, default=5.0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "imagefs-atheris")
    ap.add_argument("--save-dir", type=Path, default=ft.REGRESSIONS)
    ap.add_argument("--stats", type=Path, default=None)
    ap.add_argument("--report", type=float, default=30)
    ap.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    stats = args.stats or args.workdir / f"stats-{args.target}.json"
    c = Campaign(args.target, args.seconds, args.input_timeout, args.save_dir, stats, args.report)
    max_len = 1 << 17
    argv = [sys.argv[0], f"-max_len={max_len}", "-rss_limit_mb=4096", "-timeout=120",
            f"-artifact_prefix={args.workdir}/", *args.libfuzzer]
    if args.target == "manifest":
        argv.append(f"-dict={HERE / 'json.dict'}")
    argv += corpus_dirs(args.target, args.workdir)
    atheris.Setup(argv, c.one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
