"""The rows of the report: issue 6's targets and issue 3's side-by-side figures, from one run's figures.

`build_rows` reads the figures `run.Bench` collects (``m``: a `workloads.Timing`
per timed command, dicts for memory, reads and scheduling) and turns each into
a `report.TargetRow` with its peer, rule and limit, or a `report.CompareRow`.
A figure that was not measured (``--only``, a failed section) gives an ``n/a``
row, never an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from report import CompareRow, Meas, TargetRow, seconds, throughput

if TYPE_CHECKING:
    from run import Scale

__all__ = ["MIB", "build_rows", "k"]

MIB = 1 << 20


def k(n: int) -> str:
    """300000 -> "300k"."""
    return f"{n // 1000}k" if n >= 1000 else str(n)


def _t(m: dict[str, Any], key: str) -> Meas:
    return seconds(m.get(key))


def _tp(m: dict[str, Any], key: str, nbytes: int) -> Meas:
    t = m.get(key)
    if t is None:
        return Meas(None, "MB/s")
    if t.capped:
        return Meas(nbytes / t.seconds / 1e6, "MB/s", "", "cut at the cap: an upper bound")
    return throughput(nbytes, t.seconds)


def _rss(m: dict[str, Any], key: str, field: str) -> Meas:
    r = m.get(key)
    return Meas(r[field], "MB") if r and field in r else Meas(None, "MB")


def _pread(m: dict[str, Any], key: str) -> Meas:
    r = m.get(key)
    return Meas(r["median_ms"], "ms", "", f"{r['n']} reads") if r else Meas(None, "ms")


def _seq(m: dict[str, Any], key: str) -> Meas:
    r = m.get(key)
    return throughput(r["bytes"], r["seconds"], "cut at the cap" if r["capped"] else "") if r else Meas(None, "MB/s")


def build_rows(m: dict[str, Any], s: Scale, data: dict[str, dict[str, Any]]) -> tuple[list[TargetRow], list[CompareRow]]:
    """Every target row of issue 6 and side-by-side row of issue 3 from the figures ``m`` (keys as `run.Bench` sets them)."""
    big, small = k(s.tree), k(s.small)
    bigfile = f"{s.bigfile // MIB} MiB"
    gz = data.get("gzip", {})
    gz_size = f"{s.gzip // MIB} MiB" if s.gzip < 1024 * MIB else f"{s.gzip / (1024 * MIB):.0f} GiB"
    nlayers = s.layers
    size = data.get("bigfile", {}).get("size", s.bigfile)
    gz_dc = Meas(None, "MB/s")
    if "gzip.dc" in m:
        gz_dc = throughput(gz["uncompressed"], m["gzip.dc"].seconds)
    def cut(key: str) -> bool:
        t = m.get(key)
        return bool(t is not None and t.capped)

    def rss_note() -> str:
        parts = []
        if cut("imagefs.find1"):
            parts.append("imagefs: after a find cut at the cap")
        if cut("ratarmount.find1"):
            parts.append("ratarmount: after a find cut at the cap (partial walk)")
        r, sm = m.get("imagefs.rss"), m.get("small.rss")
        if r:
            parts.append(f"imagefs RssAnon {r['RssAnon']:.1f} MB + RssFile (mapped index) {r['RssFile']:.1f} MB")
        if sm:
            parts.append(f"{small} image: VmRSS {sm['VmRSS']:.1f} MB, RssFile {sm['RssFile']:.1f} MB")
        return "; ".join(parts)

    def pread_note() -> str:
        parts = []
        for kind in ("imagefs", "ratarmount"):
            r = m.get(f"{kind}.gzip_pread")
            if r and r["p90_ms"] is not None:
                parts.append(f"{kind} p90 {r['p90_ms']:.1f} ms, max {r['max_ms']:.1f} ms"
                             + (f", cut after {r['n']} reads" if r["capped"] else ""))
        return "; ".join(parts)

    def samples_note(key: str) -> str:
        v = m.get(key + ".samples")
        return f"samples {', '.join(f'{x:.3f}' for x in v)} s" if v else ""

    def floor_note(n: int) -> str:
        # What the kernel's FUSE path gives at best: bench/blobfs.c, a C server doing only pread + reply.
        floor, ref = _tp(m, f"blobfs.cat{n}", size), _tp(m, "archive.read", size)
        if floor.value is None or not ref.value:
            return ""
        return f"minimal C FUSE server (bench/blobfs.c): {floor.text()}, {floor.value / ref.value:.2f}x"

    def second_note(w: str) -> str:
        return "not run: the first pass was cut at the cap" if cut(f"imagefs.{w}1") else cpu_note(w, 2)

    def cpu_note(w: str, n: int) -> str:
        parts = []
        for kind in ("imagefs", "ratarmount"):
            sc, t = m.get(f"{kind}.{w}{n}.sched"), m.get(f"{kind}.{w}{n}")
            if sc is not None and t is not None:
                parts.append(f"{kind} daemon on a CPU {sc['on_cpu']:.1f} s, waiting for one {sc['waiting']:.1f} s, "
                             f"of {t.seconds:.1f} s")
        return "; ".join(parts)

    targets = [
        TargetRow(f"first mount (index build), {big}, uncompressed", _t(m, "imagefs.first_mount"), "ratarmount",
                  _t(m, "ratarmount.first_mount"), "ratio<=", 1 / 3, "≤ 1/3 of ratarmount"),
        TargetRow(f"first mount (index build), {big}, uncompressed", _t(m, "imagefs.first_mount"), "GNU tar -tf layer",
                  _t(m, "tar.tf"), "ratio<=", 5, "≤ 5x tar -tf"),
        TargetRow(f"second mount (cached index), {big}", _t(m, "imagefs.second_mount"), "ratarmount",
                  _t(m, "ratarmount.second_mount"), "value<=", 0.3, "< 0.3 s", samples_note("imagefs.second_mount")),
        TargetRow(f"second mount (cached index), {small}", _t(m, "small.second_mount"), "—", None,
                  "value<=", 0.3, "< 0.3 s", samples_note("small.second_mount")),
        TargetRow(f"find -printf '%s %m\\n', {big}, first pass", _t(m, "imagefs.find1"), "extracted tree",
                  _t(m, "extracted.find1"), "ratio<=", 4, "≤ 4x extracted", cpu_note("find", 1)),
        TargetRow(f"find -printf '%s %m\\n', {big}, second pass", _t(m, "imagefs.find2"), "extracted tree",
                  _t(m, "extracted.find2"), "ratio<=", 2, "≤ 2x extracted", second_note("find")),
        TargetRow(f"ls -lR, {big}, first pass", _t(m, "imagefs.ls1"), "extracted tree",
                  _t(m, "extracted.ls1"), "ratio<=", 4, "≤ 4x extracted", cpu_note("ls", 1)),
        TargetRow(f"ls -lR, {big}, second pass", _t(m, "imagefs.ls2"), "extracted tree",
                  _t(m, "extracted.ls2"), "ratio<=", 2, "≤ 2x extracted", second_note("ls")),
        TargetRow(f"grep -r, {big}, first pass", _t(m, "imagefs.grep1"), "extracted tree",
                  _t(m, "extracted.grep1"), "ratio<=", 10, "≤ 10x extracted", cpu_note("grep", 1)),
        TargetRow(f"grep -r, {big}, second pass", _t(m, "imagefs.grep2"), "extracted tree",
                  _t(m, "extracted.grep2"), "ratio<=", 1.5, "≤ 1.5x extracted", second_note("grep")),
        TargetRow(f"cat {bigfile} file, first read", _tp(m, "imagefs.cat1", size), "archive bytes (dd)",
                  _tp(m, "archive.read", size), "ratio>=", 0.5, "≥ 0.5x throughput", floor_note(1)),
        TargetRow(f"cat {bigfile} file, second read", _tp(m, "imagefs.cat2", size), "archive bytes (dd)",
                  _tp(m, "archive.read", size), "ratio>=", 0.9, "≥ 0.9x throughput", floor_note(2)),
        TargetRow(f"gzip layer {gz_size}: 4 KiB read at random offset, median", _pread(m, "imagefs.gzip_pread"),
                  "ratarmount", _pread(m, "ratarmount.gzip_pread"), "value<=", 10, "≤ 10 ms", pread_note()),
        TargetRow(f"gzip layer {gz_size}: all files read in order", _seq(m, "imagefs.gzip_seq"), "gzip -dc | wc -c",
                  gz_dc, "ratio>=", 0.8, "≥ 0.8x throughput"),
        TargetRow(f"daemon RSS after find, {big}", _rss(m, "imagefs.rss", "VmRSS"), "ratarmount",
                  _rss(m, "ratarmount.rss", "VmRSS"), "value<=", 100, "< 100 MB", rss_note()),
        TargetRow(f"daemon private memory (RssAnon) after find, {big} vs {small}", _rss(m, "imagefs.rss", "RssAnon"),
                  f"same, {small} image", _rss(m, "small.rss", "RssAnon"), "ratio<=", 1.25, "flat: ≤ 1.25x"),
        TargetRow(f"{nlayers}-layer image, first mount, {big}", _t(m, "layers.first_mount"), "1-layer image",
                  _t(m, "imagefs.first_mount"), "ratio<=", 2, "≤ 2x"),
    ]

    def c(name: str, **vals: Meas) -> CompareRow:
        return CompareRow(name, {k: v for k, v in vals.items() if v.value is not None})

    compare = [
        c(f"first mount, {big}", imagefs=_t(m, "imagefs.first_mount"), ratarmount=_t(m, "ratarmount.first_mount")),
        c(f"second mount, {big}", imagefs=_t(m, "imagefs.second_mount"), ratarmount=_t(m, "ratarmount.second_mount")),
    ]
    for w, label in (("find", "find -printf"), ("ls", "ls -lR"), ("grep", "grep -r")):
        for n, p in ((1, "first"), (2, "second")):
            compare.append(c(f"{label}, {big}, {p} pass", imagefs=_t(m, f"imagefs.{w}{n}"),
                             ratarmount=_t(m, f"ratarmount.{w}{n}"), extracted=_t(m, f"extracted.{w}{n}")))
    for n, p in ((1, "first"), (2, "second")):
        compare.append(c(f"cat {bigfile} file, {p} read", imagefs=_t(m, f"imagefs.cat{n}"),
                         ratarmount=_t(m, f"ratarmount.cat{n}"), extracted=_t(m, f"extracted.cat{n}")))
    compare += [
        c(f"first mount, gzip layer {gz_size}", imagefs=_t(m, "imagefs.gzip_first_mount"),
          ratarmount=_t(m, "ratarmount.gzip_first_mount")),
        c("gzip layer: random 4 KiB read, median", imagefs=_pread(m, "imagefs.gzip_pread"),
          ratarmount=_pread(m, "ratarmount.gzip_pread")),
        c("gzip layer: files in order (throughput)", imagefs=_seq(m, "imagefs.gzip_seq"),
          ratarmount=_seq(m, "ratarmount.gzip_seq")),
        c(f"daemon RSS after find, {big}", imagefs=_rss(m, "imagefs.rss", "VmRSS"),
          ratarmount=_rss(m, "ratarmount.rss", "VmRSS")),
    ]
    return targets, compare
