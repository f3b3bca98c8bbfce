"""Results as rows with targets, and their three renderings: terminal table, markdown, JSON.

A `TargetRow` is one line of issue 6's target table: imagefs's figure, the
figure it is held against (ratarmount, GNU tar, the extracted tree, the raw
archive, or a fixed limit), their ratio and the verdict.  A `CompareRow` is
one line of issue 3's side-by-side table (imagefs, ratarmount, extracted).

A figure cut at the time cap is a lower bound (``bound=">"``); a verdict is
only given when the bound decides it, otherwise it is ``?``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from workloads import Timing

__all__ = ["CompareRow", "Meas", "TargetRow", "markdown", "seconds", "table", "throughput", "to_json"]


@dataclass(frozen=True, slots=True)
class Meas:
    """One figure: ``value`` in ``unit`` (None: not measured); ``bound`` ``">"`` if a lower bound."""

    value: float | None
    unit: str
    bound: str = ""
    note: str = ""

    def text(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "—"
        v = self.value
        if self.unit in ("s",):
            s = f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
        elif self.unit in ("ms", "MB"):
            s = f"{v:.2f}" if v < 10 else f"{v:.1f}"
        elif self.unit == "MB/s":
            s = f"{v:.0f}"
        else:
            s = f"{v:.3g}"
        return f"{self.bound}{s} {self.unit}"


def seconds(t: Timing | None) -> Meas:
    if t is None:
        return Meas(None, "s")
    return Meas(t.seconds, "s", ">" if t.capped else "", t.note)


def throughput(nbytes: int, secs: float, note: str = "") -> Meas:
    """MB/s (10^6 bytes).  A run cut short still gives a valid rate over what it read."""
    return Meas(nbytes / secs / 1e6 if secs > 0 else None, "MB/s", "", note)


def _ratio(a: Meas, b: Meas | None) -> tuple[float | None, str]:
    if b is None or a.value is None or b.value is None or b.value == 0:
        return None, ""
    r = a.value / b.value
    if a.bound == ">" and b.bound == ">":
        return r, "?"
    if a.bound == ">":
        return r, ">"
    if b.bound == ">":
        return r, "<"
    return r, ""


def _ratio_text(r: float | None, bound: str) -> str:
    if r is None or bound == "?":
        return "—"
    return f"{bound}{r:.3f}x" if r < 0.1 else f"{bound}{r:.2f}x" if r < 10 else f"{bound}{r:.1f}x"


@dataclass(frozen=True, slots=True)
class TargetRow:
    """``rule``: ``"ratio<="`` / ``"ratio>="`` (imagefs / peer against ``limit``) or ``"value<="``."""

    workload: str
    imagefs: Meas
    peer_name: str
    peer: Meas | None
    rule: str
    limit: float
    target: str
    note: str = ""

    def ratio(self) -> tuple[float | None, str]:
        return _ratio(self.imagefs, self.peer)

    def verdict(self) -> str:
        if self.rule == "value<=":
            v = self.imagefs
            if v.value is None:
                return "n/a"
            if v.value > self.limit:
                return "FAIL"
            return "PASS" if v.bound != ">" else "?"
        r, bound = self.ratio()
        if r is None or bound == "?":
            return "n/a"
        if self.rule == "ratio<=":
            if r <= self.limit:
                return "PASS" if bound != ">" else "?"
            return "FAIL" if bound != "<" else "?"
        if self.rule == "ratio>=":
            if r >= self.limit:
                return "PASS" if bound != "<" else "?"
            return "FAIL" if bound != ">" else "?"
        raise ValueError(self.rule)

    def as_dict(self) -> dict[str, Any]:
        r, bound = self.ratio()
        return {**asdict(self), "ratio": r, "ratio_bound": bound, "verdict": self.verdict()}


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One workload for imagefs, ratarmount and the extracted tree (any may be None)."""

    workload: str
    values: dict[str, Meas] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workload": self.workload, "values": {k: asdict(v) for k, v in self.values.items()}}
        for peer in ("ratarmount", "extracted"):
            r, bound = _ratio(self.values.get("imagefs", Meas(None, "")), self.values.get(peer))
            out[f"imagefs_over_{peer}"] = None if bound == "?" else r
        return out


_TARGET_COLS = ("workload", "imagefs", "peer", "peer value", "ratio", "target", "verdict")
_COMPARE_COLS = ("workload", "imagefs", "ratarmount", "extracted", "imagefs/ratarmount", "imagefs/extracted")


def _target_cells(row: TargetRow) -> list[str]:
    r, bound = row.ratio()
    return [row.workload, row.imagefs.text(), row.peer_name, row.peer.text() if row.peer else "—",
            _ratio_text(r, bound), row.target, row.verdict()]


def _compare_cells(row: CompareRow) -> list[str]:
    v = row.values
    none = Meas(None, "")
    cells = [row.workload] + [v.get(k, none).text() for k in ("imagefs", "ratarmount", "extracted")]
    for peer in ("ratarmount", "extracted"):
        cells.append(_ratio_text(*_ratio(v.get("imagefs", none), v.get(peer))))
    return cells


def _grid(cols: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def table(targets: list[TargetRow], compare: list[CompareRow]) -> str:
    """The terminal rendering: issue 6's targets, then issue 3's side-by-side figures."""
    t = _grid(_TARGET_COLS, [_target_cells(r) for r in targets])
    c = _grid(_COMPARE_COLS, [_compare_cells(r) for r in compare])
    passed = sum(r.verdict() == "PASS" for r in targets)
    notes = "".join(f"\n  * {r.workload}: {r.note}" for r in targets if r.note)
    return f"Targets (issue 6): {passed}/{len(targets)} pass\n{t}{notes}\n\nSide by side (issue 3)\n{c}"


def _md(cols: tuple[str, ...], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in esc])


def markdown(targets: list[TargetRow], compare: list[CompareRow], header: str, notes: list[str]) -> str:
    passed = sum(r.verdict() == "PASS" for r in targets)
    parts = [header, "", f"Targets of issue 6: {passed}/{len(targets)} pass.", "",
             _md(_TARGET_COLS, [_target_cells(r) for r in targets]), ""]
    parts += [f"- {r.workload}: {r.note}" for r in targets if r.note]
    parts += ["", "Side by side (issue 3):", "", _md(_COMPARE_COLS, [_compare_cells(r) for r in compare])]
    if notes:
        parts += ["", *[f"- {n}" for n in notes]]
    return "\n".join(parts) + "\n"


def to_json(targets: list[TargetRow], compare: list[CompareRow], extra: dict[str, Any]) -> str:
    return json.dumps({"targets": [r.as_dict() for r in targets], "compare": [r.as_dict() for r in compare],
                       **extra}, indent=1, default=str)
