"""Label ids of the synthetic anatomy (uint8 label volumes) and their tissues.

Left and right are the patient's (DICOM LPS: +x is the patient's left). Vertebral bodies C3–S1 are 23
separate labels so the bone-marrow study can pick any level.
"""

from __future__ import annotations

VERTEBRAE: tuple[str, ...] = (
    *(f"C{i}" for i in range(3, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
    "S1",
)
"""Vertebral bodies from C3 down to S1 (23 levels)."""

_FIRST_VERTEBRA_ID = 31

LABELS: dict[str, int] = {
    "background": 0,
    "subcutaneous_fat": 1,
    "visceral_fat": 2,
    "other_muscle": 3,
    "liver": 4,
    "spleen": 5,
    "kidney_left": 6,
    "kidney_right": 7,
    "lungs": 8,
    "heart": 9,
    "spinal_canal": 10,
    "intervertebral_disc": 11,
    "pelvis": 12,
    "femur_left": 13,
    "femur_right": 14,
    "other_bone": 15,
    "cortical_bone": 16,
    "thigh_anterior_left": 17,
    "thigh_anterior_right": 18,
    "thigh_posterior_left": 19,
    "thigh_posterior_right": 20,
    "thigh_medial_left": 21,
    "thigh_medial_right": 22,
    "gluteal_left": 23,
    "gluteal_right": 24,
    "iliopsoas_left": 25,
    "iliopsoas_right": 26,
    "bowel": 27,
    "vessels": 28,
    "scanner_table": 29,
    **{name: _FIRST_VERTEBRA_ID + i for i, name in enumerate(VERTEBRAE)},
}

LABEL_NAMES: dict[int, str] = {v: k for k, v in LABELS.items()}

VERTEBRA_IDS: tuple[int, ...] = tuple(LABELS[v] for v in VERTEBRAE)

THIGH_COMPARTMENTS: tuple[str, ...] = ("anterior", "posterior", "medial")
SIDES: tuple[str, ...] = ("left", "right")
