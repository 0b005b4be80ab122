"""NIfTI / NRRD export: the same physical point lands on the same voxel in the store and in both files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cohortscale.cli import main
from cohortscale.io.export import (
    ExportError,
    MissingArrayError,
    NotFusedError,
    UnknownParticipantError,
    export_name,
    export_participant,
    lps_to_ras,
)

KEYS = ["1000107_2", "1000215_2", "1000215_3"]
#: Array shape (Z, Y, X): all different, so a swapped axis cannot go unnoticed.
SHAPE = (7, 5, 6)
#: Bright voxel, array index [z, y, x].
BRIGHT_ZYX = (5, 1, 4)


def axial_affine() -> np.ndarray:
    """UK Biobank-like: 2.232 mm in-plane, 3 mm slices running inferior (negative z step), offset origin."""
    affine = np.eye(4)
    affine[:3, 0] = [2.232, 0.0, 0.0]  # along a row (increasing column): towards the patient's left
    affine[:3, 1] = [0.0, 2.232, 0.0]  # down a column (increasing row): posterior
    affine[:3, 2] = [0.0, 0.0, -3.0]  # next slice: inferior
    affine[:3, 3] = [-249.3, -181.7, 412.5]
    return affine


def oblique_affine() -> np.ndarray:
    """Rotated about all three axes, anisotropic spacing, negative slice step."""
    a, b, c = np.deg2rad([17.0, -11.0, 29.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag([2.232, 2.5, -3.0])
    affine[:3, 3] = [31.4, -120.9, -77.25]
    return affine


def make_store(path: Path, affine: np.ndarray) -> tuple[zarr.Group, np.ndarray]:
    """A store of three visits: the second with a bright voxel, the third not fused (NaN affine)."""
    root = zarr.open_group(str(path), mode="w")
    # Variable-length strings, as in cohortscale.io.store.create_store.
    root.create_array("participant", shape=(len(KEYS),), dtype=str)
    root["participant"][:] = np.array(KEYS, dtype=str)
    rng = np.random.default_rng(0)
    water = rng.integers(0, 1000, size=(len(KEYS), *SHAPE), dtype=np.uint16)
    water[1][BRIGHT_ZYX] = 60000
    root.create_array("dixon/fused/water", data=water)
    ff = rng.random((len(KEYS), *SHAPE), dtype=np.float32)
    ff[:, 0] = np.nan  # background
    root.create_array("dixon/fused/ff", data=ff)
    affines = np.stack([axial_affine(), affine, np.full((4, 4), np.nan)])
    root.create_array("dixon/fused/affine", data=affines)
    return root, water[1]


def expected_lps(affine: np.ndarray, index_xyz: tuple[int, int, int]) -> np.ndarray:
    """Position of voxel (column, row, slice), summed by hand: origin + Σ index × step along the axis."""
    i, j, k = index_xyz
    return affine[:3, 3] + i * affine[:3, 0] + j * affine[:3, 1] + k * affine[:3, 2]


def test_lps_to_ras_negates_x_and_y() -> None:
    ras = lps_to_ras(axial_affine())
    np.testing.assert_array_equal(ras[0], -axial_affine()[0])
    np.testing.assert_array_equal(ras[1], -axial_affine()[1])
    np.testing.assert_array_equal(ras[2:], axial_affine()[2:])


@pytest.mark.parametrize("affine", [axial_affine(), oblique_affine()], ids=["axial", "oblique"])
def test_bright_voxel_at_same_point_in_nifti_and_nrrd(tmp_path: Path, affine: np.ndarray) -> None:
    root, volume = make_store(tmp_path / "store.zarr", affine)
    paths = export_participant(root, KEYS[1], tmp_path / "out", arrays=["dixon/fused/water"])
    nifti, nrrd_path = paths
    assert nifti.name == "1000215_2_fused_water.nii.gz" and nrrd_path.name == "1000215_2_fused_water.nrrd"
    z, y, x = BRIGHT_ZYX
    truth = expected_lps(affine, (x, y, z))

    image = nib.load(nifti)
    found = np.unravel_index(np.argmax(image.get_fdata()), image.shape)
    assert found == (x, y, z)
    ras = image.affine @ [*found, 1.0]
    np.testing.assert_allclose(ras[:3] * [-1, -1, 1], truth, atol=1e-3)
    # The qform (float32 quaternion) must agree too: some readers use it instead of the sform.
    ras_q = image.get_qform() @ [*found, 1.0]
    np.testing.assert_allclose(ras_q[:3] * [-1, -1, 1], truth, atol=1e-3)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    assert image.header.get_xyzt_units()[0] == "mm"
    stored = np.asanyarray(image.dataobj)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, volume.transpose(2, 1, 0))

    data, header = nrrd.read(str(nrrd_path))
    assert header["space"] == "left-posterior-superior" and header["encoding"] == "gzip"
    assert list(header["kinds"]) == ["domain"] * 3
    found = np.unravel_index(np.argmax(data), data.shape)
    assert found == (x, y, z)
    lps = header["space origin"] + np.asarray(found) @ header["space directions"]
    np.testing.assert_allclose(lps, truth, atol=1e-3)
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, volume.transpose(2, 1, 0))


def test_default_arrays_float_and_labels(tmp_path: Path) -> None:
    root, _ = make_store(tmp_path / "store.zarr", axial_affine())
    paths = export_participant(tmp_path / "store.zarr", KEYS[0], tmp_path / "out", formats=["nifti"])
    assert [p.name for p in paths] == ["1000107_2_fused_water.nii.gz", "1000107_2_fused_ff.nii.gz"]
    ff = np.asanyarray(nib.load(paths[1]).dataobj)
    assert ff.dtype == np.float32
    np.testing.assert_array_equal(ff, root["dixon/fused/ff"][0].transpose(2, 1, 0))  # NaN == NaN here

    labels = np.zeros((len(KEYS), *SHAPE), dtype=np.uint8)
    labels[0, 2:4, 1:3, 2:5] = 7
    root.create_array("labels/tissue", data=labels)
    (path,) = export_participant(root, KEYS[0], tmp_path / "out", ["labels/tissue"], formats=["nrrd"])
    assert path.name == "1000107_2_labels_tissue.nrrd"
    data, _ = nrrd.read(str(path))
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, labels[0].transpose(2, 1, 0))


def test_export_name() -> None:
    assert export_name("dixon/fused/water") == "fused_water"
    assert export_name("labels/tissue") == "labels_tissue"
    assert export_name("ff") == "ff"


def test_errors_name_participant_and_array(tmp_path: Path) -> None:
    root, _ = make_store(tmp_path / "store.zarr", axial_affine())
    out = tmp_path / "out"
    with pytest.raises(UnknownParticipantError, match="9999999_2"):
        export_participant(root, "9999999_2", out)
    with pytest.raises(NotFusedError, match=r"1000215_3.*dixon/fused/water.*NaN"):
        export_participant(root, KEYS[2], out, ["dixon/fused/water"])
    with pytest.raises(MissingArrayError, match=r"1000107_2.*labels/absent"):
        export_participant(root, KEYS[0], out, ["dixon/fused/water", "labels/absent"])
    root.create_array("dixon/station1/water", data=np.zeros((len(KEYS), 3, 5, 6), dtype=np.uint16))
    with pytest.raises(MissingArrayError, match="not the fused grid"):
        export_participant(root, KEYS[0], out, ["dixon/station1/water"])
    with pytest.raises(ValueError, match="format"):
        export_participant(root, KEYS[0], out, formats=["analyze"])
    assert issubclass(ExportError, ValueError)
    assert not out.exists()  # every check runs before the first file is written


def test_export_command(tmp_path: Path) -> None:
    make_store(tmp_path / "store.zarr", oblique_affine())
    out = tmp_path / "out"
    store = str(tmp_path / "store.zarr")
    args = ["export", store, "--participant", KEYS[0], "--participant", KEYS[1], "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--array", "dixon/fused/water", "--format", "nrrd"])
    assert result.exit_code == 0, result.output
    written = result.output.split()
    assert [Path(p).name for p in written] == [f"{k}_fused_water.nrrd" for k in KEYS[:2]]
    assert all(Path(p).exists() for p in written)

    result = CliRunner().invoke(main, ["export", store, "--participant", "9999999_2", "--out", str(out)])
    assert result.exit_code == 2 and "9999999_2" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["export", store, "--participant", KEYS[2], "--out", str(out)])
    assert result.exit_code == 1 and "not fused" in result.output and "Traceback" not in result.output
