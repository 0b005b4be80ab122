"""The ``cohortscale`` command line. Thin: every command parses options and calls the Python API."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

import click

from cohortscale import __version__
from cohortscale.config import SynthConfig, load_config
from cohortscale.pipeline.run import RunConfig

#: Where the demo writes its cohort store, inside its output folder.
DEMO_STORE = "cohort.zarr"
#: Recipe steps whose results ``analyse`` prints (models with an estimate, interval and p per row).
SUMMARISED_KINDS = ("ols", "logit", "tertile_logit", "cox", "decline")
#: Folders of the demo's phenotype-only cohort and of its statistics, inside its output folder.
DEMO_POPULATION, DEMO_ANALYSIS = "population", "analysis"
#: Participants of the phenotype-only cohort the demo runs the study recipes on.
DEMO_STATISTICS_PARTICIPANTS = 5000
#: Folder of ``train --synth``'s generated cohort (and its store), inside the model folder.
TRAINING_DATA = "data"
#: Settings of the embedded demo: a small cohort at quarter scale where anomalies are common enough to see.
DEMO_SETTINGS: dict[str, object] = {
    "participants": 8,
    "scale": 0.25,
    "workers": 2,
    "repeat_visit_rate": 0.25,
    **{
        f"anomalies.{name}": 0.12
        for name in ("duplicate_station", "missing_series", "swap_station", "ghost_slices", "corrupt_zip")
    },
}


def _synth_config(
    config_file: str | None,
    overrides: dict[str, object],
    sets: tuple[str, ...],
    base: SynthConfig | None = None,
) -> SynthConfig:
    """Defaults (or ``base``) ← TOML file ← options ← ``--set`` pairs; a bad setting is a usage error."""
    try:
        given = {k: v for k, v in overrides.items() if v is not None}
        config = load_config(SynthConfig, config_file, given, base=base)
        return load_config(SynthConfig, overrides=list(sets), base=config)
    except (KeyError, ValueError, TypeError) as exc:
        raise click.UsageError(str(exc).strip("'\"")) from exc


@click.group()
@click.version_option(__version__, prog_name="cohortscale")
def main() -> None:
    """cohortscale: UK Biobank-style body MRI cohorts from DICOM to image-derived phenotypes."""


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--participants", type=int, help="Number of participants.  [default: 3]")
@click.option("--seed", type=int, help="Cohort seed.  [default: 0]")
@click.option("--scale", type=float, help="Matrix scale in (0, 1]; 0.25 for quick tests.  [default: 1]")
@click.option("--workers", type=int, help="Parallel processes.  [default: 1]")
@click.option("--no-images", is_flag=True, help="Only phenotypes and model IDPs (fast, any cohort size).")
@click.option("--multiecho", "multiecho", help="Multi-echo fields, e.g. 20254,20203.  [default: 20254]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), help="TOML settings.")
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any setting, e.g. anomalies.corrupt_zip=0.5."
)
def synth(
    out: str,
    participants: int | None,
    seed: int | None,
    scale: float | None,
    workers: int | None,
    no_images: bool,
    multiecho: str | None,
    config_file: str | None,
    sets: tuple[str, ...],
) -> None:
    """Write a synthetic UK Biobank-like cohort (bulk zips, phenotypes, ground truth) to OUT."""
    from cohortscale.synth import synthesize

    overrides = {
        "participants": participants,
        "seed": seed,
        "scale": scale,
        "workers": workers,
        "multiecho_fields": multiecho,
        "images": False if no_images else None,
    }
    config = _synth_config(config_file, overrides, sets)
    summary = synthesize(config, out)
    _echo_summary(summary)


def _echo_summary(summary) -> None:
    click.echo(
        f"{summary.participants} participants, {summary.visits} imaging visits "
        f"({summary.generated} generated, {summary.skipped} already complete) in {summary.seconds:.1f} s"
    )
    if summary.generated:
        click.echo(f"{summary.seconds_per_visit:.2f} s per visit in a worker")
    if len(summary.anomalies):
        counts = summary.anomalies["anomaly"].value_counts().sort_index()
        click.echo("anomalies injected: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo(f"written to {summary.out}")


def _cluster_options(func):
    """Options every Dask-running command shares."""
    for option in reversed(
        (
            click.option("--workers", type=int, help="Worker processes of the embedded cluster."),
            click.option("--threads", type=int, help="Threads per worker.  [default: 1]"),
            click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:port)."),
            click.option(
                "--gpus", is_flag=True, help="Use dask-cuda's LocalCUDACluster (one worker per GPU)."
            ),
            click.option("--batch-size", type=int, help="Visits per task (default: from the stage's cost)."),
            click.option(
                "--config", "config_file", type=click.Path(dir_okay=False, exists=True), help="TOML."
            ),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="e.g. cluster.workers=4."),
        )
    ):
        func = option(func)
    return func


def _run_config(config_file: str | None, sets: tuple[str, ...], **options: object) -> RunConfig:
    keys = {
        "workers": "cluster.workers",
        "threads": "cluster.threads",
        "scheduler": "cluster.scheduler",
        "gpus": "cluster.gpus",
        "batch_size": "engine.batch_size",
        "card": "segmentation.card",
        "device": "segmentation.device",
        "labels": "measure.labels",
    }
    given = {keys[k]: v for k, v in options.items() if v not in (None, False)}
    try:
        config = load_config(RunConfig, config_file, given)
        return load_config(RunConfig, overrides=list(sets), base=config)
    except (KeyError, ValueError, TypeError) as exc:
        raise click.UsageError(str(exc).strip("'\"")) from exc


@main.command()
@click.argument("bulk", type=click.Path(file_okay=False, exists=True))
@click.option("--store", type=click.Path(file_okay=False), required=True, help="Cohort store (Zarr v3).")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any visit is quarantined or failed.")
@_cluster_options
def ingest(
    bulk: str, store: str, strict: bool, config_file: str | None, sets: tuple[str, ...], **options: object
) -> None:
    """Convert the UK Biobank bulk zips in BULK into the cohort store, once (resumable).

    With --strict the exit status is 1 while any visit of the store is quarantined or failed."""
    from cohortscale.pipeline.ingest import run_ingest

    run = _run_config(config_file, sets, **options)
    report = run_ingest(bulk, store, run.ingest, run.engine, run.cluster)
    click.echo(str(report))
    click.echo(f"store: {store}  (cohortscale status {store})")
    _exit_if_unsettled(strict, store, "ingest")


@main.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--strict", is_flag=True, help="Exit with status 1 if any visit is quarantined or failed.")
@_cluster_options
def fuse(store: str, strict: bool, config_file: str | None, sets: tuple[str, ...], **options: object) -> None:
    """Fuse the six Dixon stations of every ingested visit in STORE into neck-to-knee volumes (resumable).

    Writes dixon/fused/{in,opp,fat,water,ff} on the fused grid with its affine, and fat–water swap flags
    per station and leg (fusion.swaps=correct also exchanges them)."""
    from cohortscale.pipeline.fusion import run_fusion

    run = _run_config(config_file, sets, **options)
    # A ValueError: the store's fused grid differs from the one asked for.
    _report_stage(store, strict, "fusion", lambda: run_fusion(store, run.fusion, run.engine, run.cluster))


@main.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--strict", is_flag=True, help="Exit with status 1 if any visit is quarantined or failed.")
@_cluster_options
def fit(store: str, strict: bool, config_file: str | None, sets: tuple[str, ...], **options: object) -> None:
    """Fit water, fat, PDFF, R2*, B0 and iron to the multi-echo slices of every ingested visit in STORE
    (resumable).

    Writes maps/<field>/{water,fat,pdff,r2star,b0,iron,residual,quality} with the slice's affine, e.g.
    --set fitting.spectrum=ren_marrow9, fitting.phase_sign=-1, fitting.dynamics=first,
    fitting.options.r2star_max_s=1000; changed settings fit every visit again."""
    from cohortscale.pipeline.fitting import run_fitting

    run = _run_config(config_file, sets, **options)
    # A ValueError: the store's maps differ in shape from the multi-echo layout.
    _report_stage(store, strict, "fitting", lambda: run_fitting(store, run.fitting, run.engine, run.cluster))


@main.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--card",
    type=click.Path(dir_okay=False, exists=True),
    help="Model card (JSON or TOML) beside its weights file (default: the packaged body-unet model).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    help="Where the network runs (auto: a worker's GPU when torch sees one).  [default: auto]",
)
@click.option("--strict", is_flag=True, help="Exit with status 1 if any visit is quarantined or failed.")
@_cluster_options
def segment(
    store: str, strict: bool, config_file: str | None, sets: tuple[str, ...], **options: object
) -> None:
    """Segment the fused volumes of every fused visit in STORE with a model (resumable).

    Writes labels/<model name>: the card's label ids (uint8, 0 background) on the fused grid, e.g.
    --card model.json --set segmentation.overlap=0.25, segmentation.batch_size=2; a changed card or
    weights file segments every visit again."""
    from cohortscale.pipeline.segmentation import run_segmentation

    run = _run_config(config_file, sets, **options)
    # A ValueError: a missing or bad card or weights, a store not fused yet.
    _report_stage(
        store,
        strict,
        "segmentation",
        lambda: run_segmentation(store, run.segmentation, run.engine, run.cluster),
    )


#: Option of the commands that write the IDP table.
_TABLE_DIR = click.option(
    "--table-dir",
    type=click.Path(file_okay=False),
    help="Where idps.parquet and idps.csv go.  [default: the store's parent folder]",
)


@main.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--labels", help="Label set to measure (labels/<name>).  [default: the store's only one]")
@_TABLE_DIR
@click.option("--strict", is_flag=True, help="Exit with status 1 if any visit is quarantined or failed.")
@_cluster_options
def measure(
    store: str,
    table_dir: str | None,
    strict: bool,
    config_file: str | None,
    sets: tuple[str, ...],
    **options: object,
) -> None:
    """Measure every segmented visit in STORE: volumes, thigh ratios, VAT/ASAT, femoral, vertebral-marrow
    and liver fat and R2* (resumable); then gather the IDP table (idp/* in the store, parquet and CSV).

    E.g. --set measure.min_roi_area_mm2=100; changed settings measure every visit again."""
    from cohortscale.pipeline.measure import run_measure
    from cohortscale.pipeline.reduce import reduce_idps

    run = _run_config(config_file, sets, **options)
    # A ValueError: no or several label sets, or one the store does not hold.
    _report_stage(store, strict, "measure", lambda: run_measure(store, run.measure, run.engine, run.cluster))
    tables = reduce_idps(store, table_dir)
    click.echo(f"IDP table: {tables.parquet} (and {tables.csv.name}); {_status_counts(tables.counts())}")


def _status_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


@main.command()
@click.argument("bulk", type=click.Path(file_okay=False, exists=True))
@click.option("--store", type=click.Path(file_okay=False), required=True, help="Cohort store (Zarr v3).")
@_TABLE_DIR
@click.option(
    "--card",
    type=click.Path(dir_okay=False, exists=True),
    help="Segmentation model card (default: the packaged body-unet model).",
)
@click.option("--strict", is_flag=True, help="Exit with status 1 if any visit is excluded or failed.")
@_cluster_options
def run(
    bulk: str,
    store: str,
    table_dir: str | None,
    strict: bool,
    config_file: str | None,
    sets: tuple[str, ...],
    **options: object,
) -> None:
    """Run the whole pipeline on the bulk zips in BULK: ingest → fuse → segment → fit → measure, then the
    IDP table, on one Dask cluster (the embedded one unless --scheduler). Resumable: run it again after a
    crash and only unfinished work is done; a finished run does nothing.

    Settings of every stage: --set fusion.swaps=correct, fitting.spectrum=ren_marrow9, measure.labels=…,
    or a TOML file with [cluster], [engine], [ingest], [fusion], [fitting], [segmentation], [measure]."""
    from cohortscale.pipeline.run import run_cohort

    config = _run_config(config_file, sets, **options)
    try:
        summary = run_cohort(bulk, store, config, table_dir)
    except ValueError as exc:  # settings or a store the stages cannot use
        raise click.UsageError(str(exc)) from exc
    click.echo(str(summary))
    if strict and (summary.tables.table["status"] != "measured").any():
        raise SystemExit(1)


@main.command()
@click.option(
    "--idps",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="IDP table: idps.parquet of a run, or a synthetic cohort's truth/idps.csv.",
)
@click.option(
    "--phenotypes",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="UK Biobank phenotype export (ukbconv CSV, R .tab or research-platform CSV).",
)
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    metavar="NAME|FILE",
    help="Recipe to run (repeatable): vbm, thigh, spine-age, phewas or a TOML file.  [default: all four]",
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Results folder.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write OUT/report.html too.")
def analyse(idps: str, phenotypes: str, recipes: tuple[str, ...], out: str, report: bool) -> None:
    """Run study recipes on an IDP table joined with phenotypes: one folder of result tables per recipe
    (and the HTML report of them all)."""
    from cohortscale.analysis.run import run_recipes
    from cohortscale.stats.summary import summary

    try:
        results = run_recipes(idps, phenotypes, out, list(recipes) or None)
    except (ValueError, KeyError) as exc:
        raise click.UsageError(str(exc)) from exc
    for result in results:
        steps = len(result.recipe.steps)
        click.echo(
            f"{result.recipe.name}: {result.participants} participants, {steps} steps → {result.folder}"
        )
        for step in result.recipe.steps:
            if step.name in result.failures:
                click.echo(f"  not run: {result.failures[step.name]}")
            elif step.kind in SUMMARISED_KINDS:
                click.echo(summary(result.tables[step.name], f"  {step.title or step.name}"))
    if report:
        _write_report(out)


def _write_report(results: str) -> None:
    from cohortscale.report.analysis_report import write_analysis_report

    click.echo(f"report: {write_analysis_report(results)}")


@main.command()
@click.argument("results", type=click.Path(file_okay=False, exists=True))
def report(results: str) -> None:
    """Write RESULTS/report.html from the recipe result folders of `cohortscale analyse`: Table 1, the
    correlation heatmap, forest plots, box plots, odds ratios, Kaplan–Meier curves and the PheWAS plot."""
    _write_report(results)


#: ``cohortscale train`` options → settings of ``DefaultTrainingConfig`` (dotted for its sections).
TRAIN_OPTIONS = {
    "epochs": "train.epochs",
    "steps_per_epoch": "train.steps_per_epoch",
    "validation_fraction": "validation_fraction",
    "seed": "train.seed",
    "spacing": "spacing_mm",
    "patch": "train.patch_size",
    "base_width": "model.base_width",
    "depth": "model.depth",
    "device": "device",
}


def _flat_settings(values: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Dotted key → value of a nested settings dict."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat_settings(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _setting_text(value: object) -> str:
    """A setting as ``--set`` and the options read it back (lists comma-separated, None as ``none``)."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _train_command(
    cohort: str | None, store: str, out: str, config: object, annotations: str | None = None
) -> str:
    """The ``cohortscale train`` command line that gives ``config``: every option, and ``--set`` for the
    other settings that differ from the defaults."""
    from cohortscale.config import config_to_dict
    from cohortscale.models.default import training_preset

    settings = _flat_settings(config_to_dict(config))
    scheme = str(settings.pop("scheme"))
    defaults = _flat_settings(config_to_dict(training_preset(scheme)))
    source = ["--labels", annotations] if annotations is not None else ["--cohort", str(cohort)]
    words = ["cohortscale", "train", "--scheme", scheme, *source, "--store", store, "--out", out]
    for option, key in TRAIN_OPTIONS.items():
        words += [f"--{option.replace('_', '-')}", _setting_text(settings[key])]
    for key, value in settings.items():
        if key not in TRAIN_OPTIONS.values() and value != defaults.get(key):
            words += ["--set", f"{key}={_setting_text(value)}"]
    return shlex.join(words)


def _training_cohort(out: str, participants: int, seed: int, scale: float) -> tuple[str, str]:
    """Generate, ingest and fuse (each resumable) a synthetic training cohort in ``OUT/data``."""
    from cohortscale.pipeline.fusion import FusionConfig, run_fusion
    from cohortscale.pipeline.ingest import run_ingest
    from cohortscale.synth import synthesize
    from cohortscale.synth.acquisition import fused_shape_spacing

    cohort, store = Path(out) / TRAINING_DATA, Path(out) / TRAINING_DATA / DEMO_STORE
    settings = {"participants": participants, "seed": seed, "scale": scale, "workers": os.cpu_count() or 1}
    synthesize(load_config(SynthConfig, overrides=settings), cohort)
    click.echo(str(run_ingest(cohort / "bulk", store)))
    # Fused on the cohort's own grid, where its truth labels are.
    shape, spacing = fused_shape_spacing(scale)
    click.echo(str(run_fusion(store, FusionConfig(shape=shape, spacing_mm=spacing, swaps="correct"))))
    return str(cohort), str(store)


@main.command()
@click.option(
    "--cohort",
    type=click.Path(file_okay=False, exists=True),
    help="Synthetic cohort directory (its truth/ labels are the targets); or --synth.",
)
@click.option(
    "--store",
    type=click.Path(file_okay=False, exists=True),
    help="Its cohort store after fusion (the inputs); or --synth.",
)
@click.option(
    "--synth",
    "synth_participants",
    type=int,
    help="Instead of --cohort/--store: generate this many synthetic participants in OUT/data, ingest and "
    "fuse them (resumable), and train on them.",
)
@click.option("--synth-seed", type=int, default=103, show_default=True, help="Seed of that cohort.")
@click.option("--scale", type=float, default=0.25, show_default=True, help="Matrix scale of that cohort.")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    required=True,
    help="Model folder: card, weights, history.json, checkpoints/ (resumed from).",
)
@click.option("--epochs", type=int, help="Epochs in all, resumed ones included.  [default: 50]")
@click.option("--steps-per-epoch", type=int, help="Optimiser steps per epoch.  [default: 50]")
@click.option(
    "--validation-fraction", type=float, help="Share of participants held out, in (0, 1).  [default: 0.2]"
)
@click.option("--seed", type=int, help="Seed of the split, initial weights and patches.  [default: 0]")
@click.option(
    "--scheme",
    type=click.Choice(["body", "spine"]),
    default="body",
    show_default=True,
    help="Which default model: body (whole volume) or spine (the cascade's bodies and discs, in the box "
    "around the body model's vertebral bodies); sets the defaults of the options below.",
)
@click.option(
    "--spacing", metavar="Z,Y,X", help="Model voxel spacing, mm.  [default: 12,9,9; spine 3,2.25,2.25]"
)
@click.option("--patch", metavar="Z,Y,X", help="Patch size, voxels.  [default: 32,40,48; spine 48,40,40]")
@click.option(
    "--base-width", type=int, help="Feature channels of the U-Net's top level.  [default: 16; spine 8]"
)
@click.option("--depth", type=int, help="Resolution levels of the U-Net.  [default: 4]")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    help="Where to train (auto: a GPU when torch sees one).  [default: auto]",
)
@click.option(
    "--labels",
    "annotations",
    metavar="NAME",
    help="Instead of a synthetic cohort's truth: train on the store's label set labels/NAME (a user's "
    "annotations, imported with cohortscale.pipeline.labels.import_labels); its labels become the classes.",
)
@click.option(
    "--cascade-into",
    "cascade_into",
    type=click.Path(dir_okay=False, exists=True),
    help="After training, copy the model beside this (JSON) model card and list it in the card's cascade "
    "(a spine model refining a body model's vertebral bodies).",
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), help="TOML settings.")
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any setting, e.g. train.learning_rate=3e-4."
)
def train(
    cohort: str | None,
    store: str | None,
    synth_participants: int | None,
    synth_seed: int,
    scale: float,
    out: str,
    scheme: str,
    annotations: str | None,
    cascade_into: str | None,
    config_file: str | None,
    sets: tuple[str, ...],
    **options: object,
) -> None:
    """Train a model on a synthetic cohort's fused visits, or on a user's annotations (resumable).

    Holds out whole participants for validation, writes OUT/<name>.json (card), the best epoch's weights
    and history.json, and prints the validation Dice per class on the fused grid; then
    cohortscale segment STORE --card OUT/<name>.json runs it (--cascade-into puts a spine model in a body
    model's cascade, to refine its vertebral bodies). Settings: name, version, spacing_mm,
    validation_fraction, device, train.* (e.g. train.learning_rate, train.batch_size) and model.* (e.g.
    model.residual, model.dropout)."""
    from cohortscale.models.default import DefaultTrainingConfig, train_default_model, training_preset

    given = {TRAIN_OPTIONS[k]: v for k, v in options.items() if v is not None}
    try:
        config = load_config(DefaultTrainingConfig, config_file, given, base=training_preset(scheme))
        config = load_config(DefaultTrainingConfig, overrides=list(sets), base=config)
    except (KeyError, ValueError, TypeError) as exc:
        raise click.UsageError(str(exc).strip("'\"")) from exc
    if cascade_into and Path(cascade_into).suffix.lower() != ".json":
        raise click.UsageError(f"--cascade-into {cascade_into}: give a JSON model card (it is rewritten)")
    if annotations is not None:
        if cohort or synth_participants is not None or not store:
            raise click.UsageError("give --labels NAME with --store only (the annotations are in the store)")
        command = _train_command(None, store, out, config, annotations)
    elif synth_participants is not None:
        if cohort or store:
            raise click.UsageError("give either --synth or --cohort and --store")
        cohort, store = _training_cohort(out, synth_participants, synth_seed, scale)
        command = _train_command(cohort, store, out, config)
        command = command.replace(
            shlex.join(["--cohort", cohort, "--store", store]),
            shlex.join(
                ["--synth", str(synth_participants), "--synth-seed", str(synth_seed), "--scale", str(scale)]
            ),
        )
    elif not (cohort and store):
        raise click.UsageError("give --cohort and --store (a fused synthetic cohort), or --synth N")
    else:
        command = _train_command(cohort, store, out, config)
    try:
        result = train_default_model(
            cohort, store, out, config, command=command, progress=True, annotations=annotations
        )
    except ValueError as exc:  # no usable visit, grids that differ, checkpoints of other settings
        raise click.UsageError(str(exc)) from exc
    participants = {key.rpartition("_")[0] for key in result.validation_keys}
    click.echo(
        f"trained {config.name} {config.version} on {len(result.training_keys)} visits, validated on "
        f"{len(result.validation_keys)} ({len(participants)} participant(s)); {len(result.history)} "
        f"epoch(s), best epoch {result.best_epoch}"
    )
    click.echo("validation Dice per class at the best epoch (fused grid, mean over validation visits):")
    click.echo(result.validation.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"mean Dice (foreground classes): {result.mean_dice:.3f}")
    click.echo(f"card: {result.card_path}\nweights: {result.weights_path}\nhistory: {result.history_path}")
    click.echo(
        f"segment with: {shlex.join(['cohortscale', 'segment', store, '--card', str(result.card_path)])}"
    )
    click.echo(f"reproduce with: {command}")
    if cascade_into:
        from cohortscale.models.cascade import add_to_cascade

        try:
            add_to_cascade(cascade_into, result.card_path)
        except ValueError as exc:  # cards that do not fit together, clashing file names
            raise click.UsageError(str(exc)) from exc
        click.echo(f"added to the cascade of {cascade_into}: segment with it to run both")


def _report_stage(store: str, strict: bool, stage: str, run: Callable[[], object]) -> None:
    """Run a stage over STORE and print its report; settings or a store the stage cannot use (a
    ``ValueError``) are usage errors, and ``--strict`` exits 1 while any visit is unsettled."""
    try:
        report = run()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(str(report))
    _exit_if_unsettled(strict, store, stage)


def _exit_if_unsettled(strict: bool, store: str, stage: str) -> None:
    """With ``--strict``, exit 1 while any visit of the store is not done for ``stage``."""
    if strict:
        from cohortscale.io.ledger import Ledger

        # The cohort's state, not just this run's: earlier quarantines count too.
        if (Ledger(store).read(stage)["status"] != "done").any():
            raise SystemExit(1)


@main.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
def status(store: str) -> None:
    """Done / quarantined / failed / pending visits per stage of STORE, with reasons."""
    from cohortscale.pipeline.status import store_status

    click.echo(store_status(store))


@main.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--participant",
    "participants",
    multiple=True,
    required=True,
    metavar="KEY",
    help="Visit key, e.g. 1000107_2 (repeatable).",
)
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option(
    "--array",
    "arrays",
    multiple=True,
    metavar="PATH",
    help="Store array on the fused grid (repeatable).  [default: the fused contrasts]",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["nifti", "nrrd"]),
    help="File format (repeatable).  [default: nifti and nrrd]",
)
def export(
    store: str, participants: tuple[str, ...], out: str, arrays: tuple[str, ...], formats: tuple[str, ...]
) -> None:
    """Export fused volumes (or labels on the fused grid) of visits in STORE as NIfTI (RAS) / NRRD (LPS)."""
    from cohortscale.io.export import ExportError, NotFusedError, export_participant
    from cohortscale.io.store import open_store

    root = open_store(store, mode="r")
    for key in participants:
        try:
            paths = export_participant(root, key, out, list(arrays) or None, formats or ("nifti", "nrrd"))
        except NotFusedError as exc:
            raise click.ClickException(str(exc)) from exc
        except ExportError as exc:
            raise click.UsageError(str(exc)) from exc
        for path in paths:
            click.echo(str(path))


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False), default="demo", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a demo setting.")
def demo(out: str, sets: tuple[str, ...]) -> None:
    """Run the main job on the embedded default: a synthetic cohort through the pipeline, and its report."""
    from cohortscale.models.card import ModelCard
    from cohortscale.pipeline.cluster import ClusterConfig
    from cohortscale.pipeline.fitting import FittingConfig
    from cohortscale.pipeline.fusion import FusionConfig
    from cohortscale.pipeline.run import run_cohort
    from cohortscale.pipeline.segmentation import labels_path
    from cohortscale.pipeline.status import status_html
    from cohortscale.report.fitting_report import fitting_html
    from cohortscale.report.fusion_report import fusion_html
    from cohortscale.report.idp_report import idp_html
    from cohortscale.report.segmentation_report import segmentation_html
    from cohortscale.report.synth_report import write_synth_report
    from cohortscale.synth import synthesize
    from cohortscale.synth.acquisition import fused_shape_spacing

    config = _synth_config(None, {}, sets, base=load_config(SynthConfig, overrides=DEMO_SETTINGS))
    summary = synthesize(config, out)
    _echo_summary(summary)
    store = Path(out) / DEMO_STORE
    shape, spacing = fused_shape_spacing(config.scale)
    run = RunConfig(
        cluster=ClusterConfig(workers=config.workers),
        fusion=FusionConfig(shape=shape, spacing_mm=spacing, swaps="correct"),
        fitting=FittingConfig(phase_sign=config.phase_sign),
    )
    result = run_cohort(Path(out) / "bulk", store, run)
    click.echo(str(result))
    reports = {r.stage: r for r in result.reports}
    labels = labels_path(ModelCard.load(run.segmentation.card_path()))
    sections = {
        "Ingest: bulk zips → cohort store": f"<p>{reports['ingest']}</p>" + status_html(store),
        "Fusion: six stations → one neck-to-knee volume": fusion_html(store, Path(out), reports["fusion"]),
        "Fitting: multi-echo slices → PDFF, R2* and iron maps": fitting_html(
            store, Path(out), reports["fitting"]
        ),
        "Segmentation: fused volumes → labels (packaged default model)": segmentation_html(
            store, Path(out), reports["segmentation"], labels
        ),
        "Measures: one row of image-derived phenotypes per visit": idp_html(
            result.tables, Path(out), Path(out) / "truth" / "idps.csv"
        ),
        "Statistics: the study recipes": _demo_statistics(config, Path(out)),
    }
    report = write_synth_report(Path(out), sections)
    click.echo(f"store: {store}\nIDP table: {result.tables.parquet}\nreport: {report}")


def _demo_statistics(config: SynthConfig, out: Path) -> str:
    """Run the packaged recipes on a phenotype-only cohort (its truth IDPs) and return the report section.

    A handful of imaged visits cannot power the studies' statistics, so the demo also generates
    :data:`DEMO_STATISTICS_PARTICIPANTS` participants without images (phenotypes and their IDPs) and runs
    the recipes there, with the same generative model as the imaged cohort.
    """
    from dataclasses import replace

    from cohortscale.analysis.run import run_recipes
    from cohortscale.report.analysis_report import write_analysis_report
    from cohortscale.synth import synthesize

    population = out / DEMO_POPULATION
    synthesize(replace(config, participants=DEMO_STATISTICS_PARTICIPANTS, images=False), population, False)
    results = run_recipes(
        population / "truth" / "idps.csv", population / "phenotypes.csv", out / DEMO_ANALYSIS
    )
    report = write_analysis_report(out / DEMO_ANALYSIS)
    click.echo(f"statistics: {len(results)} recipes → {report}")
    items = "".join(
        f"<li>{r.recipe.title}: {r.participants} participants, {len(r.recipe.steps)} analyses</li>"
        for r in results
    )
    link = report.relative_to(out).as_posix()
    return (
        f"<p>The packaged recipes (<code>cohortscale analyse</code>) on {DEMO_STATISTICS_PARTICIPANTS:,} "
        f"participants generated without images (<code>{DEMO_POPULATION}/</code>: phenotypes and IDPs), "
        f'since the imaged visits are too few for statistics:</p><ul>{items}</ul><p><a href="{link}">'
        "The statistics report</a>: Table 1 by sex, correlation heatmaps, forest plots, odds ratios, "
        "Kaplan–Meier curves and the PheWAS plot.</p>"
    )
