"""Shared helpers for benchmarks: describe the machine, write result tables."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

import cohortscale
from cohortscale.backend import gpu_available

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python/NumPy versions of this machine, and its GPU where CuPy sees one."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cohortscale": cohortscale.__version__,
    }
    if gpu_available():
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = f"{properties['name'].decode()} ({properties['totalGlobalMem'] / 2**30:.0f} GiB)"
        info["cupy"] = cupy.__version__
    return info


def write_results(name: str, rows: list[dict[str, Any]], notes: str = "") -> Path:
    """Save ``rows`` as ``results/<name>.json`` and a markdown table ``results/<name>.md``; print it."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": info, "rows": rows, "notes": notes}, indent=1)
    )
    columns = list(rows[0])
    lines = [
        f"# {name}",
        "",
        "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(text)
    return path


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
