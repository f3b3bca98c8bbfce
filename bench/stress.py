#!/usr/bin/env python3
"""Load test (issue 7, item 4): many concurrent readers over a real image, every byte checked.

    python bench/stress.py [--archive A] [--oracle O] [--seconds N] [--readers 32] [--overlay]
                           [--writers 4] [--no-copy-up] [--direct FRACTION] [--seed S] [--keep]

Mounts ARCHIVE (default ``../shared/corpus/small-layered.podman-docker.tar``) with
the CLI of this checkout, then:

1. reads every regular file of the image once, whole, through the mount and checks
   it against the oracle's sha256 (``<image>.oracle.tsv`` beside the archive);
   those contents are the reference for everything after;
2. for ``--seconds`` (default 180) runs ``--readers`` threads of random ``pread``s
   (a random file, half the time weighted by size; a random offset, sometimes past
   EOF; a random length up to 256 KiB), each compared byte for byte with the
   reference.  A quarter of the opens are ``O_DIRECT`` (``--direct``) and a third of
   the others drop the file's page cache first (``POSIX_FADV_DONTNEED``), so the
   daemon, not only the kernel's page cache, serves them.  Meanwhile a ``find`` loop and a ``grep -r`` loop run in
   subprocesses (each run checked: exit status, no stderr, the entry count), and
   the daemon's VmRSS is sampled every second;
3. with ``--overlay``, the mount is writable (``--overlay DIR``) and ``--writers``
   threads create, append to, rename (also over each other), verify and delete
   files in directories of their own, and now and then copy up an image file (a
   chmod to its own mode) that the readers keep checking.  At the end every
   writer's files are checked, then again after an unmount and a remount with
   the same DIR.

It prints a summary and exits 0 only with no error and no wrong byte.  Everything
it mounts is unmounted on the way out, whatever happened (also on Ctrl-C); its
work directory (a fresh one under /tmp) is removed unless ``--keep``.

Needs root (or fusermount3 access), ``find`` and ``grep``.  Standard library only.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mounts import daemon_pids, fusermount_unmount, is_mounted, reap_daemon, rss_of  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
CORPUS = PROJECT.parent / "shared" / "corpus"
DEFAULT_ARCHIVE = CORPUS / "small-layered.podman-docker.tar"
CLI = [sys.executable, str(PROJECT / "cli.py")]

MAX_READ = 256 * 1024
HANG = 60.0  # one read, one find, one grep: longer than this is a hang
GREP_NEEDLE = "PRETTY_NAME"
WRITER_PREFIX = "stress-w"


# -- the oracle ------------------------------------------------------------------------------------


def unescape(field_: str) -> bytes:
    """listing.py's escaping: ``\\xHH`` for every byte outside 0x20..0x7e and the backslash."""
    out = bytearray()
    i = 0
    raw = field_.encode("ascii")
    while i < len(raw):
        if raw[i:i + 2] == b"\\x":
            out.append(int(raw[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


@dataclass(frozen=True)
class OracleFile:
    path: bytes  # absolute in the image
    size: int
    sha256: str
    mode: int


def read_oracle(path: Path) -> tuple[list[OracleFile], int]:
    """The regular files of the oracle, and how many paths it lists."""
    files = []
    n = 0
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            n += 1
            if cols[1] == "f":
                files.append(OracleFile(unescape(cols[0]), int(cols[5]), cols[6], int(cols[2], 8)))
    return files, n


def oracle_for(archive: Path) -> Path:
    return archive.parent / (archive.name.split(".", 1)[0] + ".oracle.tsv")


# -- mounting ----------------------------------------------------------------------------------------


class MountFailed(Exception):
    pass


def mount(archive: Path, mp: str, cache: str, overlay: str | None, log: str) -> int:
    cmd = [*CLI, "mount", "-q", "--cache-dir", cache, "--log-file", log]
    if overlay:
        cmd += ["--overlay", overlay]
    r = subprocess.run([*cmd, str(archive), mp], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise MountFailed(f"mount failed ({r.returncode}): {r.stderr.strip()}")
    pids = daemon_pids("imagefs", mp)
    if len(pids) != 1:
        raise MountFailed(f"mount exited 0 but there is not one daemon for {mp}: {pids} "
                          f"(mounted: {is_mounted(mp)})")
    return pids[0]


def unmount(mp: str) -> list[str]:
    """Unmount ``mp`` with ``imagefs umount``, else fusermount3, and end its daemon; what went wrong, if anything."""
    problems: list[str] = []
    pids = daemon_pids("imagefs", mp)
    if is_mounted(mp):
        cmd = [*CLI, "umount", mp]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                problems.append(f"{' '.join(cmd[-3:])}: {r.stderr.strip()}")
        except subprocess.TimeoutExpired:
            problems.append(f"{cmd[-2]} timed out")
    if is_mounted(mp):
        fusermount_unmount(mp, "fusermount3", problems.append)
    for pid in pids:
        reap_daemon(pid, problems.append)
    if is_mounted(mp):
        problems.append(f"{mp} is still mounted")
    return problems


# -- the work -----------------------------------------------------------------------------------------


@dataclass
class Counters:
    reads: int = 0
    direct: int = 0
    bytes_checked: int = 0
    errors: int = 0
    wrong_bytes: int = 0
    examples: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    def error(self, what: str, n_wrong: int = 0, kind: str | None = None) -> None:
        if n_wrong:
            self.wrong_bytes += n_wrong
        else:
            self.errors += 1
        kind = kind or ("wrong bytes" if n_wrong else what.split(":")[0])
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(what)


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def count_wrong(got: bytes, want: bytes) -> int:
    n = abs(len(got) - len(want))
    return n + sum(1 for x, y in zip(got, want) if x != y)


class Stress:
    def __init__(self, args: argparse.Namespace, mp: str, files: list[OracleFile], n_paths: int) -> None:
        self.args = args
        self.mp = mp
        self.mpb = os.fsencode(mp)
        self.files = files
        self.n_paths = n_paths
        self.content: dict[bytes, bytes] = {}
        self.stop = threading.Event()
        self.counters: list[Counters] = []
        self.lock = threading.Lock()
        self.rss: list[tuple[float, float]] = []  # (seconds, VmRSS in MB)
        self.runs: dict[str, list[float]] = {}
        self.writer_ops: dict[str, int] = {}
        self.writer_files: list[dict[str, bytes]] = []

    def counter(self) -> Counters:
        c = Counters()
        with self.lock:
            self.counters.append(c)
        return c

    # phase 1 -------------------------------------------------------------------------------------

    def verify_all(self) -> tuple[int, int]:
        c = self.counter()
        ok = total = 0
        for f in self.files:
            try:
                with open(self.mpb + f.path, "rb", buffering=0) as fh:
                    data = fh.read()
            except OSError as e:
                c.error(f"reading {f.path!r}: {e!r}")
                continue
            total += len(data)
            if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
                c.error(f"{f.path!r}: {len(data)} bytes whose sha256 is not the oracle's", n_wrong=max(1, len(data)))
                continue
            self.content[f.path] = data
            ok += 1
        return ok, total

    # phase 2: readers ---------------------------------------------------------------------------------

    def reader(self, seed: int) -> None:
        c = self.counter()
        rnd = random.Random(seed)
        paths = [f.path for f in self.files if f.path in self.content]
        weights = [max(1, len(self.content[p])) for p in paths]
        while not self.stop.is_set():
            path = rnd.choice(paths) if rnd.random() < 0.5 else rnd.choices(paths, weights)[0]
            want_all = self.content[path]
            direct = rnd.random() < self.args.direct
            flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
            try:
                fd = os.open(self.mpb + path, flags)
            except OSError as e:
                c.error(f"open {path!r}: {e!r}", kind=f"reader open {errname(e)}")
                continue
            try:
                if not direct and rnd.random() < 0.33:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                for _ in range(rnd.randint(1, 8)):
                    size = len(want_all)
                    off = rnd.randint(0, size + 4096) if rnd.random() < 0.05 else rnd.randint(0, max(0, size))
                    length = min(MAX_READ, int(2 ** rnd.uniform(0, 18)))
                    try:
                        got = os.pread(fd, length, off)
                    except OSError as e:
                        c.error(f"pread {path!r} {off}+{length}{' (O_DIRECT)' if direct else ''}: {e!r}",
                                kind=f"reader pread{' O_DIRECT' if direct else ''} {errname(e)}")
                        continue
                    want = want_all[off:off + length]
                    c.reads += 1
                    c.direct += direct
                    c.bytes_checked += len(want)
                    if got != want:
                        c.error(f"{path!r} {off}+{length}: {count_wrong(got, want)} wrong bytes "
                                f"({len(got)} read, {len(want)} expected)", n_wrong=count_wrong(got, want))
            finally:
                os.close(fd)

    # phase 2: find and grep ------------------------------------------------------------------------------

    def _loop(self, name: str, cmd: list[str], check) -> None:  # type: ignore[no-untyped-def]
        """Run ``cmd`` again and again while the load lasts.  A run may be slow under load (the
        daemon serves one request at a time); it is a hang only if it has not finished
        ``HANG`` seconds after the load stopped (or after ``10 * HANG`` in all)."""
        c = self.counter()
        while not self.stop.is_set():
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            out: dict[str, bytes] = {}
            reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())),
                                      daemon=True)
            reader.start()
            stopped_at = None
            while reader.is_alive():
                reader.join(0.5)
                now = time.monotonic()
                if self.stop.is_set() and stopped_at is None:
                    stopped_at = now
                if (stopped_at is not None and now - stopped_at > HANG) or now - t0 > 10 * HANG:
                    proc.kill()
                    reader.join(HANG)
                    c.error(f"{name} did not finish {now - t0:.0f}s after it started (hang)", kind=f"{name} hang")
                    return
            took = time.monotonic() - t0
            r = subprocess.CompletedProcess(cmd, proc.returncode, out.get("stdout", b""), out.get("stderr", b""))
            problem = check(r)
            if problem:
                c.error(f"{name}: {problem}", kind=f"{name} failed")
            with self.lock:
                runs = self.runs.setdefault(name, [])
                runs.append(took)

    def find_loop(self) -> None:
        cmd = ["find", self.mp, "-xdev", "(", "-path", f"{self.mp}/{WRITER_PREFIX}*", "-prune", ")", "-o", "-print0"]
        want = self.n_paths + 1  # and the root

        def check(r: subprocess.CompletedProcess[bytes]) -> str | None:
            if r.returncode != 0 or r.stderr:
                return f"exit {r.returncode}: {r.stderr[:200]!r}"
            n = r.stdout.count(b"\0")
            return None if n == want else f"{n} entries, expected {want}"

        self._loop("find", cmd, check)

    def grep_loop(self) -> None:
        cmd = ["grep", "-r", "-l", "-D", "skip", f"--exclude-dir={WRITER_PREFIX}*", "-e", GREP_NEEDLE, self.mp]
        expected = {self.mpb + f.path for f in self.files
                    if GREP_NEEDLE.encode() in self.content.get(f.path, b"")}

        def check(r: subprocess.CompletedProcess[bytes]) -> str | None:
            if r.returncode not in (0, 1) or r.stderr:
                return f"exit {r.returncode}: {r.stderr[:200]!r}"
            found = set(r.stdout.splitlines())
            # grep skips what it takes for binary only with -I; without it, every match is listed
            missing = {p for p in expected if b"\n" not in p} - found
            return f"missed {sorted(missing)[:3]}" if missing else None

        self._loop("grep", cmd, check)

    def rss_loop(self, pid: int) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(1.0):
            try:
                v = rss_of(pid).get("VmRSS")
            except OSError:  # the daemon is gone
                continue
            if v is not None:
                self.rss.append((time.monotonic() - t0, v))

    # phase 2: overlay writers -------------------------------------------------------------------------------

    def writer(self, n: int, seed: int) -> None:
        c = self.counter()
        rnd = random.Random(seed)
        d = os.path.join(self.mp, f"{WRITER_PREFIX}{n}")
        files: dict[str, bytes] = {}
        self.writer_files.append(files)
        ops: dict[str, int] = {}
        counter = 0
        regular = [f for f in self.files if f.path in self.content]
        try:
            os.mkdir(d)
        except OSError as e:
            c.error(f"mkdir {d}: {e!r}")
            return

        def new_name() -> str:
            nonlocal counter
            counter += 1
            return f"f{counter}"

        while not self.stop.is_set():
            op = rnd.choices(["create", "append", "rename", "replace", "verify", "delete", "copy-up"],
                             [3, 3, 2, 1, 4, 1 if len(files) > 40 else 0, 0 if self.args.no_copy_up else 0.3])[0]
            if op != "create" and op != "copy-up" and not files:
                op = "create"
            try:
                if op == "create":
                    name = new_name()
                    data = rnd.randbytes(rnd.randint(0, 128 * 1024))
                    with open(os.path.join(d, name), "xb") as f:
                        f.write(data)
                    files[name] = data
                elif op == "append":
                    name = rnd.choice(list(files))
                    if len(files[name]) > 512 * 1024:
                        continue
                    extra = rnd.randbytes(rnd.randint(1, 64 * 1024))
                    with open(os.path.join(d, name), "ab") as f:
                        f.write(extra)
                    files[name] += extra
                elif op == "rename":
                    name = rnd.choice(list(files))
                    new = new_name()
                    os.rename(os.path.join(d, name), os.path.join(d, new))
                    files[new] = files.pop(name)
                elif op == "replace":
                    if len(files) < 2:
                        continue
                    a, b = rnd.sample(list(files), 2)
                    os.replace(os.path.join(d, a), os.path.join(d, b))
                    files[b] = files.pop(a)
                elif op == "verify":
                    name = rnd.choice(list(files))
                    with open(os.path.join(d, name), "rb") as f:
                        got = f.read()
                    c.reads += 1
                    c.bytes_checked += len(files[name])
                    if got != files[name]:
                        c.error(f"writer {n}: {name}: {count_wrong(got, files[name])} wrong bytes",
                                n_wrong=count_wrong(got, files[name]))
                elif op == "delete":
                    name = rnd.choice(list(files))
                    os.unlink(os.path.join(d, name))
                    del files[name]
                elif op == "copy-up":
                    f_ = rnd.choice(regular)
                    os.chmod(self.mpb + f_.path, stat.S_IMODE(f_.mode))
            except OSError as e:
                c.error(f"writer {n}: {op}: {e!r}", kind=f"writer {op} {errname(e)}")
            ops[op] = ops.get(op, 0) + 1
        with self.lock:
            for k, v in ops.items():
                self.writer_ops[k] = self.writer_ops.get(k, 0) + v

    def check_writers(self, label: str) -> None:
        c = self.counter()
        for n, files in enumerate(self.writer_files):
            d = os.path.join(self.mp, f"{WRITER_PREFIX}{n}")
            try:
                names = set(os.listdir(d))
            except OSError as e:
                c.error(f"{label}: listing {d}: {e!r}")
                continue
            if names != set(files):
                c.error(f"{label}: writer {n}: files {sorted(names ^ set(files))[:5]} differ")
            for name, data in files.items():
                try:
                    with open(os.path.join(d, name), "rb") as f:
                        got = f.read()
                except OSError as e:
                    c.error(f"{label}: writer {n}: {name}: {e!r}")
                    continue
                c.bytes_checked += len(data)
                if got != data:
                    c.error(f"{label}: writer {n}: {name}: wrong bytes", n_wrong=count_wrong(got, data))


# -- main ------------------------------------------------------------------------------------------------------


def mib(mb: float) -> str:
    return f"{mb * 1e6 / 2**20:.1f} MiB"


def run(args: argparse.Namespace) -> int:
    archive = Path(args.archive).resolve()
    oracle = Path(args.oracle) if args.oracle else oracle_for(archive)
    if not archive.is_file():
        print(f"stress: {archive} is missing (the corpus lives in {CORPUS})", file=sys.stderr)
        return 2
    if not oracle.is_file():
        print(f"stress: no oracle {oracle} for {archive.name} (give one with --oracle)", file=sys.stderr)
        return 2
    files, n_paths = read_oracle(oracle)
    work = Path(tempfile.mkdtemp(prefix="imagefs-stress-"))
    mp = str(work / "mnt")
    os.mkdir(mp)
    overlay = str(work / "overlay") if args.overlay else None
    log = str(work / "daemon.log")
    problems: list[str] = []
    st = Stress(args, mp, files, n_paths)
    threads: list[threading.Thread] = []
    t_start = time.monotonic()
    try:
        pid = mount(archive, mp, str(work / "cache"), overlay, log)
        print(f"stress: {archive.name} mounted at {mp} (daemon {pid}{', overlay ' + overlay if overlay else ''})",
              flush=True)
        ok, total = st.verify_all()
        print(f"stress: {ok}/{len(files)} files match the oracle ({total:,} bytes); "
              f"{args.seconds:.0f} s of load with {args.readers} readers"
              f"{f' and {args.writers} writers' if overlay else ''}", flush=True)
        if not st.content:
            raise MountFailed("no file could be read through the mount; nothing to stress")
        seed = args.seed
        threads = [threading.Thread(target=st.reader, args=(seed + i,), daemon=True) for i in range(args.readers)]
        threads += [threading.Thread(target=st.find_loop, daemon=True),
                    threading.Thread(target=st.grep_loop, daemon=True),
                    threading.Thread(target=st.rss_loop, args=(pid,), daemon=True)]
        if overlay:
            threads += [threading.Thread(target=st.writer, args=(i, seed + 1000 + i), daemon=True)
                        for i in range(args.writers)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
            left = deadline - time.monotonic()
            if left > 1:
                reads = sum(c.reads for c in st.counters)
                bad = sum(c.errors for c in st.counters) + sum(c.wrong_bytes for c in st.counters)
                rss = st.rss[-1][1] if st.rss else 0
                print(f"stress: {args.seconds - left:5.0f} s: {reads:,} reads, {bad} errors/wrong bytes, "
                      f"RSS {mib(rss)}", flush=True)
        st.stop.set()
        for t in threads:
            t.join(HANG + 10)
        hung = [t for t in threads if t.is_alive()]
        if hung:
            st.counter().error(f"{len(hung)} threads still blocked {HANG:.0f}s after the end (hang)")
        if overlay and not hung:
            st.check_writers("before unmount")
            problems += unmount(mp)
            pid2 = mount(archive, mp, str(work / "cache"), overlay, log)
            st.check_writers("after remount")
            print(f"stress: remounted with the same overlay (daemon {pid2}); writers' files checked again",
                  flush=True)
    except KeyboardInterrupt:
        st.stop.set()
        problems.append("interrupted")
    except MountFailed as e:
        st.stop.set()
        problems.append(str(e))
    finally:
        st.stop.set()
        problems += unmount(mp)
        try:
            with open(log, errors="replace") as f:
                daemon_log = f.read().splitlines()
        except OSError:
            daemon_log = []
        if not args.keep and not is_mounted(mp):
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"stress: kept {work}")

    reads = sum(c.reads for c in st.counters)
    direct = sum(c.direct for c in st.counters)
    checked = sum(c.bytes_checked for c in st.counters)
    errors = sum(c.errors for c in st.counters) + len(problems)
    wrong = sum(c.wrong_bytes for c in st.counters)
    examples = [e for c in st.counters for e in c.examples] + problems
    kinds: dict[str, int] = {}
    for c in st.counters:
        for k, v in c.kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    elapsed = time.monotonic() - t_start
    rss = [v for _t, v in st.rss]
    print()
    print(f"imagefs stress summary: {archive.name}, {args.seconds:.0f} s load ({elapsed:.0f} s in all), "
          f"{args.readers} readers, overlay: {'yes, ' + str(args.writers) + ' writers' if overlay else 'no'}")
    print(f"  oracle check: {len(st.content)}/{len(files)} files")
    print(f"  reads done: {reads:,} ({direct:,} O_DIRECT); bytes checked: {checked:,} ({checked / 2**30:.2f} GiB)")
    for name in ("find", "grep"):
        runs = st.runs.get(name, [])
        took = f" (seconds each: min {min(runs):.1f}, max {max(runs):.1f})" if runs else ""
        print(f"  {name} runs: {len(runs)}{took}")
    if overlay:
        print("  writer ops: " + ", ".join(f"{k} {v:,}" for k, v in sorted(st.writer_ops.items())))
    if rss:
        head = rss[5:15] or rss[:10]
        tail = rss[-10:]
        print(f"  daemon VmRSS: min {mib(min(rss))}, max {mib(max(rss))}, last {mib(rss[-1])} "
              f"({len(rss)} samples; mean of s 5-15 {mib(sum(head) / len(head))}, "
              f"of the last 10 s {mib(sum(tail) / len(tail))})")
    print(f"  errors: {errors}; wrong bytes: {wrong}"
          + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + ")" if kinds else ""))
    for e in examples[:10]:
        print(f"    {e}")
    if daemon_log:
        print(f"  daemon log: {len(daemon_log)} lines; the last ones:")
        for line in daemon_log[-10:]:
            print(f"    {line[:300]}")
    verdict = errors == 0 and wrong == 0
    print(f"RESULT: {'PASS' if verdict else 'FAIL'}")
    return 0 if verdict else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", default=str(DEFAULT_ARCHIVE), help="image archive [%(default)s]")
    p.add_argument("--oracle", default=None, help="oracle listing [<image>.oracle.tsv beside the archive]")
    p.add_argument("--seconds", type=float, default=180.0, help="duration of the load [%(default)s]")
    p.add_argument("--readers", type=int, default=32, help="reader threads [%(default)s]")
    p.add_argument("--overlay", action="store_true", help="mount with --overlay and run writers too")
    p.add_argument("--writers", type=int, default=4, help="writer threads with --overlay [%(default)s]")
    p.add_argument("--no-copy-up", action="store_true", help="writers never copy up image files")
    p.add_argument("--direct", type=float, default=0.25, metavar="FRACTION",
                   help="fraction of the readers' opens with O_DIRECT [%(default)s]")
    p.add_argument("--seed", type=int, default=1, help="random seed [%(default)s]")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
