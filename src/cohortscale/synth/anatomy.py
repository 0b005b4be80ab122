"""A parametric human body in patient coordinates, sized from a participant's phenotypes.

The body is built for a supine, head-first participant on the scanner table (DICOM LPS: +x patient left,
+y posterior, +z head). Heights of landmarks are fractions of standing height (anthropometric ratios);
girths grow with BMI; thigh muscle radii are solved so the thigh compartments hold the participant's
target muscle volume and posterior/anterior ratio; abdominal subcutaneous fat thickness and the abdominal
cavity are solved from the target ASAT and VAT volumes. Everything is a list of ``(label, shape)`` parts
painted in order (:func:`cohortscale.synth.shapes.paint`), so the same anatomy can be rasterised on any
grid: each Dixon station, the multi-echo slice, or the fused truth grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cohortscale.synth.labels import LABELS, VERTEBRAE
from cohortscale.synth.shapes import (
    Box,
    Capsule,
    Ellipsoid,
    Intersection,
    Shape,
    Tube,
    rotation_x,
    rotation_z,
)

#: Standing height of the reference body whose dimensions are tabulated below, mm.
REFERENCE_HEIGHT_MM = 1700.0
#: BMI of the reference body, kg/m².
REFERENCE_BMI = 25.0

#: Torso muscle-boundary ("core") half-width and half-depth (mm) at fractions of height, reference body.
CORE_PROFILE = np.array(
    [
        # height fraction, half-width, half-depth
        (0.490, 130.0, 78.0),
        (0.500, 145.0, 85.0),
        (0.550, 140.0, 85.0),
        (0.600, 125.0, 85.0),
        (0.660, 135.0, 92.0),
        (0.720, 145.0, 98.0),
        (0.790, 150.0, 90.0),
        (0.815, 120.0, 70.0),
        (0.840, 52.0, 50.0),
        (0.920, 48.0, 48.0),
    ]
)
#: Subcutaneous fat thickness (mm) by height fraction, reference body, before BMI and ASAT scaling.
SUBCUT_PROFILE = np.array([(0.47, 18.0), (0.52, 22.0), (0.60, 20.0), (0.70, 12.0), (0.80, 8.0), (0.92, 6.0)])

#: Landmark heights as fractions of standing height.
C3_TOP_FRACTION = 0.875
S1_BOTTOM_FRACTION = 0.555
HIP_JOINT_FRACTION = 0.525
KNEE_JOINT_FRACTION = 0.285
DIAPHRAGM_VERTEBRA = "T10"
LUNG_APEX_VERTEBRA = "T1"

#: Nominal vertebral body heights (mm) and disc heights below them for the reference body, C3→S1.
_BODY_HEIGHTS = np.concatenate(
    [np.full(5, 14.0), np.linspace(17.0, 24.0, 12), np.linspace(26.0, 28.0, 5), [30.0]]
)
_DISC_HEIGHTS = np.concatenate([np.full(5, 5.0), np.linspace(5.0, 7.0, 12), np.full(5, 9.5), [0.0]])
#: Vertebral body half-width / half-depth (mm), reference body, C3→S1.
_BODY_HALF_WIDTH = np.concatenate(
    [np.full(5, 9.0), np.linspace(13.0, 20.0, 12), np.linspace(22.0, 25.0, 5), [24.0]]
)
_BODY_HALF_DEPTH = np.concatenate(
    [np.full(5, 8.0), np.linspace(10.0, 15.0, 12), np.linspace(16.0, 18.0, 5), [16.0]]
)
#: Depth of the vertebral body centre in front of the posterior muscle boundary (mm), C3→S1 (curvature).
_SPINE_DEPTH = np.concatenate(
    [
        np.linspace(45.0, 40.0, 5),
        np.linspace(42.0, 48.0, 6),
        np.linspace(50.0, 60.0, 6),
        np.linspace(66.0, 72.0, 5),
        [62.0],
    ]
)

#: Thigh muscle radius profile from the hip (u = 0) to above the knee (u = 1), relative.
THIGH_MUSCLE_SHAPE = np.array([(0.0, 0.92), (0.2, 1.0), (0.5, 0.92), (0.8, 0.72), (1.0, 0.50)])
#: Medial offset of the upper thigh's skin from the femoral axis, reference body, mm.
THIGH_MEDIAL_SHIFT_MM = 28.0
#: Medial (adductor) compartment volume relative to the anterior (quadriceps) compartment.
MEDIAL_TO_ANTERIOR = 0.6
#: Abdominal bowel volume of the reference body, mm³.
BOWEL_VOLUME_MM3 = 2.2e6


@dataclass
class Body:
    """A participant's anatomy.

    Attributes
    ----------
    parts : list of (label id, Shape)
        Painted in order; later parts cover earlier ones.
    landmarks : dict of str → ndarray (3,)
        Points in LPS mm: vertebral body centres by level (``"L1"``), ``"hip_left"``, ``"knee_right"``...
    vertebra_extent : dict of str → (z_bottom, z_top)
        Craniocaudal extent of each vertebral body, mm.
    arms : tuple of Tube
        Skin of the arms: with ``asat_z_range`` they define ASAT.
    asat_z_range : (float, float)
        ASAT is the subcutaneous fat outside the arms from the femoral-head top to the top of T9, mm (as
        UK Biobank defines it from images: the trunk's, and the hips' above the femoral heads).
    z_top : float
        Height of the top of the head, mm (for placing stations).
    """

    parts: list[tuple[int, Shape]]
    landmarks: dict[str, np.ndarray]
    vertebra_extent: dict[str, tuple[float, float]]
    arms: tuple[Tube, ...]
    asat_z_range: tuple[float, float]
    z_top: float
    info: dict[str, float] = field(default_factory=dict)


def build_body(
    subject: Mapping[str, float], rng: np.random.Generator, table_y_mm: float, z_vertex_mm: float
) -> Body:
    """Build a participant's body.

    Parameters
    ----------
    subject : mapping
        Needs ``sex`` (0/1), ``height_cm``, ``bmi``, ``tmv_cm3``, ``pa_ratio``, ``thigh_asymmetry``,
        ``vat_l``, ``asat_l`` (the population model's columns).
    rng : numpy.random.Generator
        Source of small anatomical variation (organ positions, sizes).
    table_y_mm : float
        Posterior skin surface (lying on the table top), LPS y in mm.
    z_vertex_mm : float
        LPS z of the top of the head, mm.

    Returns
    -------
    Body
    """
    height = float(subject["height_cm"]) * 10.0
    male = bool(subject["sex"])
    s_h = height / REFERENCE_HEIGHT_MM
    girth = np.sqrt(float(subject["bmi"]) / REFERENCE_BMI)
    x_mid = float(rng.normal(0.0, 4.0))

    def z_at(fraction: float | np.ndarray) -> np.ndarray:
        return z_vertex_mm - (1.0 - np.asarray(fraction)) * height

    # --- trunk: core (muscle boundary), skin, cavity -------------------------------------------------
    frac = CORE_PROFILE[:, 0]
    zk = z_at(frac)
    shoulder = 1.08 if male else 0.95
    core_a = CORE_PROFILE[:, 1] * s_h * np.where((frac > 0.62) & (frac < 0.83), shoulder, 1.0)
    core_b = CORE_PROFILE[:, 2] * s_h * np.where(frac < 0.62, girth, np.sqrt(girth))
    core_a = core_a * np.where(frac < 0.75, np.sqrt(girth), 1.0)
    hips = 1.0 if male else 1.08
    core_a = core_a * np.where(frac < 0.56, hips, 1.0)

    asat_lo, asat_hi = (
        z_at(HIP_JOINT_FRACTION) + 22.0 * s_h,
        None,
    )  # femoral head top; T9 top set below
    sc_frac, sc_thick = SUBCUT_PROFILE.T
    subcut = np.interp(frac, sc_frac, sc_thick) * girth**2 * (1.0 if male else 1.35)

    # Spine levels, scaled to fit between C3 top and S1 bottom.
    nominal = _BODY_HEIGHTS.sum() + _DISC_HEIGHTS.sum()
    scale = (C3_TOP_FRACTION - S1_BOTTOM_FRACTION) * height / nominal
    tops = z_at(C3_TOP_FRACTION) - scale * np.concatenate(
        [[0.0], np.cumsum((_BODY_HEIGHTS + _DISC_HEIGHTS)[:-1])]
    )
    bottoms = tops - scale * _BODY_HEIGHTS
    centres_z = (tops + bottoms) / 2
    sex_bone = 1.08 if male else 1.0
    vb_a = _BODY_HALF_WIDTH * s_h * sex_bone
    vb_b = _BODY_HALF_DEPTH * s_h * sex_bone
    vertebra_extent = {v: (float(bottoms[i]), float(tops[i])) for i, v in enumerate(VERTEBRAE)}
    level_z = {v: float(centres_z[i]) for i, v in enumerate(VERTEBRAE)}
    asat_hi = vertebra_extent["T9"][1]

    # Solve the abdominal subcutaneous fat thickness so the trunk ASAT matches its target.
    abd = (zk >= asat_lo - 60) & (zk <= asat_hi + 60)
    subcut = np.where(
        abd,
        _solve_shell_thickness(
            zk, core_a, core_b, subcut, (asat_lo, asat_hi), float(subject["asat_l"]) * 1e6, abd
        ),
        subcut,
    )

    skin_a, skin_b = core_a + subcut, core_b + subcut
    core_cy = table_y_mm - subcut - core_b
    torso = Tube(zk, np.full_like(zk, x_mid), core_cy, skin_a, skin_b)
    core = Tube(zk, np.full_like(zk, x_mid), core_cy, core_a, core_b)

    # Vertebral centre line: at a curvature-dependent depth in front of the posterior muscle boundary.
    core_back = np.interp(centres_z, zk, core_cy + core_b)
    vb_y = core_back - _SPINE_DEPTH * s_h
    landmarks = {v: np.array([x_mid, vb_y[i], centres_z[i]]) for i, v in enumerate(VERTEBRAE)}

    # Abdominal and thoracic cavities: inside a 12 mm muscle wall, posterior wall at the spine.
    wall = 12.0 * s_h
    z_dia = level_z[DIAPHRAGM_VERTEBRA]
    z_floor = z_at(HIP_JOINT_FRACTION) - 10.0
    z_apex = level_z[LUNG_APEX_VERTEBRA]
    cav_z = np.linspace(z_floor, z_apex, 24)
    ca = np.interp(cav_z, zk, core_a) - wall
    cb_front = np.interp(cav_z, zk, core_cy - core_b) + wall
    cb_back = np.interp(cav_z, zk[::-1], np.interp(zk, centres_z[::-1], vb_y[::-1])[::-1]) + 5.0
    cav_cy = (cb_front + cb_back) / 2
    cav_b = (cb_back - cb_front) / 2
    # Grow the abdominal cavity with VAT (visceral fat distends the abdomen).
    vat_target = float(subject["vat_l"]) * 1e6
    below = cav_z < z_dia
    organ_volume = 2.0e6 * s_h**3
    cav_len = z_dia - z_floor
    need_area = (vat_target + BOWEL_VOLUME_MM3 * s_h**3 + organ_volume) / cav_len
    have_area = np.pi * np.mean(ca[below] * cav_b[below])
    grow = np.sqrt(max(need_area / have_area, 0.6))
    bulge = np.where(below, grow, 1.0)
    ca, cav_b = ca * np.where(below, np.sqrt(bulge), 1.0), cav_b * bulge
    cav_cy = cb_back - cav_b
    # Keep the skin outside the distended cavity (the belly wall moves forward).
    front_needed = np.interp(zk, cav_z, cav_cy - cav_b) - wall
    core_front = core_cy - core_b
    shift = np.maximum(core_front - front_needed, 0.0)
    core_b = core_b + shift / 2
    core_cy = core_cy - shift / 2
    core_a = np.maximum(core_a, np.interp(zk, cav_z, ca) + wall)
    skin_a, skin_b = core_a + subcut, core_b + subcut
    torso = Tube(zk, np.full_like(zk, x_mid), core_cy, skin_a, skin_b)
    core = Tube(zk, np.full_like(zk, x_mid), core_cy, core_a, core_b)

    abdomen = Tube(cav_z[below], np.full(below.sum(), x_mid), cav_cy[below], ca[below], cav_b[below])
    thorax = Tube(cav_z[~below], np.full((~below).sum(), x_mid), cav_cy[~below], ca[~below], cav_b[~below])
    whole_cavity = Tube(cav_z, np.full_like(cav_z, x_mid), cav_cy, ca, cav_b)

    L = LABELS
    # Painting order: skin of the legs, then the trunk's layers, then everything deep inside.
    outer: list[tuple[int, Shape]] = []
    trunk: list[tuple[int, Shape]] = []
    parts: list[tuple[int, Shape]] = []
    arms: list[Tube] = []
    add = parts.append

    # Table under the participant.
    outer.append(
        (
            L["scanner_table"],
            Box([-260.0, table_y_mm + 2.0, -5000.0], [260.0, table_y_mm + 40.0, 5000.0]),
        )
    )

    # --- legs ----------------------------------------------------------------------------------------
    z_hip = float(z_at(HIP_JOINT_FRACTION))
    z_knee = float(z_at(KNEE_JOINT_FRACTION))
    hip_x = 88.0 * s_h * (1.0 if male else 1.06)
    hip_y = float(np.interp(z_hip, zk, core_cy))
    knee_x = 85.0 * s_h
    knee_y = hip_y + 15.0
    femur_top_x = hip_x + 25.0 * s_h
    z_thigh_top = z_hip - 10.0
    z_thigh_end = z_knee + 40.0 * s_h
    thigh_len = z_thigh_top - z_thigh_end
    r_head = (25.0 if male else 22.0) * s_h
    r_shaft = 14.0 * s_h

    pa = float(subject["pa_ratio"])
    anterior = 2 * np.pi / (1.0 + pa + MEDIAL_TO_ANTERIOR)
    medial = MEDIAL_TO_ANTERIOR * anterior
    sectors = {
        "anterior": (-np.pi, -np.pi + anterior),
        "medial": (-np.pi + anterior, -np.pi + anterior + medial),
        "posterior": (-np.pi + anterior + medial, np.pi),
    }
    tmv = float(subject["tmv_cm3"]) * 1e3
    asym = float(subject["thigh_asymmetry"])
    u, shape_r = THIGH_MUSCLE_SHAPE.T
    ug = np.linspace(0, 1, 201)
    shape_sq = np.trapezoid(np.interp(ug, u, shape_r) ** 2, ug)
    leg_subcut = 10.0 * girth**2 * (1.0 if male else 1.6)
    thigh_z = z_thigh_top - u * thigh_len  # descending, hip → knee
    info: dict[str, float] = {}
    for side_name, sign in (("left", 1.0), ("right", -1.0)):
        share = 0.5 * (1.0 + sign * asym / 2.0)
        # π R² L ∫shape² − femoral shaft = target, per leg.
        r_muscle = np.sqrt((tmv * share + np.pi * r_shaft**2 * thigh_len) / (np.pi * thigh_len * shape_sq))
        info[f"thigh_muscle_radius_{side_name}"] = float(r_muscle)
        femur_x = x_mid + sign * np.interp(thigh_z, [z_knee, z_thigh_top], [knee_x, femur_top_x])
        femur_y = np.interp(thigh_z, [z_knee, z_thigh_top], [knee_y, hip_y])
        rm = r_muscle * shape_r
        # Leg skin: calf, knee, then the thigh muscle plus fat, up into the buttock.
        leg_z = np.array([z_at(0.12), z_knee - 120.0, z_knee, *thigh_z[::-1], z_hip + 60.0])
        # Soft tissue of the upper thigh lies medial to the femur: shift the skin inwards (and widen it
        # so it still wraps the muscle) so that thighs meet at the top as they do.
        medial = np.interp(leg_z, [z_knee, z_thigh_top], [0.0, THIGH_MEDIAL_SHIFT_MM * s_h])
        leg_r = (
            medial
            + leg_subcut
            + np.array([40.0 * s_h, 52.0 * s_h * np.sqrt(girth), 48.0 * s_h, *rm[::-1], rm[0]])
        )
        leg_cx = x_mid + sign * (np.interp(leg_z, [z_knee, z_thigh_top], [knee_x, femur_top_x]) - medial)
        leg_cy = np.interp(leg_z, [z_knee, z_thigh_top], [knee_y, hip_y])
        outer.append((L["subcutaneous_fat"], Tube(leg_z, leg_cx, leg_cy, leg_r, leg_r)))
        # Calf muscle and the thigh compartments around the femoral shaft.
        add(
            (
                L["other_muscle"],
                Tube(
                    [z_at(0.12), z_knee - 40.0],
                    [x_mid + sign * knee_x] * 2,
                    [knee_y + 10.0] * 2,
                    [38.0 * s_h] * 2,
                    [40.0 * s_h] * 2,
                ),
            )
        )
        for comp, sector in sectors.items():
            add(
                (
                    L[f"thigh_{comp}_{side_name}"],
                    Tube(
                        thigh_z[::-1],
                        femur_x[::-1],
                        femur_y[::-1],
                        rm[::-1],
                        rm[::-1],
                        sector=sector,
                        side=-sign,
                    ),
                )
            )
        # Gluteal muscle: behind and lateral to the hip joint, inside the trunk's muscle boundary.
        glut_scale = (tmv / 9.0e6) ** (1 / 3)
        glut = Ellipsoid(
            [x_mid + sign * (hip_x + 5.0), hip_y + 45.0 * s_h, z_hip + 25.0 * s_h],
            np.array([62.0, 48.0, 85.0]) * s_h * glut_scale,
        )
        add((L[f"gluteal_{side_name}"], Intersection([glut, core])))
        # Iliopsoas: from L1 beside the spine to the lesser trochanter.
        l1 = landmarks["L1"]
        add(
            (
                L[f"iliopsoas_{side_name}"],
                Capsule(
                    [x_mid + sign * (vb_a[17] + 12.0), l1[1], l1[2]],
                    [x_mid + sign * (hip_x - 5.0), hip_y - 25.0, z_hip - 35.0],
                    17.0 * s_h * (1.1 if male else 1.0),
                ),
            )
        )
        # Femur: cortex of the shaft, then marrow of head, neck, trochanter, shaft and condyles.
        head = np.array([x_mid + sign * hip_x, hip_y, z_hip])
        knee = np.array([x_mid + sign * knee_x, knee_y, z_knee])
        shaft_top = np.array([x_mid + sign * femur_top_x, hip_y, z_hip - 40.0 * s_h])
        shaft_bottom = knee + [0.0, 0.0, 45.0 * s_h]
        landmarks[f"hip_{side_name}"] = head
        landmarks[f"knee_{side_name}"] = knee
        add((L["pelvis"], Ellipsoid(head, [r_head + 7.0] * 3)))  # acetabulum: shell left round the head
        add((L["cortical_bone"], Capsule(shaft_top, shaft_bottom, r_shaft)))
        fem = L[f"femur_{side_name}"]
        add((fem, Ellipsoid(head, [r_head] * 3)))
        add((fem, Capsule(head, shaft_top + [0.0, 0.0, 15.0 * s_h], 14.0 * s_h)))
        add(
            (
                fem,
                Ellipsoid(shaft_top + [sign * 8.0, 5.0, 10.0], np.array([18.0, 18.0, 26.0]) * s_h),
            )
        )
        add((fem, Capsule(shaft_top, shaft_bottom, 0.62 * r_shaft)))
        add((fem, Ellipsoid(knee + [0.0, 0.0, 22.0 * s_h], np.array([38.0, 30.0, 28.0]) * s_h)))
        # Tibia and patella (other bone), below and in front of the knee.
        add(
            (
                L["other_bone"],
                Ellipsoid(knee + [0.0, 5.0, -22.0 * s_h], np.array([36.0, 28.0, 20.0]) * s_h),
            )
        )
        add(
            (
                L["other_bone"],
                Capsule(
                    knee + [0.0, 5.0, -30.0 * s_h],
                    knee + [-sign * 5.0, 12.0, -380.0 * s_h],
                    11.0 * s_h,
                ),
            )
        )
        add(
            (
                L["other_bone"],
                Ellipsoid(knee + [0.0, -42.0 * s_h, 18.0 * s_h], np.array([20.0, 9.0, 22.0]) * s_h),
            )
        )
        # Pelvis: ilium plate, pubic and ischial rami.
        add(
            (
                L["pelvis"],
                Ellipsoid(
                    [x_mid + sign * (hip_x + 10.0), hip_y + 10.0, z_hip + 75.0 * s_h],
                    np.array([9.0, 58.0, 62.0]) * s_h,
                    rotation_z(sign * np.deg2rad(35.0)) @ rotation_x(np.deg2rad(-10.0)),
                ),
            )
        )
        add(
            (
                L["pelvis"],
                Capsule(
                    head + [-sign * 12.0, -22.0, -6.0],
                    [x_mid + sign * 9.0, hip_y - 50.0 * s_h, z_hip - 22.0 * s_h],
                    10.0 * s_h,
                ),
            )
        )
        add(
            (
                L["pelvis"],
                Capsule(
                    head + [-sign * 8.0, 14.0, -18.0],
                    [x_mid + sign * (hip_x - 30.0), hip_y + 22.0, z_hip - 60.0 * s_h],
                    12.0 * s_h,
                ),
            )
        )
        # Arm at the side: fat, muscle, humerus.
        arm_z = np.array([z_at(0.50), z_at(0.62), z_at(0.70), z_at(0.80)])
        arm_r = np.array([32.0, 36.0, 42.0, 46.0]) * s_h * np.sqrt(girth)
        arm_fat = 6.0 * girth**2 * (1.0 if male else 1.5)
        arm_cx = x_mid + sign * (np.interp(arm_z, zk, skin_a) + arm_r + arm_fat + 8.0)
        arm_cy = np.interp(arm_z, zk, core_cy)
        arms.append(Tube(arm_z, arm_cx, arm_cy, arm_r + arm_fat, arm_r + arm_fat))
        add((L["subcutaneous_fat"], arms[-1]))
        add((L["other_muscle"], Tube(arm_z, arm_cx, arm_cy, arm_r, arm_r)))
        add(
            (
                L["other_bone"],
                Capsule(
                    [arm_cx[1], arm_cy[1], arm_z[1]],
                    [arm_cx[3], arm_cy[3], arm_z[3] - 20.0],
                    10.0 * s_h,
                ),
            )
        )
    # --- trunk layers --------------------------------------------------------------------------------
    trunk.append((L["subcutaneous_fat"], torso))
    trunk.append((L["other_muscle"], core))
    trunk.append((L["lungs"], thorax))
    trunk.append((L["visceral_fat"], abdomen))
    # Bowel: the central part of the abdominal cavity; the rest is visceral fat.
    bowel_share = np.clip(BOWEL_VOLUME_MM3 * s_h**3 / (vat_target + BOWEL_VOLUME_MM3 * s_h**3), 0.2, 0.9)
    bowel_top = level_z["T11"]
    bz = abdomen.z[abdomen.z <= bowel_top]
    bz = np.append(bz, bowel_top)
    bcx, bcy, bax, bay = abdomen.section(bz)
    f = np.sqrt(bowel_share)
    trunk.append((L["bowel"], Tube(bz, bcx, bcy - 0.15 * bay, bax * f, bay * f)))
    # Heart and great vessels.
    z_t8 = level_z["T8"]
    add(
        (
            L["heart"],
            Ellipsoid(
                [x_mid + 20.0, np.interp(z_t8, cav_z, cav_cy) - 15.0, z_t8],
                np.array([55.0, 48.0, 62.0]) * s_h,
                rotation_z(np.deg2rad(-30.0)),
            ),
        )
    )
    aorta_z = np.array([level_z["L4"], level_z["T6"]])
    aorta_y = np.interp(aorta_z, centres_z[::-1], (vb_y - vb_b - 14.0)[::-1])
    add(
        (
            L["vessels"],
            Tube(aorta_z, [x_mid + 15.0] * 2, aorta_y, [11.0 * s_h] * 2, [11.0 * s_h] * 2),
        )
    )
    # Organs of the upper abdomen, clipped to the cavity.
    jitter = lambda sd: rng.normal(0.0, sd, 3)  # noqa: E731 - small random organ placement
    z_t12 = level_z["T12"]
    liver_size = np.array([88.0, 72.0, 78.0]) * s_h * (1.04 if male else 0.96) * (1.0 + 0.02 * (girth**2 - 1))
    liver_c = np.array(
        [
            x_mid - 0.38 * np.interp(z_t12, cav_z, ca),
            np.interp(z_t12, cav_z, cav_cy) - 0.08 * np.interp(z_t12, cav_z, cav_b),
            z_t12 + 10.0 * s_h,
        ]
    ) + jitter(4.0)
    add(
        (
            L["liver"],
            Intersection([Ellipsoid(liver_c, liver_size, rotation_z(np.deg2rad(15.0))), whole_cavity]),
        )
    )
    add(
        (
            L["liver"],
            Intersection(
                [
                    Ellipsoid(
                        liver_c + [70.0 * s_h, -20.0 * s_h, 25.0 * s_h],
                        np.array([55.0, 35.0, 35.0]) * s_h,
                    ),
                    whole_cavity,
                ]
            ),
        )
    )
    z_t11 = level_z["T11"]
    spleen_c = np.array(
        [
            x_mid + 0.62 * np.interp(z_t11, cav_z, ca),
            np.interp(z_t11, cav_z, cav_cy) + 0.45 * np.interp(z_t11, cav_z, cav_b),
            z_t11,
        ]
    ) + jitter(4.0)
    add(
        (
            L["spleen"],
            Intersection(
                [
                    Ellipsoid(spleen_c, np.array([30.0, 48.0, 52.0]) * s_h, rotation_z(np.deg2rad(-35.0))),
                    whole_cavity,
                ]
            ),
        )
    )
    for side_name, sign, lvl in (("left", 1.0, "T12"), ("right", -1.0, "L1")):
        c = landmarks[lvl] + [sign * (vb_a[17] + 42.0 * s_h), 5.0, -10.0] + jitter(3.0)
        add(
            (
                L[f"kidney_{side_name}"],
                Ellipsoid(c, np.array([28.0, 26.0, 55.0]) * s_h, rotation_z(sign * np.deg2rad(20.0))),
            )
        )
    # --- spine ---------------------------------------------------------------------------------------
    canal_y = vb_y + vb_b + 9.0 * s_h
    add(
        (
            L["spinal_canal"],
            Tube(
                centres_z[::-1],
                np.full(len(VERTEBRAE), x_mid),
                canal_y[::-1],
                np.full(len(VERTEBRAE), 9.0 * s_h),
                np.full(len(VERTEBRAE), 7.0 * s_h),
            ),
        )
    )
    for i, v in enumerate(VERTEBRAE):
        lo, hi = vertebra_extent[v]
        centre = landmarks[v]
        add(
            (
                L["other_bone"],
                Ellipsoid(
                    [x_mid, canal_y[i] + 20.0 * s_h, centre[2] - 0.2 * (hi - lo)],
                    [16.0 * s_h, 12.0 * s_h, 0.5 * (hi - lo)],
                ),
            )
        )
        add((L[v], Tube([lo, hi], [x_mid] * 2, [vb_y[i]] * 2, [vb_a[i]] * 2, [vb_b[i]] * 2)))
        if i + 1 < len(VERTEBRAE):
            below_top = vertebra_extent[VERTEBRAE[i + 1]][1]
            add(
                (
                    L["intervertebral_disc"],
                    Tube(
                        [below_top, lo],
                        [x_mid] * 2,
                        [(vb_y[i] + vb_y[i + 1]) / 2] * 2,
                        [vb_a[i]] * 2,
                        [vb_b[i]] * 2,
                    ),
                )
            )
    # Sacrum below S1 (part of the pelvis label).
    s1 = landmarks["S1"]
    add(
        (
            L["pelvis"],
            Ellipsoid(
                s1 + [0.0, 22.0 * s_h, -55.0 * s_h],
                np.array([42.0, 16.0, 50.0]) * s_h,
                rotation_x(np.deg2rad(-30.0)),
            ),
        )
    )

    return Body(
        parts=outer + trunk + parts,
        landmarks=landmarks,
        vertebra_extent=vertebra_extent,
        arms=tuple(arms),
        asat_z_range=(float(asat_lo), float(asat_hi)),
        z_top=float(z_vertex_mm),
        info=info,
    )


def _solve_shell_thickness(
    zk: np.ndarray,
    core_a: np.ndarray,
    core_b: np.ndarray,
    subcut: np.ndarray,
    z_range: tuple[float, float],
    target_mm3: float,
    where: np.ndarray,
) -> np.ndarray:
    """Scale the subcutaneous thickness at knots ``where`` so the shell volume in ``z_range`` hits a target.

    Shell volume is ``∫ π[(a+t)(b+t) − ab] dz`` over ``z_range`` with ``t = k·subcut``; ``k`` by bisection.
    """
    zz = np.linspace(z_range[0], z_range[1], 200)
    order = np.argsort(zk)
    a = np.interp(zz, zk[order], core_a[order])
    b = np.interp(zz, zk[order], core_b[order])
    t0 = np.interp(zz, zk[order], subcut[order])

    def volume(k: float) -> float:
        t = k * t0
        return float(np.trapezoid(np.pi * ((a + t) * (b + t) - a * b), zz))

    lo, hi = 0.05, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if volume(mid) < target_mm3 else (lo, mid)
    return np.where(where, subcut * 0.5 * (lo + hi), subcut)
