"""Label sets from outside the segmentation stage: a user's annotations, or the synthetic cohort's truth.

An imported set is stored like a model's, ``labels/<name>`` (uint8 on the fused grid, label names in the
array's ``labels`` attribute), so that the measure stage treats both alike: measuring the truth labels of
a synthetic cohort isolates the measures from the segmentation's errors. The array's ``source`` attribute
says where it came from; importing again re-measures every visit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import zarr

from cohortscale.io.store import ARRAY_NAME, ensure_arrays, open_store, participant_rows
from cohortscale.pipeline.engine import requeue_done
from cohortscale.pipeline.segmentation import LABEL_DTYPE, LABELS, NOT_SEGMENTED

#: ``source`` attribute of a label array the segmentation stage did not write.
IMPORTED = "imported"
#: Fused array whose grid and dimension names label sets share.
FUSED_REFERENCE = "dixon/fused/ff"


def import_labels(
    store: str | Path,
    name: str,
    names: Mapping[int, str],
    volumes: Iterable[tuple[str, np.ndarray]],
    source: str,
) -> list[str]:
    """Write label volumes of visits into ``labels/<name>`` and have the measure stage measure them again.

    Parameters
    ----------
    store : path-like
        Cohort store after fusion (the volumes must lie on each visit's fused grid).
    name : str
        Label set name (letters, digits, ``._-``); must not be a segmentation model's.
    names : mapping of int to str
        Label id → name (0: background).
    volumes : iterable of (visit key, ndarray)
        Label volumes shaped like the fused grid.
    source : str
        Where the labels come from, for the array's attributes (e.g. ``"synthetic truth of cohort/"``).

    Returns
    -------
    list of str
        The visit keys written.

    Raises
    ------
    ValueError
        A bad name, an unknown visit, a volume of the wrong shape, or ids beyond 255.
    """
    if not ARRAY_NAME.fullmatch(name):
        raise ValueError(f"label set name {name!r} must match {ARRAY_NAME.pattern}")
    root = open_store(store)
    path = f"{LABELS}/{name}"
    if path in root and root[path].attrs.get("source") != IMPORTED:
        raise ValueError(f"{path} was written by the segmentation stage; import under another name")
    reference = root[FUSED_REFERENCE]
    shape = tuple(reference.shape[1:])
    dims = tuple(reference.metadata.dimension_names or ())[1:]
    ensure_arrays(root, {path: (shape, LABEL_DTYPE, dims, NOT_SEGMENTED)})
    root[path].attrs.update(
        {
            "units": "label id",
            "description": f"{name} labels per voxel of the fused grid (0: background), from {source}",
            "labels": {str(i): str(n) for i, n in sorted(names.items())},
            "source": IMPORTED,
            "origin": source,
        }
    )
    rows = participant_rows(root)
    written = []
    for key, volume in volumes:
        if key not in rows:
            raise ValueError(f"participant {key} is not in the store")
        if tuple(volume.shape) != shape:
            raise ValueError(
                f"participant {key}: labels {list(volume.shape)} differ from the fused grid {list(shape)}"
            )
        if volume.size and (volume.min() < 0 or volume.max() > np.iinfo(LABEL_DTYPE).max):
            raise ValueError(f"participant {key}: label ids must be 0–{np.iinfo(LABEL_DTYPE).max}")
        root[path][rows[key]] = volume.astype(LABEL_DTYPE)
        written.append(key)
    requeue_done(
        store, "measure", "labels_changed", f"participant {{}}: labels/{name} imported; measuring again"
    )
    return written


def truth_label_volumes(cohort_dir: str | Path, store: str | Path) -> Iterable[tuple[str, np.ndarray]]:
    """The synthetic truth's label volumes of every fused visit of ``store`` (checked to lie on its grid)."""
    from cohortscale.models.dataset import check_truth_grid, fused_visits, truth_path

    root = open_store(store, mode="r")
    rows = participant_rows(root)
    for key in fused_visits(store):
        truth = zarr.open_group(str(truth_path(cohort_dir, key)), mode="r")["fused"]
        check_truth_grid(key, truth, root[FUSED_REFERENCE].shape[1:], root["dixon/fused/affine"][rows[key]])
        yield key, np.asarray(truth["labels"][:])


def import_truth_labels(cohort_dir: str | Path, store: str | Path, name: str = "truth") -> list[str]:
    """Import a synthetic cohort's true labels (all its label ids, vertebral levels included) as ``name``."""
    from cohortscale.synth.labels import LABEL_NAMES

    volumes = truth_label_volumes(cohort_dir, store)
    return import_labels(store, name, LABEL_NAMES, volumes, f"the synthetic truth of {Path(cohort_dir).name}")
