"""ByzFL 0.0.11's counterparts of nnmjax's rules, for ``nnmjax bench`` (used when installed)."""
from __future__ import annotations

from typing import Callable

from nnmjax.bench.cases import Case, rule_stages

def byzfl_factories(byzfl, f: int) -> dict[str, Callable[[], Callable]]:
    return {
        "mean": lambda: byzfl.Average(),
        "cwmed": lambda: byzfl.Median(),
        "cwtm": lambda: byzfl.TrMean(f=f),
        "gm": lambda: byzfl.GeometricMedian(nu=0.1, T=3),
        "krum": lambda: byzfl.Krum(f=f),
        "multikrum": lambda: byzfl.MultiKrum(f=f),
        "mda": lambda: byzfl.MDA(f=f),
        "meamed": lambda: byzfl.Meamed(f=f),
        "cclip": lambda: byzfl.CenteredClipping(),
        "monna": lambda: byzfl.MoNNA(f=f),
        "caf": lambda: byzfl.CAF(f=f),
        "smea": lambda: byzfl.SMEA(f=f),
        "nnm": lambda: byzfl.NNM(f=f),
        "clipping": lambda: byzfl.Clipping(),
        "arc": lambda: byzfl.ARC(f=f),
    }


#: ByzFL class names, for the record.
BYZFL_NAMES = {"mean": "Average", "cwmed": "Median", "cwtm": "TrMean(f)",
               "gm": "GeometricMedian(nu=0.1, T=3)", "krum": "Krum(f)",
               "multikrum": "MultiKrum(f)", "mda": "MDA(f)", "meamed": "Meamed(f)",
               "cclip": "CenteredClipping()", "monna": "MoNNA(f)", "caf": "CAF(f)",
               "smea": "SMEA(f)", "nnm": "NNM(f)", "clipping": "Clipping()", "arc": "ARC(f)"}


def byzfl_spec(name: str) -> str | None:
    stages = rule_stages(name)
    if any(s not in BYZFL_NAMES for s in stages):
        return None
    return " then ".join(BYZFL_NAMES[s] for s in stages)


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def byzfl_skip(name: str, case: Case, gather_limit_gb: float | None) -> str | None:
    if "nnm" not in rule_stages(name):
        return None
    need = case.n * (case.n - case.f) * case.d * 4
    if gather_limit_gb is None:
        avail = _mem_available_bytes()
        limit = 8 * 2**30 if avail is None else min(8 * 2**30, int(0.4 * avail))
    else:
        limit = int(gather_limit_gb * 2**30)
    if need > limit:
        return (f"ByzFL NNM materialises an (n, n-f, d) gather of {need / 2**30:.1f} GiB "
                f"> limit {limit / 2**30:.1f} GiB")
    return None


def import_byzfl():
    try:
        import byzfl  # noqa: F401
        return byzfl
    except Exception:  # ImportError, or a broken torch install
        return None

