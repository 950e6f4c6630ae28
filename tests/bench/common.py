"""What every benchmark shares: the result record, the machine description, quick mode,
and writing bench-results/<area>.json.

The project fixes the file format (docs/development.md) so that runs can be compared across machines
and commits: {"machine": {...}, "results": [{metric, value, unit, baseline,
baseline_value, ratio, target, meets_target}, ...]}. Keeping it in one place is what
keeps the five benchmarks consistent.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench-results"


def quick() -> bool:
    """Reduced sizes for a smoke run (`--quick` or TUNEFORGE_BENCH_QUICK=1): checks that the
    benchmark works end to end in a fraction of the time; its figures mean little."""
    return "--quick" in sys.argv[1:] or os.environ.get("TUNEFORGE_BENCH_QUICK", "") not in ("", "0")


def objects(default: int) -> int:
    """How many objects a control-plane benchmark creates: `--objects N` (or
    TUNEFORGE_BENCH_OBJECTS=N) for the 10,000-object runs CI does not make, else `default`."""
    args = sys.argv[1:]
    if "--objects" in args:
        return int(args[args.index("--objects") + 1])
    return int(os.environ.get("TUNEFORGE_BENCH_OBJECTS") or default)


def machine(**extra: Any) -> dict[str, Any]:
    """Where the figures were taken; the load average shows how shared the machine was."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "quick": quick(),
        **extra,
    }


def result(metric: str, value: float, unit: str, baseline: str, baseline_value: float, target: str,
           meets_target: bool, *, ratio: float | None = None, digits: int = 4) -> dict[str, Any]:
    """One figure against its same-run baseline. `ratio` defaults to value/baseline_value;
    pass it when the figure is itself a difference (added latency, memory growth). A zero
    baseline has no ratio: null in the JSON."""
    if ratio is None and baseline_value:
        ratio = value / baseline_value
    return {
        "metric": metric,
        "value": round(value, digits),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": round(baseline_value, digits),
        "ratio": None if ratio is None else round(ratio, digits),
        "target": target,
        "meets_target": bool(meets_target),
    }


def write(area: str, results: list[dict[str, Any]], **machine_extra: Any) -> Path:
    """Writes bench-results/<area>.json and prints one line per figure."""
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{area}.json"
    out.write_text(json.dumps({"machine": machine(**machine_extra), "results": results}, indent=1) + "\n")
    for entry in results:
        verdict = "meets" if entry["meets_target"] else "MISSES"
        print(f"{entry['metric']}: {entry['value']} {entry['unit']} (baseline {entry['baseline']}: "
              f"{entry['baseline_value']}, ratio {entry['ratio']}; target {entry['target']}: {verdict})", flush=True)
    print(f"wrote {out}", flush=True)
    return out
