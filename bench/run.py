#!/usr/bin/env python3
"""imagefs against ratarmount, GNU tar and the extracted tree: one command, every target row.

    python bench/run.py [--quick] [--workdir DIR] [--profile] [--only SECTIONS] [--cap SECONDS]

Generates the test archives once (bench/work/archives, reused), extracts the
trees once, installs ratarmount and py-spy into bench/work/ratarmount-venv
once, then measures everything side by side in this run and prints issue 6's
target table (measured, peer, ratio, target, PASS/FAIL) and issue 3's
side-by-side table.  Results go to bench/work/results.{json,md}
(results-quick.* with --quick).  See bench/README.md for what each row
means and how it is measured.

Run it with the project's interpreter (``.venv/bin/python bench/run.py``) or
point ``--imagefs`` at an imagefs command; the benchmark itself needs only
the standard library.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gen  # noqa: E402
import spy  # noqa: E402
import workloads as wl  # noqa: E402
from mounts import BenchError, Mounts, clear_stale, is_mounted, mounted_paths, reset_dir, rss_of, sched_times  # noqa: E402
from report import markdown, table, to_json  # noqa: E402
from rows import MIB, build_rows, k  # noqa: E402
from tools import PROJECT, Tools, find_tools  # noqa: E402

SECTIONS = ("tree", "small", "layers", "bigfile", "gzip")


@dataclasses.dataclass(frozen=True, slots=True)
class Scale:
    """Sizes of one kind of run.  ``cap``: seconds after which one timed command is cut."""

    name: str
    tree: int
    small: int
    layers: int
    bigfile: int
    gzip: int
    cap: float
    preads: int


FULL = Scale("full", tree=300_000, small=30_000, layers=100, bigfile=200 * MIB, gzip=1024 * MIB, cap=45.0, preads=200)
QUICK = Scale("quick", tree=30_000, small=3_000, layers=100, bigfile=200 * MIB, gzip=100 * MIB, cap=8.0, preads=200)


class Bench:
    """One run: the data, the mounts, and every figure measured (``m``, by key)."""

    def __init__(self, scale: Scale, workdir: str, tools: Tools, mounts: Mounts, log: Callable[[str], None]) -> None:
        self.s = scale
        self.w = workdir
        self.tools = tools
        self.mounts = mounts
        self.log = log
        self.m: dict[str, Any] = {}
        self.data: dict[str, dict[str, Any]] = {}
        self.profile: dict[str, Any] = {}
        self.errors: list[str] = []

    # -- paths ----------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.w, *parts)

    def mp(self, name: str) -> str:
        return self.path("mnt", name)

    def fresh_cache(self, name: str) -> str:
        return reset_dir(self.path("run", f"imagefs-cache-{name}"))

    def fresh_ratar_index(self, name: str) -> str:
        os.makedirs(self.path("run"), exist_ok=True)
        index = self.path("run", f"ratarmount-{name}.index.sqlite")
        if os.path.exists(index):
            os.unlink(index)
        return index

    # -- data -----------------------------------------------------------------

    def prepare(self, sections: tuple[str, ...]) -> None:
        """Generate (or reuse) the archives and the extracted trees the sections need."""
        arch = self.path("archives")
        os.makedirs(arch, exist_ok=True)
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        if "tree" in sections or "layers" in sections or "profile" in sections:
            steps.append(("tree", lambda: gen.build_tree_image(arch, self.s.tree)))
        if "small" in sections:
            steps.append(("small", lambda: gen.build_tree_image(arch, self.s.small)))
        if "layers" in sections:
            steps.append(("layers", lambda: gen.build_layered_image(arch, self.s.tree, self.s.layers)))
        if "bigfile" in sections:
            steps.append(("bigfile", lambda: gen.build_bigfile_image(arch, self.s.bigfile)))
        if "gzip" in sections:
            steps.append(("gzip", lambda: gen.build_gzip_image(arch, self.s.gzip)))
        for name, build in steps:
            t0 = time.perf_counter()
            self.data[name] = build()
            dt = time.perf_counter() - t0
            if dt > 1:
                self.log(f"generated {name} archive in {dt:.1f}s: {self.data[name]['archive_path']}")
        for name in ("tree", "bigfile"):
            if name in self.data and (name in sections):
                self.data[name]["extracted"] = self._extract(self.data[name]["layer_path"])

    def _extract(self, layer: str) -> str:
        dest = self.path("extract", os.path.basename(layer).removesuffix(".layer.tar"))
        stamp = dest + ".done"
        if os.path.exists(stamp) and os.path.isdir(dest):
            return dest
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(tmp)
        t0 = time.perf_counter()
        subprocess.run(["tar", "-xf", layer, "-C", tmp], check=True)
        os.rename(tmp, dest)
        with open(stamp, "w") as f:
            json.dump({"layer": layer, "seconds": time.perf_counter() - t0}, f)
        self.log(f"extracted {os.path.basename(layer)} in {time.perf_counter() - t0:.1f}s")
        return dest

    # -- helpers --------------------------------------------------------------

    def timed(self, key: str, t: wl.Timing) -> wl.Timing:
        self.m[key] = t
        flag = " (cut at the cap)" if t.capped else f" [{t.note}]" if t.note else ""
        self.log(f"  {key}: {t.seconds:.3f}s{flag}")
        return t

    def workload(self, what: str, root: str) -> wl.Timing:
        """One pass of ``what`` over ``root``: ``find`` (-printf), ``ls`` (-lR) or ``grep`` (-r NEEDLE)."""
        if what == "find":
            return wl.find_printf(root, self.s.cap)
        if what == "ls":
            return wl.ls_lr(root, self.s.cap)
        return wl.grep_r(root, gen.NEEDLE, self.s.cap)

    def passes(self, prefix: str, root: str, what: tuple[str, ...], pid: int | None = None) -> None:
        """First and second pass of each workload in ``what`` over ``root``.

        A second pass only means something after a whole first pass: when the
        first was cut at the cap, the second is not run (and its row says n/a).
        With the serving daemon's ``pid``, the time it spent on a CPU and
        waiting for one in each pass is kept too (``<key>.sched``): on-CPU far
        below the wall time means the pass waits on request round trips, not
        on the daemon's code; a long wait means the machine was busy.
        """
        for w in what:
            for n in (1, 2):
                s0 = sched_times(pid) if pid else None
                t = self.workload(w, root)
                self.timed(f"{prefix}.{w}{n}", t)
                s1 = sched_times(pid) if pid else None
                if s0 is not None and s1 is not None:
                    on_cpu, waiting = round(s1[0] - s0[0], 2), round(s1[1] - s0[1], 2)
                    self.m[f"{prefix}.{w}{n}.sched"] = {"on_cpu": on_cpu, "waiting": waiting}
                    self.log(f"  {prefix}.{w}{n}: daemon {on_cpu:.2f}s on a CPU, {waiting:.2f}s waiting for one")
                if t.capped:
                    self.log(f"  {prefix}.{w}2: not run (the first pass was cut)")
                    break

    def mount(self, kind: str, name: str, archive: str, cache: str, key: str | None = None) -> Any:
        if kind == "imagefs":
            mnt = self.mounts.imagefs(archive, self.mp(f"imagefs-{name}"), cache, name)
        else:
            mnt = self.mounts.ratarmount(archive, self.mp(f"ratarmount-{name}"), cache)
        if key:
            self.m[key] = wl.Timing(mnt.seconds)
            self.log(f"  {key}: {mnt.seconds:.3f}s")
        return mnt

    def remount_samples(self, kind: str, name: str, archive: str, cache: str, key: str,
                        workloads: list[tuple[str, ...]], root_key: str) -> None:
        """Mount again (cached index) once per workload group, timing each mount; median is the figure."""
        samples = []
        for what in workloads:
            mnt = self.mount(kind, name, archive, cache)
            samples.append(mnt.seconds)
            if what:
                self.passes(root_key, mnt.mountpoint, what, mnt.pid)
            self.mounts.unmount(mnt.mountpoint)
        self.m[key] = wl.Timing(statistics.median(samples))
        self.m[key + ".samples"] = samples
        self.log(f"  {key}: median {statistics.median(samples):.3f}s of {[round(x, 3) for x in samples]}")

    # -- sections -------------------------------------------------------------

    def section_tree(self) -> None:
        d = self.data["tree"]
        archive, layer, extracted = d["archive_path"], d["layer_path"], d["extracted"]
        self.log(f"tree: {k(self.s.tree)}-file single-layer image ({d['members']} members)")
        for p in (archive, layer):
            wl.warm_file(p)
        self.timed("tar.tf", min((wl.tar_tf(layer, self.s.cap) for _ in range(3)), key=lambda t: t.seconds))

        self.log("tree: extracted tree (warmed first: a local disk in use)")
        wl.warm_tree(extracted, gen.NEEDLE)
        self.passes("extracted", extracted, ("find", "ls", "grep"))

        for kind, cache in (("ratarmount", self.fresh_ratar_index("tree")), ("imagefs", self.fresh_cache("tree"))):
            self.log(f"tree: {kind}")
            target = layer if kind == "ratarmount" else archive
            mnt = self.mount(kind, "tree", target, cache, f"{kind}.first_mount")
            self.passes(kind, mnt.mountpoint, ("find",), mnt.pid)
            if mnt.pid is not None:
                self.m[f"{kind}.rss"] = rss_of(mnt.pid)
                self.log(f"  {kind}.rss after find: {self.m[f'{kind}.rss']}")
            self.mounts.unmount(mnt.mountpoint)
            self.remount_samples(kind, "tree", target, cache, f"{kind}.second_mount",
                                 [("ls",), ("grep",), ()], kind)

    def section_small(self) -> None:
        d = self.data["small"]
        self.log(f"small: {k(self.s.small)}-file image (memory flatness, second mount at another size)")
        wl.warm_file(d["archive_path"])
        cache = self.fresh_cache("small")
        mnt = self.mount("imagefs", "small", d["archive_path"], cache, "small.first_mount")
        self.timed("small.find1", wl.find_printf(mnt.mountpoint, self.s.cap))
        self.timed("small.find2", wl.find_printf(mnt.mountpoint, self.s.cap))
        if mnt.pid is not None:
            self.m["small.rss"] = rss_of(mnt.pid)
            self.log(f"  small.rss after find: {self.m['small.rss']}")
        self.mounts.unmount(mnt.mountpoint)
        self.remount_samples("imagefs", "small", d["archive_path"], cache, "small.second_mount", [(), (), ()], "small")

    def section_layers(self) -> None:
        d = self.data["layers"]
        self.log(f"layers: {d['layers']}-layer image with the {k(self.s.tree)} files")
        wl.warm_file(d["archive_path"])
        mnt = self.mount("imagefs", "layers", d["archive_path"], self.fresh_cache("layers"), "layers.first_mount")
        self.mounts.unmount(mnt.mountpoint)
        if "imagefs.first_mount" not in self.m:  # --only layers: measure the 1-layer image here
            one = self.data["tree"]["archive_path"]
            wl.warm_file(one)
            mnt = self.mount("imagefs", "tree", one, self.fresh_cache("tree"), "imagefs.first_mount")
            self.mounts.unmount(mnt.mountpoint)

    def section_bigfile(self) -> None:
        d = self.data["bigfile"]
        size, member = d["size"], d["member"]
        self.log(f"bigfile: cat of a {size // MIB} MiB file")
        for p in (d["archive_path"], d["layer_path"]):
            wl.warm_file(p)
        runs = [wl.pread_range(d["archive_path"], d["offset_in_archive"], size, self.s.cap) for _ in range(3)]
        self.timed("archive.read", min(runs, key=lambda t: t.seconds))
        ext = os.path.join(d["extracted"], member)
        wl.warm_file(ext)
        self.timed("extracted.cat1", wl.cat(ext, self.s.cap))
        self.timed("extracted.cat2", wl.cat(ext, self.s.cap))
        # A first read puts 200 MiB in fresh page-cache pages, which on these VMs may
        # first have to come back from the host; the reference is the best of three
        # runs, so each FUSE server's first read is the best of two fresh mounts
        # (an unmount drops the file's pages), taken in turn.
        servers = [("ratarmount", self.fresh_ratar_index("bigfile")), ("imagefs", self.fresh_cache("bigfile"))]
        if self.tools.blobfs is not None:  # the floor: the same bytes through the least a FUSE server can do
            servers.append(("blobfs", ""))
        firsts: dict[str, list[wl.Timing]] = {kind: [] for kind, _ in servers}
        for round_ in range(2):
            for kind, cache in servers:
                mnt, path = self.bigfile_mount(kind, cache, round_ == 0)
                wl.warm_file(d["archive_path"] if kind != "ratarmount" else d["layer_path"])
                firsts[kind].append(wl.cat(path, self.s.cap))
                if round_ == 0:
                    self.timed(f"{kind}.cat2", wl.cat(path, self.s.cap))
                self.mounts.unmount(mnt.mountpoint)
        for kind, runs in firsts.items():
            self.timed(f"{kind}.cat1", min(runs, key=lambda t: t.seconds))

    def bigfile_mount(self, kind: str, cache: str, first: bool) -> tuple[Any, str]:
        """A mount of the bigfile image by ``kind``, and the path of its big file there."""
        d = self.data["bigfile"]
        if kind == "blobfs":
            mnt = self.mounts.blobfs(d["archive_path"], d["offset_in_archive"], d["size"], self.mp("blobfs-bigfile"))
            return mnt, os.path.join(mnt.mountpoint, "blob")
        target = d["layer_path"] if kind == "ratarmount" else d["archive_path"]
        mnt = self.mount(kind, "bigfile", target, cache, f"{kind}.bigfile_mount" if first else None)
        return mnt, os.path.join(mnt.mountpoint, d["member"])

    def section_gzip(self) -> None:
        d = self.data["gzip"]
        files = [(p, n) for p, n in d["files"]]
        self.log(f"gzip: {d['uncompressed'] / 1e6:.0f} MB layer, {d['compressed'] / 1e6:.0f} MB gzip, {len(files)} files")
        for p in (d["archive_path"], d["layer_path"]):
            wl.warm_file(p)
        self.timed("gzip.dc", wl.gzip_dc(d["layer_path"], self.s.cap * 4))
        for kind, cache in (("ratarmount", self.fresh_ratar_index("gzip")), ("imagefs", self.fresh_cache("gzip"))):
            self.log(f"gzip: {kind}")
            target = d["layer_path"] if kind == "ratarmount" else d["archive_path"]
            mnt = self.mount(kind, "gzip", target, cache, f"{kind}.gzip_first_mount")
            self.mounts.unmount(mnt.mountpoint)
            mnt = self.mount(kind, "gzip", target, cache)
            lat, capped = wl.random_preads(mnt.mountpoint, files, self.s.preads, gen.SEED, self.s.cap)
            self.m[f"{kind}.gzip_pread"] = {"median_ms": wl.median_ms(lat), "n": len(lat), "capped": capped,
                                            "p90_ms": sorted(lat)[int(len(lat) * 0.9)] * 1000 if lat else None,
                                            "max_ms": max(lat) * 1000 if lat else None}
            self.log(f"  {kind}.gzip_pread: {self.m[f'{kind}.gzip_pread']}")
            self.mounts.unmount(mnt.mountpoint)
            mnt = self.mount(kind, "gzip", target, cache)
            nbytes, secs, capped = wl.sequential_read(mnt.mountpoint, files, self.s.cap * 4)
            self.m[f"{kind}.gzip_seq"] = {"bytes": nbytes, "seconds": secs, "capped": capped}
            self.log(f"  {kind}.gzip_seq: {nbytes / 1e6:.0f} MB in {secs:.2f}s = {nbytes / secs / 1e6:.0f} MB/s"
                     + (" (cut at the cap)" if capped else ""))
            self.mounts.unmount(mnt.mountpoint)

    def section_profile(self) -> None:
        """py-spy: the index build (in ``imagefs mount``), then the daemon during find, ls -lR and grep."""
        d = self.data["tree"]
        out_dir = self.path("profile")
        os.makedirs(out_dir, exist_ok=True)
        archive = d["archive_path"]
        cache = self.fresh_cache("profile")
        mp = self.mp("imagefs-profile")
        os.makedirs(mp, exist_ok=True)
        self.log("profile: index build under py-spy")
        raw = os.path.join(out_dir, "index-build.txt")
        secs = spy.spy_command(self.tools.py_spy, raw,
                               [*self.tools.imagefs, "mount", "-q", "--cache-dir", cache, archive, mp], 900)
        if not is_mounted(mp):
            raise BenchError("imagefs mount under py-spy did not mount")
        self.mounts.adopt("imagefs", mp, secs)
        self.profile["index_build"] = {**spy.top_functions(raw), "seconds": secs}
        for what in ("find", "ls", "grep"):
            if what != "find":
                self.mounts.unmount(mp)
                self.mounts.imagefs(archive, mp, cache, "profile")
            pid = self.mounts.live[os.path.abspath(mp)].pid
            if pid is None:
                raise BenchError("cannot find the imagefs daemon to profile")
            raw = os.path.join(out_dir, f"daemon-{what}.txt")
            self.log(f"profile: daemon during {what} (first pass)")
            proc = spy.spy_pid(self.tools.py_spy, raw, pid)
            s0 = sched_times(pid)
            try:
                t = self.workload(what, mp)
            finally:
                s1 = sched_times(pid)
                spy.stop_spy(proc)
            top = spy.top_functions(raw)
            # The daemon's own CPU time over the wall time: how much of the pass is its code at all
            # (py-spy counts the wait for the next request, in epoll or poll, as busy, so its samples overstate that).
            if s0 is not None and s1 is not None and t.seconds:
                top["cpu_share"] = round((s1[0] - s0[0]) / t.seconds, 2)
                top["runq_share"] = round((s1[1] - s0[1]) / t.seconds, 2)
            self.profile[f"daemon_{what}"] = {**top, "seconds": t.seconds, "capped": t.capped}
        self.mounts.unmount(mp)


# -- environment and output -------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def environment(tools: Tools) -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        mem = next(line.split()[1] for line in f if line.startswith("MemTotal"))
    dirty = subprocess.run(["git", "-C", PROJECT, "status", "--porcelain", "--", "imagefs", "cli.py"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "mem_gb": round(int(mem) / 1e6, 1), "kernel": platform.release(),
        "python": platform.python_version(),
        "imagefs": " ".join(tools.imagefs), "imagefs_version": _first_line([*tools.imagefs, "--version"]),
        "imagefs_commit": _first_line(["git", "-C", PROJECT, "rev-parse", "--short", "HEAD"]) + (" (modified)" if dirty else ""),
        "ratarmount": _first_line([tools.ratarmount, "--version"]),
        "tar": _first_line(["tar", "--version"]), "gzip": _first_line(["gzip", "--version"]),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def _notes(b: Bench, env: dict[str, Any]) -> list[str]:
    notes = [
        f"{env['date']}, {env['cpus']} CPUs, {env['mem_gb']} GB, Linux {env['kernel']}; load average "
        f"{' '.join(env['loadavg_start'])} at the start, {' '.join(env.get('loadavg_end', []))} at the end "
        f"(other work on the machine slows the FUSE daemons most)",
        f"{env['imagefs_version']} at commit {env['imagefs_commit']}; {env['ratarmount']}; {env['tar']}; {env['gzip']}",
        f"scale: {b.s.name}; page cache warm for every archive; each timed command is cut at {b.s.cap:.0f}s "
        f"(gzip rows {4 * b.s.cap:.0f}s): '>' marks such a lower bound",
        "first pass = right after a fresh mount (cold kernel caches for that mount); second pass = the immediate "
        "repeat; the extracted tree is warmed once before its passes (a local disk in use)",
        "second mount = median of 3 remounts with the cached index; ratios are imagefs / peer",
    ]
    if b.errors:
        notes += [f"error: {e}" for e in b.errors]
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="scaled down (30k files, 100 MiB gzip layer): about 2 minutes")
    ap.add_argument("--workdir", default=os.path.join(PROJECT, "bench", "work"), help="where archives, mounts and results go")
    ap.add_argument("--imagefs", default=None, metavar="CMD", help="imagefs command (default: .venv/bin/imagefs, "
                    "imagefs on PATH, or python cli.py)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma list of sections to run: {','.join(SECTIONS)} (and profile)")
    ap.add_argument("--cap", type=float, default=None, help="cut one timed command after this many seconds")
    ap.add_argument("--profile", action="store_true", help="also profile imagefs with py-spy (index build, daemon "
                    "during find, ls -lR and grep); adds a few minutes")
    args = ap.parse_args(argv)

    scale = QUICK if args.quick else FULL
    if args.cap is not None:
        scale = dataclasses.replace(scale, cap=args.cap)
    sections = tuple(x for x in args.only.split(",") if x)
    if args.profile and "profile" not in sections:
        sections += ("profile",)
    if bad := [x for x in sections if x not in SECTIONS + ("profile",)]:
        ap.error(f"unknown section(s): {', '.join(bad)}")
    workdir = os.path.abspath(args.workdir)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    tools = find_tools(workdir, args.imagefs, log)
    env = environment(tools)
    mnt_root = os.path.join(workdir, "mnt")
    clear_stale(mnt_root, tools, log)
    with Mounts(tools, os.path.join(workdir, "logs"), log) as mounts:
        b = Bench(scale, workdir, tools, mounts, log)
        b.prepare(sections)
        log(f"setup done; measuring ({scale.name} scale, cap {scale.cap:.0f}s per command)")
        for name in sections:
            try:
                getattr(b, f"section_{name}")()
            except (BenchError, OSError, subprocess.SubprocessError) as e:
                b.errors.append(f"{name}: {e}")
                log(f"section {name} failed: {e}")
                mounts.close()
    leftover = [p for p in mounted_paths() if p.startswith(mnt_root + os.sep)]
    env["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    env["seconds"] = round(time.perf_counter() - t_start, 1)

    targets, compare = build_rows(b.m, b.s, b.data)
    text = table(targets, compare)
    print(text)
    if b.profile:
        print("\n" + spy.profile_text(b.profile))
    # A partial run (--only) must not overwrite the figures of a whole one.
    partial = [x for x in SECTIONS if x not in sections]
    suffix = ("" if scale.name == "full" else f"-{scale.name}") + ("-partial" if partial else "")
    notes = _notes(b, env)
    cmd = " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    header = f"### imagefs benchmark ({scale.name} scale: `{cmd}`)"
    with open(os.path.join(workdir, f"results{suffix}.md"), "w") as f:
        f.write(markdown(targets, compare, header, notes))
        if b.profile:
            f.write("\n" + spy.profile_markdown(b.profile))
    with open(os.path.join(workdir, f"results{suffix}.json"), "w") as f:
        f.write(to_json(targets, compare, {"environment": env, "scale": scale.name, "raw": _raw(b.m),
                                           "data": {k: {x: y for x, y in v.items() if x != "files"}
                                                    for k, v in b.data.items()},
                                           "profile": b.profile, "errors": b.errors}))
    print(f"\nwrote {os.path.join(workdir, f'results{suffix}.md')} and .json; {env['seconds']:.0f}s in all",
          file=sys.stderr)
    if leftover:
        print(f"bench: still mounted: {leftover}", file=sys.stderr)
        return 1
    return 0 if not b.errors else 1


def _raw(m: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, v in m.items():
        out[key] = {"seconds": v.seconds, "capped": v.capped, "rc": v.rc, "note": v.note} if isinstance(v, wl.Timing) else v
    return out


if __name__ == "__main__":
    sys.exit(main())
