"""Throughput of the synthetic cohort generator.

Measures, on this machine: seconds per full-scale participant visit (one core, 20201 + 20254 zips and
truth), zip size per participant, seconds per quarter-scale visit, and the phenotype-only path for
100,000 participants. Run: ``.venv/bin/python benchmarks/synth_throughput.py [--participants N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cohortscale.config import SynthConfig, load_config
from cohortscale.synth import synthesize
from common import write_results

NO_ANOMALIES = {
    "anomalies.duplicate_station": 0,
    "anomalies.missing_series": 0,
    "anomalies.short_station": 0,
    "anomalies.swap_station": 0,
    "anomalies.swap_leg": 0,
    "anomalies.ghost_slices": 0,
    "anomalies.truncated_dicom": 0,
    "anomalies.corrupt_zip": 0,
}


def run(scale: float, participants: int, compresslevel: int, images: bool = True) -> dict:
    config = load_config(
        SynthConfig,
        overrides={
            "participants": participants,
            "scale": scale,
            "images": images,
            "repeat_visit_rate": 0.0,
            "zip_compresslevel": compresslevel,
            **NO_ANOMALIES,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = synthesize(config, tmp, progress=False)
        wall = time.perf_counter() - start
        zips = list((Path(tmp) / "bulk").glob("*.zip"))
        dixon_mb = sum(p.stat().st_size for p in zips if "_20201_" in p.name) / 1e6 / max(participants, 1)
        other_mb = sum(p.stat().st_size for p in zips if "_20201_" not in p.name) / 1e6 / max(participants, 1)
    return {
        "case": f"scale {scale}, deflate {compresslevel}" if images else "phenotypes only",
        "participants": participants,
        "wall_s": round(wall, 2),
        "s_per_visit": round(summary.seconds_per_visit, 2) if images else float("nan"),
        "dixon_zip_mb": round(dixon_mb, 1),
        "multiecho_zip_mb": round(other_mb, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participants", type=int, default=2)
    args = parser.parse_args()
    rows = [
        run(1.0, args.participants, 1),
        run(1.0, 1, 6),
        run(0.25, 4 * args.participants, 1),
        run(1.0, 100_000, 1, images=False),
    ]
    write_results(
        "synth_throughput",
        rows,
        notes="One worker process. s_per_visit: generating one visit (anatomy, signal, DICOM encoding, "
        "zip, truth) inside the worker. Deflate 1 is the default; 6 is the usual archive level.",
    )


if __name__ == "__main__":
    main()
