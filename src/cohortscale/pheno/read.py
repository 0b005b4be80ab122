"""Read UK Biobank phenotype exports (ukbconv CSV, R ``.tab``, research analysis platform CSV) into one form.

The canonical form (:data:`Phenotypes`) is a wide :class:`pandas.DataFrame`:

- index ``eid`` (int64, unique, ascending);
- columns a :class:`pandas.MultiIndex` with levels ``(field, instance, array)`` (all ints), sorted;
- one dtype per column, decided by its content, so every layout of the same table reads to the same
  frame: ``float64`` when every non-missing value is a number (codes, counts and measurements alike),
  ``datetime64[ns]`` when every non-missing value is an ISO date (``YYYY-MM-DD``, optionally with a time),
  otherwise the pandas ``string`` dtype. Fields in :data:`TEXT_FIELDS` (ICD codes, whose ICD-9 forms can
  look numeric but carry leading zeros) always stay text. Missing values are NaN / NaT / ``<NA>``; special
  negative codes (−1, −3, −7...) are kept as read, see :mod:`cohortscale.pheno.values`.

Accepted layouts (detected from the header by :func:`detect_layout`):

``ukbconv`` CSV
    Comma-separated, ``eid`` then ``<field>-<instance>.<array>`` (``21003-2.0``, ``41270-0.17``).
``r_tab``
    ukbconv's R output, tab-separated: ``f.eid`` then ``f.<field>.<instance>.<array>``; ``NA`` is missing.
``rap`` (research analysis platform / ``dx extract_dataset`` / table exporter)
    Comma- or tab-separated, ``eid`` (or ``participant.eid``) then ``p<field>``, ``p<field>_i<instance>``,
    ``p<field>_a<array>`` or ``p<field>_i<instance>_a<array>`` (an optional ``participant.`` prefix is
    dropped). A missing ``_i`` means instance 0 and a missing ``_a`` array 0. A cell holding a list —
    ``[...]`` with comma-separated, optionally quoted items (``["E119","K219"]``, ``[1223, 1065]``) or
    items separated by ``|`` (``E119|K219``) — is a multi-valued field: its items become arrays
    0, 1, 2... in the order given (the export of ``p41270`` as one column of codes). A column that holds a
    list in any cell is split in every cell; ``[]`` is no value. Such a column must not also appear with
    explicit ``_a`` columns of the same field and instance.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TypeAlias

import pandas as pd

__all__ = [
    "COLUMN_LEVELS",
    "TEXT_FIELDS",
    "Layout",
    "Phenotypes",
    "detect_layout",
    "parse_phenotypes",
    "read_phenotypes",
]

#: The canonical table: index ``eid``, MultiIndex columns ``(field, instance, array)`` (see module doc).
Phenotypes: TypeAlias = pd.DataFrame

#: Names of the canonical column levels.
COLUMN_LEVELS: tuple[str, str, str] = ("field", "instance", "array")

#: Fields that hold codes as text and are never converted to numbers: ICD-10 diagnoses (41270, 41202,
#: 41204), ICD-9 diagnoses (41271, 41203, 41205), underlying / contributory cause of death (40001, 40002),
#: cancer type ICD-10 / ICD-9 (40006, 40013).
TEXT_FIELDS: frozenset[int] = frozenset(
    {41270, 41271, 41202, 41203, 41204, 41205, 40001, 40002, 40006, 40013}
)

#: Cell texts read as missing (``NA`` is how the R export writes it; the CSV exports leave cells empty).
MISSING_TOKENS: tuple[str, ...] = ("", "NA")

#: Text encoding of export files (a byte-order mark, as some tools write, is skipped).
ENCODING = "utf-8-sig"

#: Separator of items in a ``|``-separated multi-valued cell.
LIST_SEPARATOR = "|"

#: Separator of items inside a ``[...]`` multi-valued cell.
BRACKET_ITEM_SEPARATOR = ","

#: Characters stripped around the items of a multi-valued cell.
ITEM_QUOTES = "\"' "

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")


class Layout(enum.Enum):
    """The three export layouts :func:`read_phenotypes` accepts."""

    UKBCONV = "ukbconv"
    R_TAB = "r_tab"
    RAP = "rap"


_ID_COLUMNS: dict[Layout, tuple[str, ...]] = {
    Layout.UKBCONV: ("eid",),
    Layout.R_TAB: ("f.eid",),
    Layout.RAP: ("eid", "participant.eid"),
}
_PATTERNS: dict[Layout, re.Pattern[str]] = {
    Layout.UKBCONV: re.compile(r"^(?P<field>\d+)-(?P<instance>\d+)\.(?P<array>\d+)$"),
    Layout.R_TAB: re.compile(r"^f\.(?P<field>\d+)\.(?P<instance>\d+)\.(?P<array>\d+)$"),
    Layout.RAP: re.compile(
        r"^(?:participant\.)?p(?P<field>\d+)(?:_i(?P<instance>\d+))?(?:_a(?P<array>\d+))?$"
    ),
}

_Key: TypeAlias = tuple[int, int, int]


def _parse_column(layout: Layout, name: str) -> _Key | None:
    """``(field, instance, array)`` of a column name in ``layout``, ``None`` when it does not match."""
    match = _PATTERNS[layout].match(name)
    if match is None:
        return None
    return int(match["field"]), int(match["instance"] or 0), int(match["array"] or 0)


def detect_layout(columns: Iterable[str]) -> Layout:
    """Which export layout a header is in.

    Parameters
    ----------
    columns : iterable of str
        The header: the participant id column and field columns.

    Returns
    -------
    Layout
        The layout whose id column is present and whose pattern every other column matches.

    Raises
    ------
    ValueError
        When no layout has its id column, or some columns match none of its patterns.
    """
    names = list(columns)
    for layout, ids in _ID_COLUMNS.items():
        id_present = [c for c in names if c in ids]
        if len(id_present) != 1:
            continue
        data = [c for c in names if c not in ids]
        if all(_parse_column(layout, c) is not None for c in data):
            return layout
    unknown = [c for c in names if not any(_parse_column(lay, c) for lay in Layout)]
    raise ValueError(
        "not a UK Biobank phenotype export (ukbconv CSV, R .tab or research analysis platform): "
        f"expected one id column (eid, f.eid or participant.eid); unrecognised columns: {unknown[:5]}"
    )


def _split_cell(value: object) -> list[str]:
    """Items of a multi-valued cell (``[...]`` or ``|``-separated); a missing cell has none."""
    if not isinstance(value, str):
        return []
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        parts = text[1:-1].split(BRACKET_ITEM_SEPARATOR)
    else:
        parts = text.split(LIST_SEPARATOR)
    items = [p.strip(ITEM_QUOTES) for p in parts]
    return [item for item in items if item]


def _is_list_column(values: pd.Series) -> bool:
    """Whether any cell of a RAP column holds a list."""
    text = values.dropna().astype(str).str.strip()
    return bool((text.str.startswith("[") | text.str.contains(LIST_SEPARATOR, regex=False)).any())


def _expand_list(key: _Key, values: pd.Series) -> dict[_Key, pd.Series]:
    """Split a multi-valued column into array columns ``(field, instance, 0..k−1)`` (at least array 0)."""
    items = values.map(_split_cell)
    width = max(int(items.map(len).max()) if len(items) else 0, 1)
    field, instance, _ = key
    return {
        (field, instance, k): items.map(lambda cell, k=k: cell[k] if k < len(cell) else None)
        for k in range(width)
    }


def _typed(field: int, values: pd.Series) -> pd.Series:
    """Convert a column of texts to ``float64``, ``datetime64[ns]`` or ``string`` (see module doc)."""
    text = values.astype("string")
    present = text.dropna()
    if field in TEXT_FIELDS:
        return text
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().sum() == len(present):
        return numbers.astype("float64")
    if len(present) and present.str.match(_ISO_DATE).all():
        return pd.to_datetime(text, format="ISO8601").astype("datetime64[ns]")
    return text


def _has_array_suffix(name: str) -> bool:
    """Whether a RAP column names its array (``_a<array>``)."""
    match = _PATTERNS[Layout.RAP].match(name)
    return match is not None and match["array"] is not None


def _field_columns(layout: Layout, names: Iterable[str], fields: Collection[int] | None) -> dict[str, _Key]:
    """``column name → (field, instance, array)`` of the data columns, restricted to ``fields`` if given."""
    keys = {name: _parse_column(layout, name) for name in names if name not in _ID_COLUMNS[layout]}
    return {
        name: key for name, key in keys.items() if key is not None and (fields is None or key[0] in fields)
    }


def _canonical_columns(frame: pd.DataFrame, layout: Layout, keys: dict[str, _Key]) -> dict[_Key, pd.Series]:
    """Canonical ``(field, instance, array) → values`` of the data columns (RAP lists split into arrays)."""
    columns: dict[_Key, pd.Series] = {}
    for name, key in keys.items():
        if layout is Layout.RAP and not _has_array_suffix(name) and _is_list_column(frame[name]):
            parts = _expand_list(key, frame[name])
        else:
            parts = {key: frame[name]}
        for part_key, values in parts.items():
            if part_key in columns:
                raise ValueError(
                    f"field {part_key[0]} instance {part_key[1]} array {part_key[2]} appears twice"
                )
            columns[part_key] = values
    return columns


def _eid_index(frame: pd.DataFrame, layout: Layout) -> pd.Index:
    """The participant ids as an int64 index named ``eid``; duplicated or missing ids are refused."""
    (id_column,) = [c for c in frame.columns if c in _ID_COLUMNS[layout]]
    ids = pd.to_numeric(frame[id_column].astype("string"), errors="coerce")
    if ids.isna().any():
        raise ValueError(f"column {id_column!r} has missing or non-numeric participant ids")
    index = pd.Index(ids.astype("int64").to_numpy(), name="eid")
    if index.has_duplicates:
        raise ValueError(f"duplicated participant ids, e.g. {index[index.duplicated()][:3].tolist()}")
    return index


def _check_fields(found: Collection[int], fields: Collection[int] | None) -> None:
    """Raise KeyError naming the requested fields the table does not hold."""
    missing = sorted(set(fields or ()) - set(found))
    if missing:
        raise KeyError(f"fields not in the phenotype table: {missing}")


def parse_phenotypes(frame: pd.DataFrame, fields: Collection[int] | None = None) -> Phenotypes:
    """Canonical table of an export already loaded as a DataFrame (any of the three layouts).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per participant, columns named as in one export layout (see module doc). Cells may be
        texts (as read from a file) or typed values (e.g. the output of
        :func:`cohortscale.synth.to_ukbconv`); both give the same canonical frame.
    fields : collection of int, optional
        Keep only these fields (all instances and arrays); default all.

    Returns
    -------
    Phenotypes
        The canonical frame: index ``eid``, columns ``(field, instance, array)``, ascending.

    Raises
    ------
    ValueError
        Unrecognised layout, duplicated or missing participant ids, a column given twice.
    KeyError
        A requested field the table does not hold.
    """
    layout = detect_layout(frame.columns)
    index = _eid_index(frame, layout)
    keys = _field_columns(layout, frame.columns, fields)
    columns = _canonical_columns(frame.reset_index(drop=True), layout, keys)
    _check_fields({key[0] for key in columns}, fields)
    typed = {key: _typed(key[0], values).set_axis(index) for key, values in columns.items()}
    if not typed:
        empty = pd.MultiIndex.from_tuples([], names=list(COLUMN_LEVELS))
        return pd.DataFrame(index=index, columns=empty).sort_index()
    table = pd.concat(typed, axis=1, names=list(COLUMN_LEVELS))
    return table.sort_index(axis=0).sort_index(axis=1)


def _separator(header_line: str) -> str:
    """Tab when the header has a tab (R ``.tab`` and tab-separated RAP files), else comma."""
    return "\t" if "\t" in header_line else ","


def read_phenotypes(path: str | Path, fields: Collection[int] | None = None) -> Phenotypes:
    """Read a UK Biobank phenotype export into the canonical table, detecting its layout.

    Parameters
    ----------
    path : str or pathlib.Path
        A ukbconv CSV, an R ``.tab`` file or a research analysis platform CSV/TSV (see module doc).
    fields : collection of int, optional
        Read only the columns of these fields (faster on wide exports); default all.

    Returns
    -------
    Phenotypes
        Index ``eid``; MultiIndex columns ``(field, instance, array)``; float64 / datetime64 / string
        columns; missing values NaN / NaT / ``<NA>``; special negative codes as written.

    Raises
    ------
    ValueError
        Unrecognised layout, duplicated or missing participant ids.
    KeyError
        A requested field the file does not hold.
    """
    path = Path(path)
    with path.open(encoding=ENCODING) as handle:
        header_line = handle.readline()
    sep = _separator(header_line)
    header = pd.read_csv(path, sep=sep, nrows=0, encoding=ENCODING).columns.tolist()
    layout = detect_layout(header)
    usecols = [*(c for c in header if c in _ID_COLUMNS[layout]), *_field_columns(layout, header, fields)]
    raw = pd.read_csv(
        path,
        sep=sep,
        dtype=str,
        keep_default_na=False,
        na_values=list(MISSING_TOKENS),
        usecols=usecols,
        encoding=ENCODING,
    )
    return parse_phenotypes(raw, fields)
