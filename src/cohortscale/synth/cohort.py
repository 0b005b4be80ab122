"""Write a whole synthetic cohort: phenotypes, bulk zips per visit, and the ground truth.

Layout of the output directory::

    phenotypes.csv                 UK Biobank ukbconv table (eid, <field>-<instance>.<array>)
    bulk/<eid>_20201_<inst>_0.zip  neck-to-knee Dixon; bulk/<eid>_20254_<inst>_0.zip multi-echo slice
    truth/population.csv           latent variables and target IDPs of every participant
    truth/idps.csv                 true IDPs per visit (measured on the anatomy when images exist)
    truth/anomalies.csv            every injected anomaly (eid, instance, anomaly, details)
    truth/coefficients.json        the generative model's effects; truth/config.json the settings
    truth/<eid>_<inst>/            per visit: maps.zarr (labels, noiseless maps) and idp.json

Visits are independent and written atomically, so generation runs in parallel processes and a rerun
into the same directory skips the visits that are already complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from cohortscale import __version__
from cohortscale.config import SynthConfig, config_to_dict, json_ready
from cohortscale.synth.participant import VisitResult, generate_visit, visit_fingerprint
from cohortscale.synth.population import GenerativeModel, simulate_population, to_ukbconv, truth_idps

#: Columns of the population table that change at the repeat visit, and their repeat-visit names.
REPEAT_COLUMNS = {
    "age": "repeat_age",
    "imaging_date": "repeat_date",
    "centre": "repeat_centre",
    "height_cm": "repeat_height_cm",
    "weight_kg": "repeat_weight_kg",
    "bmi": "repeat_bmi",
}


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`synthesize` wrote.

    Attributes
    ----------
    out : Path
    participants : int
    visits : int
        Imaging visits with images (0 with ``images=False``).
    generated, skipped : int
        Visits generated now, and visits found complete from an earlier run.
    anomalies : pandas.DataFrame
        One row per injected anomaly.
    seconds : float
        Wall time of the run.
    seconds_per_visit : float
        Mean wall time of generating one visit in a worker (nan when none was generated).
    """

    out: Path
    participants: int
    visits: int
    generated: int
    skipped: int
    anomalies: pd.DataFrame
    seconds: float
    seconds_per_visit: float


