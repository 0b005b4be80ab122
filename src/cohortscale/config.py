"""Typed configuration: dataclasses loaded from TOML and overridden from the command line.

Every section of a run is a frozen dataclass. :func:`load_config` reads a TOML file (optional) and then
applies ``key=value`` overrides with dotted keys for nested sections (``anomalies.corrupt_zip=0.1``),
converting each value to the field's declared type, so a typo or a wrong type fails loudly.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cohortscale.protocols import (
    MULTIECHO_PROTOCOLS,
    UKB_IDEAL_20254,
    UKB_MULTIECHO_20203,
    DixonAcquisition,
    MultiEchoProtocol,
    Scanner,
)

T = TypeVar("T")


@dataclass(frozen=True)
class AnomalyRates:
    """Per-participant probabilities of each injected anomaly (0–1).

    Each anomaly is drawn independently per participant visit from the cohort seed; the ones drawn are
    recorded in ``truth/anomalies.csv``. Rates of 1.0 force an anomaly, which is how tests ask for one.
    """

    duplicate_station: float = 0.02
    """A station acquired twice; the repeat has a newer SeriesTime and must win."""
    missing_series: float = 0.01
    """One of the 24 Dixon series absent from the zip."""
    short_station: float = 0.01
    """A 44-slice station delivered with 43 slices."""
    swap_station: float = 0.01
    """Fat and water series exchanged for a whole station."""
    swap_leg: float = 0.008
    """Fat and water exchanged in one leg of station 5 or 6."""
    ghost_slices: float = 0.05
    """2–4 wrap-around ghost slices at the ends of each station."""
    truncated_dicom: float = 0.005
    """One DICOM file in the Dixon zip cut short."""
    corrupt_zip: float = 0.005
    """The Dixon zip damaged so that it cannot be opened as an archive."""
    missing_multiecho: float = 0.01
    """No multi-echo acquisition at this visit (the bone-marrow study excludes such participants)."""
    slice_through_disc: float = 0.01
    """The multi-echo slice planned through an intervertebral disc, missing the vertebral marrow."""
    size_mismatch: float = 0.005
    """The fat series of one station one slice shorter than its water series."""


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic cohort. The same config and seed give identical files.

    Attributes
    ----------
    participants : int
        Number of participants (each has an imaging visit, instance 2).
    seed : int
        Cohort seed; every random draw derives from it.
    scale : float
        Spatial scale of images in (0, 1]: matrices and slice counts shrink by this factor and voxel
        sizes grow by its inverse, so the body and the station layout keep their physical size.
    images : bool
        Write DICOM zips and truth volumes; ``False`` writes only phenotypes and truth IDPs.
    repeat_visit_rate : float
        Share of participants who also attended the repeat imaging visit (instance 3).
    dixon_snr : float
        Dixon signal-to-noise ratio: muscle water signal over the noise standard deviation.
    multiecho_snr : float
        Multi-echo SNR: muscle first-echo magnitude over the noise standard deviation.
    multiecho_fields : tuple of int
        Multi-echo protocols to write (20254 = 6-echo IDEAL; 20203 = 10-echo).
    ideal_echo_times_s : tuple of float
        Echo times of the 20254 protocol, s (default 6 echoes, 1.2 ms + 2.0 ms·n; unverified).
    ideal_dynamics : int
        Repeated acquisitions (dynamics) of the 20254 slice, each a magnitude + phase series pair
        ("6DYN" in its SeriesDescription; unverified).
    phase_sign : int
        +1 writes the phase of ``s ∝ exp(+i 2π f t)``; −1 writes its conjugate (the opposite precession
        convention), recorded in the truth so readers can be tested on both.
    multiecho10_echo_times_s : tuple of float
        Echo times of the 20203 protocol, s (default 10 echoes, 2.38 ms × n; unverified).
    coil_bias : float
        Peak relative amplitude of the smooth receive-coil bias field.
    edge_rolloff : float
        Relative signal loss on the outermost slice of each station (decays inwards over ~5 slices).
    b0_range_hz : float
        Maximum absolute off-resonance of the smooth multi-echo field map, Hz.
    max_signal : int
        uint16 value that the brightest tissue reaches before noise.
    workers : int
        Processes used to generate participants in parallel.
    zip_compresslevel : int
        Deflate level of the bulk zips (1 is 3–4× faster to write than 6 for ~3 % larger files).
    """

    participants: int = 3
    seed: int = 0
    scale: float = 1.0
    images: bool = True
    repeat_visit_rate: float = 0.05
    dixon_snr: float = 40.0
    multiecho_snr: float = 40.0
    multiecho_fields: tuple[int, ...] = (20254,)
    ideal_echo_times_s: tuple[float, ...] = UKB_IDEAL_20254.echo_times_s
    multiecho10_echo_times_s: tuple[float, ...] = UKB_MULTIECHO_20203.echo_times_s
    ideal_dynamics: int = 6
    phase_sign: int = 1
    coil_bias: float = 0.2
    edge_rolloff: float = 0.15
    b0_range_hz: float = 150.0
    max_signal: int = 1600
    workers: int = 1
    zip_compresslevel: int = 1
    anomalies: AnomalyRates = field(default_factory=AnomalyRates)
    dixon: DixonAcquisition = field(default_factory=DixonAcquisition)
    scanner: Scanner = field(default_factory=Scanner)

    def __post_init__(self) -> None:
        if self.participants < 1:
            raise ValueError(f"participants must be ≥ 1, got {self.participants}")
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")
        for name in ("dixon_snr", "multiecho_snr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        unknown = set(self.multiecho_fields) - set(MULTIECHO_PROTOCOLS)
        if unknown:
            raise ValueError(
                f"unknown multi-echo field(s) {sorted(unknown)}; known: {sorted(MULTIECHO_PROTOCOLS)}"
            )

        if self.phase_sign not in (1, -1):
            raise ValueError(f"phase_sign must be 1 or -1, got {self.phase_sign}")
        if self.ideal_dynamics < 1:
            raise ValueError(f"ideal_dynamics must be ≥ 1, got {self.ideal_dynamics}")
        for times in (self.ideal_echo_times_s, self.multiecho10_echo_times_s):
            if len(times) < 2 or times[0] <= 0 or any(np.diff(times) <= 0):
                raise ValueError(f"echo times must be positive and increasing, got {times}")

    def multiecho_protocol(self, field_id: int) -> MultiEchoProtocol:
        """The multi-echo protocol of ``field_id`` with this configuration's echo times."""
        times = {UKB_IDEAL_20254.field: self.ideal_echo_times_s}.get(field_id, self.multiecho10_echo_times_s)
        return dataclasses.replace(MULTIECHO_PROTOCOLS[field_id], echo_times_s=tuple(times))


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML or command-line value to the declared field type."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise TypeError(f"{key}: expected a table, got {value!r}")
        return _build(annotation, value, prefix=key + ".")
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return tuple(_convert(v, item_type, key) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise TypeError(f"{key}: expected a table, got {value!r}")
        return {_convert(k, key_type, key): _convert(v, value_type, key) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _convert(value, args[0], key)
    if annotation is bool:
        if isinstance(value, str):
            lowered = value.lower()
            if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(f"{key}: not a boolean: {value!r}")
            return lowered in {"true", "1", "yes"}
        return bool(value)
    if annotation in (int, float, str):
        try:
            return annotation(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}: cannot read {value!r} as {annotation.__name__}") from exc
    return value


def _build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise KeyError(f"unknown setting(s) {sorted(prefix + u for u in unknown)} for {cls.__name__}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        _merge(base.setdefault(head, {}), rest, value)
    else:
        base[head] = value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    base: T | None = None,
) -> T:
    """Build a configuration dataclass from defaults, a TOML file and overrides, in that order.

    Parameters
    ----------
    cls : type
        The configuration dataclass, e.g. :class:`SynthConfig`.
    path : path-like, optional
        TOML file whose top-level keys (and tables, for nested sections) set fields.
    overrides : mapping or iterable of ``"key=value"``, optional
        Dotted keys for nested fields, e.g. ``{"anomalies.corrupt_zip": 0.5}``.
    base : instance of ``cls``, optional
        Starting values instead of the defaults.

    Returns
    -------
    instance of ``cls``
    """
    values: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
    if path is not None:
        with open(path, "rb") as fh:
            for key, value in tomllib.load(fh).items():
                if isinstance(value, Mapping) and isinstance(values.get(key), dict):
                    values[key] = {**values[key], **value}
                else:
                    values[key] = value
    if overrides is not None:
        items = overrides.items() if isinstance(overrides, Mapping) else _split_pairs(overrides)
        for key, value in items:
            _merge(values, key, value)
    return _build(cls, values)


def _split_pairs(pairs: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {pair!r} is not of the form key=value")
        out.append((key.strip(), value.strip()))
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON/TOML-ready dict of a configuration dataclass (tuples as lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(obj: Any) -> Any:
    """Recursively turn tuples into lists and non-string mapping keys into strings."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj
