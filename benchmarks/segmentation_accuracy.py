"""Accuracy of a body model on held-out synthetic participants: Dice and IoU per label, vertebral levels too.

For every fused visit of a test cohort (generated with a seed the model never saw), the model and its
cascade (the packaged body model's: the spine model in the box around its vertebral bodies) segment the
fused volume as the segmentation stage does (card pre-processing, sliding windows, scores back to the fused
grid), the merged vertebral-body class is split into levels C3–S1 by counting
(:func:`cohortscale.ops.vertebrae.label_vertebrae`), and each label is compared with the cohort's truth:
Dice per label and visit, averaged over the visits that contain the label.

Run: ``.venv/bin/python benchmarks/segmentation_accuracy.py --card MODEL.json --cohort DIR --store STORE``
(the store fused on the cohort's grid); ``--results segmentation_accuracy_full`` for a full-scale cohort.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from cohortscale.io.store import open_store, participant_rows
from cohortscale.models.cascade import cached_cascade, cascade_labels, segment_cascade
from cohortscale.models.dataset import TRUTH_GROUP, fused_visits, truth_path
from cohortscale.models.default import DEFAULT_CLASSES, SPINE_CLASSES, VERTEBRAL_BODY_ID, class_lookup
from cohortscale.models.metrics import overlap_table
from cohortscale.models.preprocess import read_fused, spacing_from_affine
from cohortscale.ops.vertebrae import AnchorNotFoundError, label_vertebrae
from cohortscale.pipeline.fusion import FUSED
from cohortscale.synth.labels import LABEL_NAMES, VERTEBRA_IDS
from common import write_results

#: The classes of both default models (body, then the spine model's discs).
CLASSES = {**DEFAULT_CLASSES, **SPINE_CLASSES}


def truth_labels(cohort: Path, key: str) -> np.ndarray:
    """The visit's truth on the fused grid: the models' classes, vertebral bodies kept by level."""
    labels = zarr.open_group(truth_path(cohort, key), mode="r")[TRUTH_GROUP]["labels"][:]
    mapped = class_lookup(CLASSES)[labels]
    levels = np.isin(labels, VERTEBRA_IDS)
    mapped[levels] = labels[levels]
    return mapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, required=True)
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument(
        "--describe", help="How the test cohort was made, for the notes (default: its folder's name)."
    )
    parser.add_argument(
        "--results", default="segmentation_accuracy", help="Name of the results files (one per test cohort)."
    )
    args = parser.parse_args()
    models = cached_cascade(args.card)
    root = open_store(args.store)
    keys = fused_visits(args.store)
    rows_of = participant_rows(root)
    # Scored: the labels of the models that run on the cohort's grid (a refining model may skip it).
    spacing = spacing_from_affine(root[f"{FUSED}/affine"][rows_of[keys[0]]])
    running = [m.card for m in models if m.card.runs_on(spacing)]
    names = {i: n for i, n in cascade_labels(running).items() if i not in (0, VERTEBRAL_BODY_ID)}
    names.update({i: LABEL_NAMES[i] for i in VERTEBRA_IDS})
    tables, seconds, failures = [], [], []
    for key in keys:
        inputs = dict.fromkeys(name for m in models for name in m.card.inputs)
        arrays, affine = read_fused(root, rows_of[key], list(inputs))
        start = time.perf_counter()
        predicted = segment_cascade(
            arrays, affine, [(m.card, m.model) for m in models], "cpu", batch_size=2, overlap=args.overlap
        )
        seconds.append(time.perf_counter() - start)
        try:
            predicted = label_vertebrae(
                predicted, VERTEBRAL_BODY_ID, spacing_from_affine(affine), affine=affine
            )
        except AnchorNotFoundError as exc:
            failures.append(f"{key}: {exc}")
        truth = truth_labels(args.cohort, key)
        table = overlap_table(predicted, truth, names)
        # All levels as one body class: the network's segmentation, apart from the counting.
        bodies = overlap_table(
            np.where(np.isin(predicted, [*VERTEBRA_IDS, VERTEBRAL_BODY_ID]), VERTEBRAL_BODY_ID, 0),
            np.where(np.isin(truth, VERTEBRA_IDS), VERTEBRAL_BODY_ID, 0),
            {VERTEBRAL_BODY_ID: "vertebral bodies, all levels as one"},
        )
        tables.append(pd.concat([table, bodies]).assign(visit=key))
        print(f"{key}: mean Dice {table['dice'].mean():.3f} in {seconds[-1]:.1f} s", flush=True)
    every = pd.concat(tables)
    per_label = every.groupby(["id", "name"], sort=True).agg(
        dice=("dice", "mean"), iou=("iou", "mean"), visits=("dice", "count"), worst_dice=("dice", "min")
    )
    rows = [
        {"id": int(i), "label": name, "visits": int(r.visits), "dice": round(r.dice, 3),
         "iou": round(r.iou, 3), "worst_visit_dice": round(r.worst_dice, 3)}
        for (i, name), r in per_label.iterrows()
        if r.visits > 0
    ]  # fmt: skip
    ids = per_label.index.get_level_values("id")
    vertebral = per_label.loc[ids.isin(VERTEBRA_IDS)]
    other = per_label.loc[~ids.isin([*VERTEBRA_IDS, VERTEBRAL_BODY_ID])]
    merged = per_label.loc[ids == VERTEBRAL_BODY_ID, "dice"].mean()
    summary = (
        f"Model {' + '.join(f'{c.name} {c.version}' for c in running)} ({args.card.name}); test "
        f"cohort {args.describe or args.cohort.name} "
        f"({len(keys)} fused visits). Mean Dice over the non-vertebral labels {other['dice'].mean():.3f}; "
        f"vertebral bodies as one class {merged:.3f}; by level (counted from S1): mean "
        f"{vertebral['dice'].mean():.3f}, lowest {vertebral['dice'].min():.3f}. Inference "
        f"{np.mean(seconds):.2f} s per visit on the CPU (sliding windows, overlap {args.overlap})."
    )
    print(summary)
    write_results(args.results, rows, "\n\n".join([summary, *failures]))


if __name__ == "__main__":
    main()