def visit_subjects(population: pd.DataFrame) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(eid, instance, subject)`` for every imaging visit: instance 2 for all, 3 for repeat visitors."""
    for eid, row in population.iterrows():
        subject = row.to_dict()
        yield int(eid), 2, subject
        if bool(row.get("repeat_visit", False)):
            repeat = dict(subject)
            for base, col in REPEAT_COLUMNS.items():
                repeat[base] = row[col]
            yield int(eid), 3, repeat


def _timed_visit(
    subject: dict[str, Any], eid: int, instance: int, config: SynthConfig, out: Path
) -> tuple[VisitResult, float]:
    start = time.perf_counter()
    result = generate_visit(subject, eid, instance, config, out)
    return result, time.perf_counter() - start


def _completed(
    out: Path, eid: int, instance: int, subject: dict[str, Any], config: SynthConfig
) -> dict | None:
    """The summary of a visit already generated with these values and settings, with all its zips."""
    path = out / "truth" / f"{eid}_{instance}" / "idp.json"
    if not path.exists():
        return None
    done = json.loads(path.read_text())
    if done.get("fingerprint") != visit_fingerprint(subject, config):
        return None
    if not all((out / "bulk" / name).exists() for name in done["files"]):
        return None
    return done


def _remove_stale(out: Path, visits: set[tuple[int, int]]) -> None:
    """Delete temporary folders of interrupted visits, and the files of visits from an earlier run that
    this cohort no longer has."""
    for folder in (out / "truth").iterdir():
        if not folder.is_dir():
            continue
        if folder.name.startswith("."):
            shutil.rmtree(folder, ignore_errors=True)
            continue
        eid, _, instance = folder.name.partition("_")
        if eid.isdigit() and instance.isdigit() and (int(eid), int(instance)) not in visits:
            summary = folder / "idp.json"
            if summary.exists():
                for name in json.loads(summary.read_text())["files"]:
                    (out / "bulk" / name).unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def synthesize(config: SynthConfig, out: str | Path, progress: bool = True) -> CohortSummary:
    """Generate a synthetic UK Biobank-like cohort into ``out`` (see module docstring).

    Parameters
    ----------
    config : SynthConfig
    out : path-like
        Output directory (created; existing complete visits are kept).
    progress : bool
        Show a progress bar.

    Returns
    -------
    CohortSummary
    """
    start = time.perf_counter()
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    population = simulate_population(config.participants, config.seed, config.repeat_visit_rate)
    _write_atomic(out / "phenotypes.csv", to_ukbconv(population, config.seed).to_csv(index=False))
    _write_atomic(out / "truth" / "population.csv", population.to_csv())
    model = json_ready(dataclasses.asdict(GenerativeModel()))
    _write_atomic(out / "truth" / "coefficients.json", json.dumps(model, indent=1))
    meta = {"cohortscale_version": __version__, "config": config_to_dict(config)}
    _write_atomic(out / "truth" / "config.json", json.dumps(meta, indent=1))

    rows: list[dict[str, Any]] = []
    anomaly_rows: list[dict[str, Any]] = []
    generated = skipped = 0
    visit_seconds: list[float] = []
    if config.images:
        todo = []
        visits = list(visit_subjects(population))
        _remove_stale(out, {(eid, instance) for eid, instance, _ in visits})
        for eid, instance, subject in visits:
            done = _completed(out, eid, instance, subject, config)
            if done is None:
                todo.append((subject, eid, instance))
            else:
                skipped += 1
                _collect(done["idps"], done["anomalies"], eid, instance, rows, anomaly_rows)
        bar = tqdm(total=len(todo), desc="synth", unit="visit", disable=not progress)
        with ProcessPoolExecutor(max_workers=max(1, config.workers)) as pool:
            futures = [pool.submit(_timed_visit, s, e, i, config, out) for s, e, i in todo]
            for future in as_completed(futures):
                result, seconds = future.result()
                visit_seconds.append(seconds)
                generated += 1
                _collect(result.idps, result.anomalies, result.eid, result.instance, rows, anomaly_rows)
                bar.update()
        bar.close()
        idps = pd.DataFrame(rows).assign(source="anatomy")
    else:
        idps = truth_idps(population).reset_index().assign(instance=2, source="model")
    idps = idps.sort_values(["eid", "instance"]).reset_index(drop=True)
    _write_atomic(out / "truth" / "idps.csv", idps.to_csv(index=False))
    anomalies = pd.DataFrame(anomaly_rows, columns=["eid", "instance", "anomaly", "details"])
    anomalies = anomalies.sort_values(["eid", "instance", "anomaly"]).reset_index(drop=True)
    _write_atomic(out / "truth" / "anomalies.csv", anomalies.to_csv(index=False))
    return CohortSummary(
        out=out,
        participants=len(population),
        visits=generated + skipped,
        generated=generated,
        skipped=skipped,
        anomalies=anomalies,
        seconds=time.perf_counter() - start,
        seconds_per_visit=sum(visit_seconds) / len(visit_seconds) if visit_seconds else float("nan"),
    )


def _collect(
    idps: dict[str, Any],
    anomalies: list[dict[str, Any]],
    eid: int,
    instance: int,
    rows: list[dict[str, Any]],
    anomaly_rows: list[dict[str, Any]],
) -> None:
    rows.append({"eid": eid, "instance": instance, **idps})
    for record in anomalies:
        details = {k: v for k, v in record.items() if k != "anomaly"}
        anomaly_rows.append(
            {"eid": eid, "instance": instance, "anomaly": record["anomaly"], "details": json.dumps(details)}
        )
