"""UK Biobank acquisition protocols as data.

The numbers here describe how UK Biobank body MRI is acquired (``shared/UKB.md``). They are shared by
the synthetic cohort (which writes such data) and by ingest (which reads it); values marked
*unverified* in UKB.md are defaults that callers may override, never assumptions baked into kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: In-plane pixel spacing of the neck-to-knee Dixon (500 mm FOV / 224 columns), mm.
DIXON_PIXEL_SPACING_MM = 2.232142925

#: Gyromagnetic ratio of 1H over 2π, MHz/T.
GAMMA_BAR_MHZ_PER_T = 42.577478

#: Water resonance relative to TMS at body temperature, ppm.
WATER_PPM = 4.7


@dataclass(frozen=True)
class DixonStation:
    """Geometry of one neck-to-knee Dixon station (all four contrasts share it).

    Attributes
    ----------
    number : int
        Station number 1–6, head to knee.
    region : str
        Body region covered.
    rows, columns : int
        Matrix size (rows run anterior→posterior, columns right→left).
    slices : int
        Number of transverse slices.
    slice_spacing_mm : float
        Distance between slice centres, mm (equals SliceThickness).
    breath_hold : bool
        Whether the station is acquired in a 17 s breath-hold (SeriesDescription ``Dixon_BH_17s_*``).
    """

    number: int
    region: str
    rows: int
    columns: int
    slices: int
    slice_spacing_mm: float
    breath_hold: bool

    @property
    def extent_mm(self) -> float:
        """Distance from the first to the last slice centre plus one slice, mm."""
        return self.slices * self.slice_spacing_mm


#: The six stations of field 20201 (UKB.md table).
UKB_DIXON_STATIONS: tuple[DixonStation, ...] = (
    DixonStation(1, "neck/shoulders", 168, 224, 64, 3.0, False),
    DixonStation(2, "chest/upper abdomen", 174, 224, 44, 4.5, True),
    DixonStation(3, "abdomen", 174, 224, 44, 4.5, True),
    DixonStation(4, "pelvis", 174, 224, 44, 4.5, True),
    DixonStation(5, "thighs", 162, 224, 72, 3.5, False),
    DixonStation(6, "knees", 156, 224, 64, 4.0, False),
)

#: Contrasts in SeriesNumber order within a station, and their SeriesDescription suffix.
DIXON_CONTRASTS: tuple[str, ...] = ("in", "opp", "fat", "water")
DIXON_CONTRAST_SUFFIX: dict[str, str] = {"in": "in", "opp": "opp", "fat": "F", "water": "W"}


def dixon_series_description(station: DixonStation, contrast: str) -> str:
    """SeriesDescription UK Biobank uses for ``contrast`` of ``station`` (e.g. ``Dixon_BH_17s_W``)."""
    prefix = "Dixon_BH_17s_" if station.breath_hold else "Dixon_noBH_"
    return prefix + DIXON_CONTRAST_SUFFIX[contrast]


@dataclass(frozen=True)
class DixonAcquisition:
    """Sequence parameters of the neck-to-knee Dixon (UKB.md: unverified, hence configurable).

    Attributes
    ----------
    te_opposed_s, te_in_phase_s : float
        Echo times of the opposed- and in-phase images, s.
    tr_s : float
        Repetition time, s.
    flip_angle_deg : float
        Flip angle, degrees.
    """

    te_opposed_s: float = 2.39e-3
    te_in_phase_s: float = 4.77e-3
    tr_s: float = 6.69e-3
    flip_angle_deg: float = 10.0


@dataclass(frozen=True)
class MultiEchoProtocol:
    """A single-slice multi-echo gradient-echo protocol (magnitude + phase series).

    Attributes
    ----------
    field : int
        UK Biobank bulk field id (20254 or 20203).
    series_description : str
        SeriesDescription as the scanner writes it (typos included).
    rows, columns : int
        Matrix size.
    pixel_spacing_mm : float
        In-plane spacing, mm.
    slice_thickness_mm : float
        Slice thickness, mm.
    echo_times_s : tuple of float
        Echo times, s.
    tr_s : float
        Repetition time, s.
    flip_angle_deg : float
        Flip angle, degrees (low, so T1 weighting is negligible).
    """

    field: int
    series_description: str
    rows: int
    columns: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    echo_times_s: tuple[float, ...]
    tr_s: float
    flip_angle_deg: float

    @property
    def n_echoes(self) -> int:
        """Number of echoes."""
        return len(self.echo_times_s)


def uniform_echo_times(first_s: float, spacing_s: float, n: int) -> tuple[float, ...]:
    """Echo times ``first + spacing·k`` for k = 0..n−1, s."""
    return tuple(round(first_s + spacing_s * k, 9) for k in range(n))


#: Field 20254, ``LMS IDEAL OPTIMISED LOW FLIP 6DYN`` (echo times unverified: 1.2 ms + 2.0 ms·n).
UKB_IDEAL_20254 = MultiEchoProtocol(
    field=20254,
    series_description="LMS IDEAL OPTIMISED LOW FLIP 6DYN",
    rows=232,
    columns=256,
    pixel_spacing_mm=1.71875,
    slice_thickness_mm=6.0,
    echo_times_s=uniform_echo_times(1.2e-3, 2.0e-3, 6),
    tr_s=14.0e-3,
    flip_angle_deg=5.0,
)

#: Field 20203, ``gre_mullti_echo_10_TE_liver`` (sic; echo times unverified: 2.38 ms × n).
UKB_MULTIECHO_20203 = MultiEchoProtocol(
    field=20203,
    series_description="gre_mullti_echo_10_TE_liver",
    rows=160,
    columns=160,
    pixel_spacing_mm=2.5,
    slice_thickness_mm=6.0,
    echo_times_s=uniform_echo_times(2.38e-3, 2.38e-3, 10),
    tr_s=27.0e-3,
    flip_angle_deg=20.0,
)

MULTIECHO_PROTOCOLS: dict[int, MultiEchoProtocol] = {
    p.field: p for p in (UKB_IDEAL_20254, UKB_MULTIECHO_20203)
}

#: Field id of the neck-to-knee Dixon bulk zips.
DIXON_FIELD = 20201


@dataclass(frozen=True)
class Scanner:
    """What a UK Biobank scanner writes into every DICOM header.

    ``imaging_frequency_mhz`` is the true proton frequency (nominal 1.5 T scanners report ≈1.494 T).
    """

    manufacturer: str = "SIEMENS"
    model: str = "MAGNETOM Aera"
    magnetic_field_strength_t: float = 1.5
    imaging_frequency_mhz: float = 63.6155
    software_versions: str = "syngo MR D13"
    centres: dict[int, str] = field(
        default_factory=lambda: {
            11025: "Cheadle Royal Business Park, Stockport",
            11026: "Reading, Thames Valley Park",
            11027: "Newcastle, Newcastle University",
            11028: "Bristol, Emersons Green",
        }
    )
