"""Ratios, the text table, the throughput-target check and the JSON file of a benchmark."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

from nnmjax.bench.cases import FLOOR_TARGETS, TARGETS, Case, fmt_d


def best_byzfl(rec: dict) -> None:
    oks = {b: r for b, r in rec["backends"].items() if r.get("status") == "ok"}
    if oks:
        b = min(oks, key=lambda k: oks[k]["median_ms"])
        rec.update(status="ok", backend=b, median_ms=oks[b]["median_ms"])
        return
    bounds = [r["lower_bound_ms"] for r in rec["backends"].values()
              if r.get("status") == "timeout" and r.get("lower_bound_ms")]
    if bounds and len(bounds) == len(rec["backends"]):
        rec.update(status="timeout", lower_bound_ms=min(bounds))
    else:
        statuses = sorted({r.get("status", "?") for r in rec["backends"].values()})
        rec.update(status="/".join(statuses) or "error")


def fill_ratios(rec: dict, stream_ms: float | None, floor_ms: float | None = None) -> None:
    """Fill ``x_stream``, ``x_floor``, ``vs_numpy`` and ``vs_byzfl`` (with ``>=``/``<=``
    bounds)."""
    nj = rec["nnmjax"]
    ours = nj.get("median_ms") if nj.get("status") == "ok" else None
    ours_bound = nj.get("lower_bound_ms") if nj.get("status") == "timeout" else None
    rec["x_stream"] = ours / stream_ms if ours and stream_ms else None
    rec["x_floor"] = ours / floor_ms if ours and floor_ms else None
    for key, other in (("vs_numpy", rec.get("numpy")), ("vs_byzfl", rec.get("byzfl"))):
        rec[key], rec[key + "_bound"] = None, None
        if not other:
            continue
        theirs = other.get("median_ms") if other.get("status") == "ok" else None
        theirs_bound = other.get("lower_bound_ms") if other.get("status") == "timeout" else None
        if ours and theirs:
            rec[key] = theirs / ours
        elif ours and theirs_bound:
            rec[key], rec[key + "_bound"] = theirs_bound / ours, ">="
        elif ours_bound and theirs:
            rec[key], rec[key + "_bound"] = theirs / ours_bound, "<="


def fmt_ms(rec: dict | None) -> str:
    if not rec:
        return "-"
    st = rec.get("status")
    if st == "ok":
        v = rec["median_ms"]
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if st == "timeout":
        return f">{rec['lower_bound_ms'] / 1e3:.0f}s" if rec.get("lower_bound_ms") else "timeout"
    if st == "none":
        return "-"
    return st or "?"


def fmt_ratio(rec: dict, key: str) -> str:
    v = rec.get(key)
    if v is None:
        return "-"
    bound = rec.get(key + "_bound") or ""
    return f"{bound}{v:.3g}x" if v < 100 else f"{bound}{v:.0f}x"


def row_text(rec: dict) -> str:
    byz = rec.get("byzfl")
    bname = f" ({byz['backend']})" if byz and byz.get("backend") else ""
    xs = f"x{rec['x_stream']:.1f}" if rec.get("x_stream") else "-"
    xf = f"floor x{rec['x_floor']:.1f}" if rec.get("x_floor") else "-"
    return (f"{rec['rule']:<14} {fmt_ms(rec.get('nnmjax')):>8} ms  {xs:<7} {xf:<11} "
            f"numpy {fmt_ms(rec.get('numpy')):>8}  vs {fmt_ratio(rec, 'vs_numpy'):>7}  "
            f"byzfl {fmt_ms(byz):>8}{bname}  vs {fmt_ratio(rec, 'vs_byzfl'):>7}")


def format_table(result: dict) -> str:
    """A plain-text table: rule, case, nnmjax ms, compile s, x-stream, floor ms, x-floor,
    NumPy ms, vs-numpy, ByzFL ms (faster backend), vs-byzfl."""
    head = ("rule", "case", "ms", "compile s", "x-stream", "floor ms", "x-floor", "numpy ms",
            "vs-numpy", "byzfl ms", "vs-byzfl")
    rows = []
    for s in result.get("streams", []):
        case = Case(s["n"], s["d"], s["f"])
        rows.append(("(stream: jnp.sum | x.sum)", case.label, fmt_ms(s.get("jax")), "-", "1",
                     "-", "-", fmt_ms(s.get("numpy")), "-", "-", "-"))
        for r in result.get("results", []):
            if (r["n"], r["d"], r["f"]) != (s["n"], s["d"], s["f"]):
                continue
            nj = r.get("nnmjax") or {}
            byz = r.get("byzfl")
            bms = fmt_ms(byz)
            if byz and byz.get("backend"):
                bms += f" ({byz['backend']})"
            rows.append((r["rule"], case.label, fmt_ms(nj),
                         f"{nj['compile_s']:.2f}" if nj.get("compile_s") is not None else "-",
                         f"{r['x_stream']:.1f}" if r.get("x_stream") else "-",
                         f"{r['floor']['floor_ms']:.3g}" if r.get("floor") else "-",
                         f"{r['x_floor']:.1f}" if r.get("x_floor") else "-",
                         fmt_ms(r.get("numpy")), fmt_ratio(r, "vs_numpy"), bms, fmt_ratio(r, "vs_byzfl")))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def check_targets(result: dict) -> list[dict]:
    """Compare ``vs_byzfl`` with :data:`TARGETS` for the cases and rules that were run."""
    checks = []
    for case, floor, special in TARGETS:
        for r in result.get("results", []):
            if (r["n"], r["d"], r["f"]) != (case.n, case.d, case.f) or r.get("byzfl") is None:
                continue  # not a target case, or ByzFL was not timed
            need = special.get(r["rule"], floor)
            v, bound = r.get("vs_byzfl"), r.get("vs_byzfl_bound")
            if r.get("status") == "skipped":
                verdict = "n/a"
            elif v is None:
                verdict = "unknown"
            elif bound == ">=":
                verdict = "hit" if v >= need else "unknown"
            elif bound == "<=":
                verdict = "miss" if v < need else "unknown"
            else:
                verdict = "hit" if v >= need else "miss"
            checks.append({**asdict(case), "rule": r["rule"], "need": need,
                           "speedup": v, "bound": bound, "verdict": verdict})
    return checks


def check_floor_targets(result: dict) -> list[dict]:
    """Compare ``x_floor`` with :data:`FLOOR_TARGETS` for the cases and rules that were run."""
    checks = []
    for case, limits in FLOOR_TARGETS:
        for r in result.get("results", []):
            if (r["n"], r["d"], r["f"]) != (case.n, case.d, case.f) or r["rule"] not in limits:
                continue
            v, need = r.get("x_floor"), limits[r["rule"]]
            verdict = "unknown" if v is None else ("hit" if v <= need else "miss")
            checks.append({**asdict(case), "rule": r["rule"], "need": need, "x_floor": v,
                           "verdict": verdict})
    return checks


def format_targets(result: dict) -> str:
    checks = result.get("targets") or []
    lines = [] if checks else ["(no target case was run with ByzFL)"]
    for c in checks:
        v = "-" if c["speedup"] is None else f"{c['bound'] or ''}{c['speedup']:.3g}x"
        lines.append(f"{c['verdict'].upper():<7} n={c['n']} d={fmt_d(c['d'])} f={c['f']}  "
                     f"{c['rule']:<14} need >= {c['need']:g}x, got {v}")
    for c in result.get("floor_targets") or []:
        v = "-" if c["x_floor"] is None else f"{c['x_floor']:.3g}x"
        lines.append(f"{c['verdict'].upper():<7} n={c['n']} d={fmt_d(c['d'])} f={c['f']}  "
                     f"{c['rule']:<14} need <= {c['need']:g}x its floor, got {v}")
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> None:
    """Write ``result`` to ``path`` atomically (parent folders created)."""
    from pathlib import Path

    from nnmjax.experiments.results import atomic_write, plain

    text = json.dumps(plain(result), indent=1) + "\n"
    atomic_write(Path(path), lambda fh: fh.write(text))
