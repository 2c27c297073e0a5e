"""What every benchmark script shares: the machine description, stderr progress, the report.

Each script prints exactly ONE JSON object on stdout (:func:`emit`)::

    {"benchmark": NAME, "figures": {...}, "targets": {...}, "met": {target: bool | null},
     "machine": {...}, ...}

``targets`` maps a target's name to its bound; ``met`` is ``null`` for a target that could
not be measured here; ``measured`` gives the figure each target was checked on. Progress
goes to stderr (:func:`log`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    """A progress line on stderr (stdout carries only the JSON object)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> float:
    """The 1-minute load average (other work on the machine makes figures noisy)."""
    return round(os.getloadavg()[0], 2)


def machine(load_before: float | None = None) -> dict[str, Any]:
    """CPU count, torch version and threads, Python, and the load before and now."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "accelerator": "none (CPU only)",
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    else:  # the start-up benchmark keeps torch out of its own process
        info["torch"] = _torch_version()
    info["loadavg_1m"] = [load_before, loadavg()] if load_before is not None else loadavg()
    return info


def _torch_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def check(value: float | None, bound: float, ceiling: bool) -> bool | None:
    """Whether ``value`` meets ``bound`` (``<=`` for a ceiling, ``>=`` for a floor)."""
    if value is None or not np.isfinite(value):
        return None
    return bool(value <= bound) if ceiling else bool(value >= bound)


def emit(
    name: str,
    figures: dict[str, Any],
    targets: dict[str, float],
    met: dict[str, bool | None],
    load_before: float | None = None,
    measured: dict[str, float | None] | None = None,
    **extra: Any,
) -> None:
    """Print the one JSON object of a benchmark on stdout. ``measured``: the figure each
    target was checked on (the runner's summary table reads it)."""
    report = {
        "benchmark": name,
        "figures": figures,
        "targets": targets,
        "met": met,
        "measured": measured or {},
        "machine": machine(load_before),
        **extra,
    }
    print(json.dumps(report, indent=2, allow_nan=False, default=_plain))
    sys.stdout.flush()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def dist(values: Sequence[float] | np.ndarray[Any, Any], digits: int = 3) -> dict[str, Any]:
    """p50, p99, max and count of ``values`` (None when empty)."""
    if len(values) == 0:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    v = np.asarray(values, dtype=np.float64)
    p50, p99 = np.percentile(v, [50, 99])
    return {
        "p50": round(float(p50), digits),
        "p99": round(float(p99), digits),
        "max": round(float(v.max()), digits),
        "n": len(v),
    }


def best_of(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """The shortest wall time (s) of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory (MB) of a process, from ``/proc/PID/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
