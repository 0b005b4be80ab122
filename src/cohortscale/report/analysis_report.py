"""The analysis report: one HTML page for a folder of recipe results written by
:func:`cohortscale.analysis.run.run_recipe`.

Each recipe gets a section (title, participants, the main IDPs by age group and sex) and each step a
subsection with a figure chosen by the step's kind and its table. Figures are PNGs next to the page, named
``<recipe>_<step>.png``; long tables show the :data:`TABLE_ROWS` rows with the smallest p and link to the
full CSV. A missing or empty result file is noted on the page, not raised.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from cohortscale.analysis.recipe import STUDY_ORDER
from cohortscale.analysis.run import DATA, MANIFEST
from cohortscale.pipeline.reduce import describe
from cohortscale.report.synth_report import save_figure
from cohortscale.stats.tails import neg_log10_p_normal

#: Default title of the page.
TITLE = "cohortscale analysis results"
#: Default file name of the page, in the results folder.
PAGE = "report.html"
#: Rows shown of a long table (those with the smallest p when it has a ``p`` column).
TABLE_ROWS = 20
#: Significant digits of p-values (scientific notation) and of estimates in tables.
P_DIGITS = 2
ESTIMATE_DIGITS = 3
#: How a p-value that underflowed to 0 is shown.
P_UNDERFLOW = "< 1e-300"
#: Family-wise error rate of the PheWAS plot's Bonferroni line.
ALPHA = 0.05
#: PheWAS categories labelled in the plot (smallest p first).
TOP_HITS = 5
#: Width of wide figures, inches (``save_figure`` writes 80 dpi: 880 pixels, a laptop page).
WIDE = 11.0
#: Width of single-panel figures, inches.
NARROW = 7.5
#: Height of one row of a forest plot or of a heatmap, inches.
ROW_HEIGHT = 0.45
#: Characters of a figure title per inch of figure width (where it wraps).
TITLE_CHARS_PER_INCH = 9
#: Age groups of the box plots: bin edges (years, left-closed) and labels.
AGE_EDGES = (-np.inf, 55.0, 65.0, 75.0, np.inf)
AGE_LABELS = ("<55", "55–65", "65–75", "≥75")
#: Columns of the analysis table the box plots group by.
AGE, SEX_GROUP = "age", "sex_group"
#: At most this many IDPs in a recipe's box plot.
MAX_BOX_IDPS = 4
#: Name (after the recipe's prefix) of a recipe's box plot.
BOX_FIGURE = "idps_by_age_sex"
#: Colours of strata (sexes) in the order they appear.
STRATUM_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown")
#: Label of the single stratum of a step run without ``by``.
ALL = "all"
#: Odds-ratio axis ticks.
OR_TICKS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 20.0)
#: Where a legend goes: right of its panel, top-aligned (inside the figure's layout).
OUTSIDE_RIGHT = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
#: Matplotlib settings of every figure: 11 pt text (about 12 pixels at 80 dpi), smaller legends.
FIGURE_STYLE = {"font.size": 11, "axes.titlesize": "medium", "legend.fontsize": "small"}
#: Share of a heatmap's colour range above which cell text is white.
DARK_CELL = 0.6
#: Columns printed as whole numbers.
COUNT_COLUMNS = frozenset(
    {"n", "n_1", "n_2", "n_cases", "n_events", "events", "at_risk", "df_resid", "n_positive", "n_negative"}
)
#: Table headers shown differently from the column name.
COLUMN_LABELS = {
    "or_": "OR",
    "or_ci_low": "OR CI low",
    "or_ci_high": "OR CI high",
    "hr": "HR",
    "hr_ci_low": "HR CI low",
    "hr_ci_high": "HR CI high",
    "std_beta": "std β",
    "std_ci_low": "std β CI low",
    "std_ci_high": "std β CI high",
    "beta": "β",
    "neg_log10_p": "−log10 p",
}
#: ICD-10 chapters by the first letter of a code (short names for the PheWAS axis).
ICD10_CHAPTERS = {
    "A": "infectious",
    "B": "infectious",
    "C": "neoplasms",
    "D": "neoplasms, blood",
    "E": "endocrine",
    "F": "mental",
    "G": "nervous",
    "H": "eye, ear",
    "I": "circulatory",
    "J": "respiratory",
    "K": "digestive",
    "L": "skin",
    "M": "musculoskeletal",
    "N": "genitourinary",
    "O": "pregnancy",
    "P": "perinatal",
    "Q": "congenital",
    "R": "symptoms",
    "S": "injury",
    "T": "injury, poisoning",
    "U": "special",
    "V": "external",
    "W": "external",
    "X": "external",
    "Y": "external",
    "Z": "health services",
}


@dataclass(frozen=True)
class Variable:
    """How a column of the analysis table is named on the page, its units, and whether it is (derived from)
    an image-derived phenotype."""

    label: str
    unit: str = ""
    idp: bool = False


#: Columns of the analysis table (and of the packaged recipes' transforms) with readable names and units.
VARIABLES: dict[str, Variable] = {
    "age": Variable("age", "y"),
    "bmi": Variable("BMI", "kg/m²"),
    "height_cm": Variable("height", "cm"),
    "weight_kg": Variable("weight", "kg"),
    "grip_kg": Variable("grip strength", "kg"),
    "alm_kg": Variable("appendicular lean mass", "kg"),
    "almi": Variable("ALM index", "kg/m²"),
    "townsend": Variable("Townsend index"),
    "igf1": Variable("IGF-1", "nmol/L"),
    "met_vigorous": Variable("vigorous activity", "MET-min/week"),
    "spine_bmd": Variable("spine BMD", "g/cm²"),
    "alcohol": Variable("alcohol intake (code)"),
    "smoking": Variable("smoking status (code)"),
    "followup_y": Variable("follow-up", "y"),
    "t2d": Variable("type-2 diabetes"),
    "osteoporosis": Variable("osteoporosis"),
    "sarcopenia": Variable("sarcopenia"),
    "sarcopenia_probable": Variable("probable sarcopenia"),
    "frailty": Variable("frailty"),
    "frail": Variable("frail"),
    "back_pain": Variable("back pain"),
    "current_smoker": Variable("current smoker"),
    "low_muscle": Variable("low muscle mass"),
    "weak_grip": Variable("weak grip"),
    "died": Variable("death"),
    "any_fall": Variable("any fall"),
    "vbm_ff": Variable("VBM FF", "%", idp=True),
    "vbm_pdff": Variable("VBM PDFF", "%", idp=True),
    "vbm_iron": Variable("VBM iron", "mg/g", idp=True),
    "vbm_r2star": Variable("VBM R2*", "1/s", idp=True),
    "log_iron": Variable("log VBM iron", "log mg/g", idp=True),
    "femur_pdff": Variable("femur PDFF", "%", idp=True),
    "liver_pdff": Variable("liver PDFF", "%", idp=True),
    "tmv_cm3": Variable("thigh muscle volume", "cm³", idp=True),
    "log_tmv": Variable("log thigh muscle volume", "log cm³", idp=True),
    "tvi": Variable("thigh muscle volume index", "cm³/m²", idp=True),
    "tmv_h2": Variable("thigh muscle volume / height²", "cm³/m²", idp=True),
    "pa_ratio": Variable("posterior/anterior ratio", idp=True),
    "vat_l": Variable("VAT", "L", idp=True),
    "log_vat": Variable("log VAT", "log L", idp=True),
    "vat_h2": Variable("VAT / height²", "L/m²", idp=True),
    "asat_l": Variable("ASAT", "L", idp=True),
    "asat_h2": Variable("ASAT / height²", "L/m²", idp=True),
    "predicted_age": Variable("imaging age", "y", idp=True),
    "pad": Variable("PAD", "y", idp=True),
    "pad_corrected": Variable("corrected PAD", "y", idp=True),
}


def variable(name: str) -> Variable:
    """The :data:`VARIABLES` entry of ``name``, else one from the IDP catalogue, else the name itself."""
    if name in VARIABLES:
        return VARIABLES[name]
    unit, _ = describe(name)
    return Variable(name.replace("_", " "), "" if unit == "1" else unit, idp=bool(unit))


def label(name: str, unit: bool = True) -> str:
    """Readable name of a column, with its units in brackets (where known and ``unit``)."""
    known = variable(name)
    return f"{known.label} ({known.unit})" if unit and known.unit else known.label


# --- Numbers ------------------------------------------------------------------------------------------------


def format_p(p: float) -> str:
    """A p-value in scientific notation, :data:`P_DIGITS` significant digits (:data:`P_UNDERFLOW` for 0)."""
    return P_UNDERFLOW if p == 0 else f"{p:.{P_DIGITS - 1}e}"


def format_estimate(value: float) -> str:
    """A number with :data:`ESTIMATE_DIGITS` significant digits, in plain notation from 1e-4 to 1e6."""
    if not math.isfinite(value):
        return "∞" if value > 0 else "−∞" if value < 0 else ""
    rounded = float(f"{value:.{ESTIMATE_DIGITS}g}")
    if rounded == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(rounded)))
    if not -4 <= magnitude < 6:
        return f"{rounded:.{ESTIMATE_DIGITS - 1}e}"
    return f"{rounded:,.{max(0, ESTIMATE_DIGITS - 1 - magnitude)}f}"


def _is_p_column(name: str) -> bool:
    return name in ("p", "threshold") or name.startswith("p_")


def _cell_format(name: str, values: pd.Series) -> Callable[[Any], str]:
    """How the cells of column ``name`` are written."""
    if _is_p_column(name):
        return format_p
    if pd.api.types.is_bool_dtype(values):
        return lambda v: "yes" if v else "no"
    if name in COUNT_COLUMNS or pd.api.types.is_integer_dtype(values) or _whole_numbers(values):
        return lambda v: f"{int(v)}"
    if pd.api.types.is_float_dtype(values):
        return format_estimate
    return str


def _whole_numbers(values: pd.Series) -> bool:
    """Whether a float column holds only whole numbers (codes, group labels, rank statistics)."""
    if not pd.api.types.is_float_dtype(values):
        return False
    finite = values[np.isfinite(values)]
    return bool(len(finite)) and bool((finite == finite.round()).all())


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as HTML-escaped text: p-values in scientific notation, counts as integers, estimates with
    :data:`ESTIMATE_DIGITS` significant digits, missing values empty."""
    columns = {}
    for name in table.columns:
        write = _cell_format(str(name), table[name])
        columns[COLUMN_LABELS.get(str(name), str(name))] = [
            "" if _is_missing(v) else html.escape(write(v)) for v in table[name]
        ]
    return pd.DataFrame(columns, index=table.index)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- Tables -------------------------------------------------------------------------------------------------


def table_html(table: pd.DataFrame, csv_href: str, whole: bool = False) -> str:
    """A step's table as HTML; unless ``whole``, more than :data:`TABLE_ROWS` rows are cut to those with the
    smallest p (or the first ones), with a note linking to the full CSV."""
    note = ""
    if len(table) > TABLE_ROWS and not whole:
        link = f'<a href="{html.escape(csv_href)}">{html.escape(Path(csv_href).name)}</a>'
        total = len(table)
        if "p" in table:
            table = table.sort_values("p", kind="stable", na_position="last").head(TABLE_ROWS)
            shown = f"the {TABLE_ROWS} rows with the smallest p"
        else:
            table = table.head(TABLE_ROWS)
            shown = f"the first {TABLE_ROWS} rows"
        note = f'<p class="note">Showing {shown} of {total}; all rows are in {link}.</p>'
    return _html_table(format_table(table), numeric=[_is_numeric(table[c]) for c in table.columns]) + note


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _html_table(cells: pd.DataFrame, numeric: Sequence[bool]) -> str:
    """Escaped text cells as an HTML table (in a scrolling box), numeric columns right-aligned."""
    align = ['class="num"' if n else "" for n in numeric]
    head = "".join(f"<th {a}>{html.escape(str(c))}</th>" for c, a in zip(cells.columns, align, strict=True))
    rows = (
        "<tr>" + "".join(f"<td {a}>{v}</td>" for v, a in zip(row, align, strict=True)) + "</tr>"
        for row in cells.itertuples(index=False)
    )
    return f'<div class="scroll"><table class="results"><tr>{head}</tr>{"".join(rows)}</table></div>'


def _table_one_rows(table: pd.DataFrame, options: dict[str, Any]) -> pd.DataFrame:
    """Table 1 with readable variable names (on the first row of each) and no / yes for 0 / 1 levels."""
    shown = table.copy()
    names = shown["variable"].astype(str)
    shown["variable"] = [
        "" if i and name == names.iloc[i - 1] else label(name) for i, name in enumerate(names)
    ]
    if "level" in shown:
        shown["level"] = shown["level"].map(_level_text)
    return shown


def _level_text(level: Any) -> str:
    """A Table 1 level: ``no`` / ``yes`` for 0 / 1 (as read back from CSV), else the level."""
    if _is_missing(level):
        return ""
    try:
        return {0.0: "no", 1.0: "yes"}.get(float(level), str(level))
    except ValueError:
        return str(level)


def _kaplan_meier_rows(table: pd.DataFrame, options: dict[str, Any]) -> pd.DataFrame:
    """One row per curve: at risk at the first event, events, last event time, cumulative failure there."""
    rows = []
    for group, curve in table.groupby("group", sort=False):
        last = curve.iloc[-1]
        rows.append(
            {
                "group": _readable(str(group), options.get("groups", {})),
                "at_risk": curve["at_risk"].iloc[0],
                "events": curve["events"].sum(),
                "last event time": last["time"],
                "failure": last["failure"],
                "failure_ci_low": last.get("failure_ci_low", np.nan),
                "failure_ci_high": last.get("failure_ci_high", np.nan),
            }
        )
    return pd.DataFrame(rows)


#: Kinds whose table is reshaped for the page: kind → function(table, step options) → table shown.
TABLE_VIEWS: dict[str, Callable[[pd.DataFrame, dict[str, Any]], pd.DataFrame]] = {
    "table_one": _table_one_rows,
    "kaplan_meier": _kaplan_meier_rows,
}
#: Kinds whose tables are shown whole, in their order (however long).
WHOLE_TABLES = frozenset({"table_one"})


# --- Figures ------------------------------------------------------------------------------------------------


def _wrap(fig: plt.Figure, title: str) -> str:
    """A figure title wrapped to the figure's width."""
    return textwrap.fill(title, max(20, int(fig.get_figwidth() * TITLE_CHARS_PER_INCH)))


def _save(fig: plt.Figure, title: str, path: Path) -> None:
    """``save_figure`` with the title wrapped (the layout leaves room for the title's lines)."""
    save_figure(fig, _wrap(fig, title), path, top=1.0)


def _strata(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` per level of the ``stratum`` column in order of appearance (one for no strata)."""
    if "stratum" not in table or table["stratum"].isna().all():
        return [(ALL, table)]
    return [(str(level), rows) for level, rows in table.groupby("stratum", sort=False)]


def _colours(levels: Sequence[str]) -> dict[str, str]:
    return {level: STRATUM_COLOURS[i % len(STRATUM_COLOURS)] for i, level in enumerate(levels)}


def correlation_figure(table: pd.DataFrame, options: dict[str, Any], title: str, path: Path) -> str:
    """Heatmaps (x variables as rows, y as columns), one per stratum, coloured by −log10 p and annotated
    with r; cells passing the corrected threshold in bold with an asterisk. Returns the caption."""
    strata = _strata(table)
    xs, ys = list(dict.fromkeys(table["x"])), list(dict.fromkeys(table["y"]))
    threshold = float(table["threshold"].iloc[0])
    line = -math.log10(threshold)
    scores = table["neg_log10_p"].to_numpy(float)
    finite = scores[np.isfinite(scores)]
    top = max(float(finite.max()) if finite.size else 0.0, 2 * line)
    saturated = bool((scores > top).any())
    width = min(WIDE, max(NARROW, 3.5 + 0.5 * len(ys)))
    panel_height = ROW_HEIGHT * len(xs) + 0.6
    fig, axes = plt.subplots(
        len(strata), 1, figsize=(width, panel_height * len(strata) + 2.0), sharex=True, squeeze=False
    )
    cmap = plt.get_cmap("YlOrRd").with_extremes(bad="lightgrey")
    for ax, (stratum, rows) in zip(axes[:, 0], strata, strict=True):
        cells = rows.set_index(["x", "y"])
        grid = cells["neg_log10_p"].unstack("y").reindex(index=xs, columns=ys).to_numpy(float)
        image = ax.imshow(np.minimum(grid, top), cmap=cmap, vmin=0, vmax=top, aspect="auto")
        for (i, x), (j, y) in ((a, b) for a in enumerate(xs) for b in enumerate(ys)):
            if (x, y) in cells.index:
                _annotate_cell(ax, i, j, cells.loc[(x, y)], min(grid[i, j], top) / top)
        ax.set_yticks(range(len(xs)), [label(x, unit=False) for x in xs])
        ax.set_title(stratum if stratum != ALL else "")
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01, extend="max" if saturated else "neither")
        bar.ax.axhline(line, color="black", linewidth=2)
        bar.set_label(f"−log10 p\n(line: p = {format_p(threshold)})", fontsize="small")
    axes[-1, 0].set_xticks(range(len(ys)), [label(y, unit=False) for y in ys], rotation=40, ha="right")
    _save(fig, title, path)
    method = options.get("method", "spearman").capitalize()
    caption = (
        f"Number: {method} r; colour: −log10 p; bold with *: p ≤ {format_p(threshold)} "
        f"({table['correction'].iloc[0]}-corrected over all {len(table)} tests)."
    )
    if saturated:
        caption += " p-values that underflowed to 0 are drawn at the top of the colour scale."
    return caption


def _annotate_cell(ax: plt.Axes, i: int, j: int, cell: pd.Series, shade: float) -> None:
    """r in a heatmap cell, bold with an asterisk when significant, white on dark cells."""
    significant = bool(cell["significant"])
    text = "–" if _is_missing(cell["r"]) else f"{cell['r']:.2f}" + ("*" if significant else "")
    ax.text(
        j,
        i,
        text,
        ha="center",
        va="center",
        fontsize=8,
        fontweight="bold" if significant else "normal",
        color="white" if shade > DARK_CELL else "black",
    )


@dataclass(frozen=True)
class Forest:
    """What a forest plot draws: estimate and interval columns, the column naming its rows, the column
    splitting it into panels, the axis label and reference line, and whether the axis is logarithmic."""

    estimate: str
    low: str
    high: str
    rows: str
    panels: str | None
    xlabel: str
    reference: float
    log: bool = False


#: Forest plots by step kind.
FORESTS = {
    "ols": Forest(
        "std_beta", "std_ci_low", "std_ci_high", "exposure", "outcome", "standardised β (95% CI)", 0.0
    ),
    "logit": Forest("or_", "or_ci_low", "or_ci_high", "outcome", None, "odds ratio (95% CI)", 1.0, log=True),
    "decline": Forest(
        "per_decade", "ci_low", "ci_high", "stratum", "outcome", "change per decade (95% CI)", 0.0
    ),
}
FORESTS["tertile_logit"] = FORESTS["logit"]


def forest_figure(table: pd.DataFrame, forest: Forest, title: str, path: Path) -> None:
    """Estimates with their intervals, a row per ``forest.rows`` value and a panel per ``forest.panels``
    value, strata side by side in their colours."""
    strata = table["stratum"].astype(object) if "stratum" in table else pd.Series(ALL, index=table.index)
    table = table.assign(stratum=strata.where(strata.notna(), ALL).astype(str))
    panels = [(None, table)] if forest.panels is None else list(table.groupby(forest.panels, sort=False))
    levels = list(dict.fromkeys(table["stratum"]))
    colours = _colours(levels)
    n_rows = max(rows[forest.rows].nunique() for _, rows in panels)
    columns = min(len(panels), 3)
    lines = -(-len(panels) // columns)
    width = WIDE if columns > 1 else NARROW
    fig, axes = plt.subplots(
        lines, columns, figsize=(width, lines * (ROW_HEIGHT * n_rows * len(levels) ** 0.5 + 1.4) + 0.8),
        squeeze=False,
    )  # fmt: skip
    for ax, (panel, rows) in zip(axes.flat, panels, strict=False):
        _forest_panel(ax, rows, forest, colours)
        if panel is not None:
            ax.set_title(label(str(panel)))
        if forest.rows == "stratum" and panel is not None:
            ax.set_xlabel(f"{forest.xlabel}, {variable(str(panel)).unit or 'units'}")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    if len(levels) > 1 and forest.rows != "stratum":
        handles = [Line2D([], [], color=c, marker="o", linestyle="", label=s) for s, c in colours.items()]
        axes.flat[len(panels) - 1].legend(handles=handles, **OUTSIDE_RIGHT)
    _save(fig, title, path)


def _forest_panel(ax: plt.Axes, rows: pd.DataFrame, forest: Forest, colours: dict[str, str]) -> None:
    """One panel of a forest plot: rows top to bottom in order of appearance, strata dodged."""
    names = list(dict.fromkeys(rows[forest.rows].astype(str)))
    dodge = 0.0 if forest.rows == "stratum" or len(colours) == 1 else 0.5 / len(colours)
    for k, (stratum, colour) in enumerate(colours.items()):
        part = rows[rows["stratum"] == stratum]
        if part.empty:
            continue
        y = np.array([names.index(str(v)) for v in part[forest.rows]]) + (k - (len(colours) - 1) / 2) * dodge
        estimate = part[forest.estimate].to_numpy(float)
        errors = np.abs(np.vstack([estimate - part[forest.low], part[forest.high] - estimate]))
        ax.errorbar(estimate, y, xerr=errors, fmt="o", color=colour, capsize=3, markersize=5)
    ax.axvline(forest.reference, color="grey", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(names)), [label(n, unit=False) if n != ALL else n for n in names])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel(forest.xlabel)
    ax.grid(axis="x", alpha=0.3)
    if forest.log:
        _log_axis(ax, rows[[forest.low, forest.high]].to_numpy(float))


def _log_axis(ax: plt.Axes, limits: np.ndarray) -> None:
    """A logarithmic x axis with plain tick labels spanning the intervals."""
    finite = limits[np.isfinite(limits) & (limits > 0)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.5, 2.0)
    ax.set_xscale("log")
    ax.set_xlim(min(low, 1.0) / 1.15, max(high, 1.0) * 1.15)
    ax.xaxis.set_major_locator(FixedLocator(OR_TICKS))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _forest_step(kind: str) -> Callable[[pd.DataFrame, dict[str, Any], str, Path], str]:
    """The figure function of a forest-plot kind."""

    def draw(table: pd.DataFrame, options: dict[str, Any], title: str, path: Path) -> str:
        forest = FORESTS[kind]
        forest_figure(table, forest, title, path)
        return f"Points: {forest.xlabel.split(' (')[0]}; bars: 95% confidence intervals."

    return draw


def kaplan_meier_figure(table: pd.DataFrame, options: dict[str, Any], title: str, path: Path) -> str:
    """Cumulative failure (%) against time, a step curve per group from (0, 0), with its CI band."""
    fig, ax = plt.subplots(figsize=(NARROW + 1.5, 5.0))
    has_band = {"failure_ci_low", "failure_ci_high"} <= set(table.columns)
    for k, (group, curve) in enumerate(table.groupby("group", sort=False)):
        colour = STRATUM_COLOURS[k % len(STRATUM_COLOURS)]
        time = np.concatenate([[0.0], curve["time"].to_numpy(float)])
        failure = 100 * np.concatenate([[0.0], curve["failure"].to_numpy(float)])
        counts = f"at risk {int(curve['at_risk'].iloc[0])}, {int(curve['events'].sum())} events"
        name = f"{_readable(str(group), options.get('groups', {}))} ({counts})"
        ax.step(time, failure, where="post", color=colour, label=name)
        if has_band:
            low = 100 * np.concatenate([[0.0], curve["failure_ci_low"].to_numpy(float)])
            high = 100 * np.concatenate([[0.0], curve["failure_ci_high"].to_numpy(float)])
            ax.fill_between(time, low, high, step="post", color=colour, alpha=0.15, linewidth=0)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(label(options.get("duration", "time")))
    ax.set_ylabel(f"cumulative incidence of {label(options.get('event', 'event'), unit=False)} (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _save(fig, title, path)
    band = " Bands: 95% pointwise confidence intervals." if has_band else ""
    return f"Kaplan–Meier cumulative failure (1 − survival) by group.{band}"


def _readable(text: str, names: Sequence[str]) -> str:
    """``text`` with each column of ``names`` written as its readable label."""
    for name in names:
        text = re.sub(rf"\b{re.escape(name)}\b", label(name, unit=False), text)
    return text


def phewas_figure(table: pd.DataFrame, options: dict[str, Any], title: str, path: Path) -> str:
    """−log10 p per ICD-10 category, grouped and coloured by chapter, ▲ for OR > 1 and ▼ for OR < 1, the
    Bonferroni line and the top hits labelled."""
    tested = table[np.isfinite(table["p"].to_numpy(float))].sort_values("code").reset_index(drop=True)
    chapters = tested["code"].str[0]
    position = np.arange(len(tested)) + (chapters != chapters.shift()).cumsum().to_numpy() - 1
    score = neg_log10_p_normal(tested["z"].to_numpy(float))  # finite where p underflows to 0
    line = -math.log10(ALPHA / max(len(tested), 1))
    fig, ax = plt.subplots(figsize=(WIDE, 5.5))
    for k, (_, rows) in enumerate(tested.groupby(chapters, sort=True)):
        colour = plt.get_cmap("tab10")(k % 10)
        for up, marker in ((True, "^"), (False, "v")):
            mask = (rows["or_"] > 1) == up
            ax.scatter(position[rows.index[mask]], score[rows.index[mask]], marker=marker, color=colour, s=40)
    centres = pd.Series(position).groupby(chapters.to_numpy()).mean()
    ax.set_xticks(
        centres.to_numpy(),
        [f"{c} {ICD10_CHAPTERS.get(c, '')}" for c in centres.index],
        rotation=35,
        ha="right",
        rotation_mode="anchor",
    )
    ax.axhline(line, color="tab:red", linestyle="--", linewidth=1)
    ax.set_ylim(0, max(score.max(initial=0), line) * 1.3)
    ax.set_xlim(-1, position.max(initial=0) + 1)
    ax.set_xlabel("ICD-10 category (3 characters), by chapter")
    ax.set_ylabel("−log10 p")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        handles=[
            Line2D([], [], color="tab:red", linestyle="--", label=f"Bonferroni p = {ALPHA}/{len(tested)}"),
            Line2D([], [], color="black", marker="^", linestyle="", label="OR > 1"),
            Line2D([], [], color="black", marker="v", linestyle="", label="OR < 1"),
        ],
        fontsize=8,
        **OUTSIDE_RIGHT,
    )
    hits = np.argsort(-score, kind="stable")[:TOP_HITS]
    texts = [
        ax.annotate(
            f"{tested['code'][i]} (OR {tested['or_'][i]:.2f})",
            (position[i], score[i]),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
        )
        for i in hits
    ]
    fig.suptitle(_wrap(fig, title))
    fig.tight_layout()  # as save_figure will lay it out, so that labels are spread where they end up
    _spread_labels(fig, texts)
    _save(fig, title, path)
    idp = options.get("idp")
    per = f" of {label(idp, unit=False)} per SD" if idp else ""
    return (
        f"Each marker an ICD-10 category with enough cases ({len(tested)} tested); logistic regression{per}, "
        f"the {TOP_HITS} smallest p labelled with their odds ratio."
    )


def _spread_labels(fig: plt.Figure, texts: list[plt.Annotation]) -> None:
    """Move annotations up, in order, until none overlaps an earlier one."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for text in texts:
        box = text.get_window_extent(renderer)
        while any(box.overlaps(other) for other in placed):
            dx, dy = text.xyann
            text.xyann = (dx, dy + box.height * 72 / fig.dpi + 1)
            box = text.get_window_extent(renderer)
        placed.append(box)


#: Figures by step kind: function(table, step options, title, path) → caption.
FIGURES: dict[str, Callable[[pd.DataFrame, dict[str, Any], str, Path], str]] = {
    "correlation": correlation_figure,
    "kaplan_meier": kaplan_meier_figure,
    "phewas": phewas_figure,
    **{kind: _forest_step(kind) for kind in FORESTS},
}


def main_idps(steps: Sequence[dict[str, Any]]) -> list[str]:
    """A recipe's main IDPs: the IDP-like ``variables`` of its ``table_one`` steps, else the outcomes of its
    ``ols`` steps, else its PheWAS IDPs (at most :data:`MAX_BOX_IDPS`)."""
    table_one = [v for s in steps if s["kind"] == "table_one" for v in s.get("variables", [])]
    candidates = [v for v in table_one if variable(v).idp]
    if not candidates:
        candidates = [v for s in steps if s["kind"] == "ols" for v in s.get("outcomes", [])]
    if not candidates:
        candidates = [s["idp"] for s in steps if s["kind"] == "phewas" and "idp" in s]
    return list(dict.fromkeys(candidates))[:MAX_BOX_IDPS]


def age_groups(age: pd.Series) -> pd.Series:
    """The :data:`AGE_LABELS` group of each age (years)."""
    return pd.cut(age, AGE_EDGES, right=False, labels=AGE_LABELS)


def idp_box_figure(data: pd.DataFrame, idps: Sequence[str], title: str, path: Path) -> None:
    """Box plots of each IDP by age group, a box per sex (whiskers 1.5 IQR, outliers not drawn)."""
    groups = age_groups(data[AGE])
    sexes = [str(s) for s in pd.Series(data[SEX_GROUP]).dropna().unique()]
    if isinstance(data[SEX_GROUP].dtype, pd.CategoricalDtype):
        sexes = [str(s) for s in data[SEX_GROUP].cat.categories if str(s) in sexes]
    colours = _colours(sexes)
    width = 0.8 / max(len(sexes), 1)
    fig, axes = plt.subplots(1, len(idps), figsize=(WIDE if len(idps) > 1 else NARROW, 4.6), squeeze=False)
    for ax, idp in zip(axes[0], idps, strict=True):
        for k, sex in enumerate(sexes):
            values = [
                data.loc[(groups == age) & (data[SEX_GROUP].astype(str) == sex), idp].dropna().to_numpy(float)
                for age in AGE_LABELS
            ]
            positions = np.arange(len(AGE_LABELS)) + (k - (len(sexes) - 1) / 2) * width
            boxes = ax.boxplot(
                values, positions=positions, widths=width * 0.85, patch_artist=True, showfliers=False,
                medianprops={"color": "black"},
            )  # fmt: skip
            for box in boxes["boxes"]:
                box.set(facecolor=colours[sex], alpha=0.55)
        ax.set_xticks(range(len(AGE_LABELS)), AGE_LABELS)
        ax.set_xlabel("age group (y)")
        ax.set_ylabel(label(idp))
        ax.set_title(label(idp, unit=False))
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=c, alpha=0.55, label=s) for s, c in colours.items()]
    axes[0, -1].legend(handles=handles, **OUTSIDE_RIGHT)
    _save(fig, title, path)


# --- Page ---------------------------------------------------------------------------------------------------

#: Head of the page: its title and style sheet.
HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:0 1em 3em;line-height:1.45}}
h2{{border-bottom:2px solid #ccc;margin-top:2.5em}} h3{{margin-top:2em}}
img{{max-width:100%;height:auto}} figure{{margin:1em 0}} figcaption,.note{{color:#555;font-size:90%}}
.scroll{{overflow-x:auto}} table.results{{border-collapse:collapse;font-size:85%;margin:.5em 0}}
table.results th,table.results td{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}}
table.results th{{background:#f2f2f2}} table.results tr:nth-child(even){{background:#fafafa}}
table.results .num{{text-align:right;white-space:nowrap}}
.missing{{color:#a33}} .file{{font-size:70%;font-weight:normal;margin-left:.8em}}
</style></head><body>
"""


def _anchor(*names: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", "-".join(names))


def _href(path: Path, page_dir: Path) -> str:
    """A link to ``path`` relative to the page's folder (forward slashes)."""
    return Path(os.path.relpath(path, page_dir)).as_posix()


def _figure_html(path: Path, page_dir: Path, caption: str) -> str:
    src = html.escape(_href(path, page_dir))
    alt = html.escape(caption, quote=True)
    return f'<figure><img src="{src}" alt="{alt}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def read_step_table(path: Path) -> tuple[pd.DataFrame | None, str]:
    """A step's result table, or ``None`` and why it cannot be shown (missing, empty)."""
    if not path.is_file():
        return None, f"The result file {path.name} is missing."
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None, f"The result file {path.name} is empty."
    if table.empty:
        return None, f"The result file {path.name} has no rows."
    return table, ""


def step_html(recipe: str, step: dict[str, Any], folder: Path, page_dir: Path) -> str:
    """A step's subsection: heading (with a link to its CSV), figure and caption, table."""
    name, kind, title = step["name"], step["kind"], step.get("title") or step["name"]
    csv = folder / step.get("file", f"{name}.csv")
    csv_href = _href(csv, page_dir)
    parts = [
        f'<h3 id="{_anchor(recipe, name)}">{html.escape(title)}'
        f'<span class="file"><a href="{html.escape(csv_href)}">{html.escape(csv.name)}</a> · {kind}</span>'
        "</h3>"
    ]
    table, problem = read_step_table(csv)
    if "error" in step:  # the runner could not run the step on these data
        table, problem = None, f"Not run: {step['error']}"
    if table is None:
        return parts[0] + f'<p class="missing">{html.escape(problem)}</p>'
    options = {k: v for k, v in step.items() if k not in ("name", "kind", "title", "file")}
    if kind in FIGURES:
        parts.append(
            _step_figure_html(FIGURES[kind], table, options, title, page_dir / f"{recipe}_{name}.png")
        )
    view = TABLE_VIEWS.get(kind)
    parts.append(table_html(view(table, options) if view else table, csv_href, whole=kind in WHOLE_TABLES))
    return "\n".join(parts)


def _step_figure_html(
    draw: Callable[[pd.DataFrame, dict[str, Any], str, Path], str],
    table: pd.DataFrame, options: dict[str, Any], title: str, path: Path,
) -> str:  # fmt: skip
    """A step's figure and caption, or a note when its table lacks what the figure needs."""
    open_before = set(plt.get_fignums())
    try:
        with plt.rc_context(FIGURE_STYLE):
            caption = draw(table, options, title, path)
        return _figure_html(path, path.parent, caption)
    except (KeyError, ValueError, IndexError) as exc:  # a table without the columns its kind writes
        for number in set(plt.get_fignums()) - open_before:
            plt.close(number)
        return f'<p class="missing">No figure: the table lacks what it needs ({html.escape(str(exc))}).</p>'


def _box_html(recipe: str, folder: Path, manifest: dict[str, Any], page_dir: Path) -> str:
    """The recipe's main IDPs by age group and sex, or a note why they are not drawn."""
    idps = main_idps(manifest.get("steps", []))
    data_path = folder / manifest.get("data", DATA)
    if not idps:
        return ""
    if not data_path.is_file():
        return f'<p class="missing">No box plot: the analysis table {data_path.name} is missing.</p>'
    data = pd.read_parquet(data_path)
    idps = [i for i in idps if i in data]
    if not idps or not {AGE, SEX_GROUP} <= set(data.columns):
        return f'<p class="missing">No box plot: {data_path.name} lacks the IDPs, {AGE} or {SEX_GROUP}.</p>'
    path = page_dir / f"{recipe}_{BOX_FIGURE}.png"
    with plt.rc_context(FIGURE_STYLE):
        idp_box_figure(data, idps, "Main IDPs by age group and sex", path)
    counts = age_groups(data[AGE]).value_counts().reindex(AGE_LABELS, fill_value=0)
    caption = (
        f"{', '.join(label(i, unit=False) for i in idps)} by age group and sex: boxes span the quartiles, "
        "whiskers 1.5 × IQR, outliers not drawn. Participants per age group: "
        + ", ".join(f"{age} y: {n:,}" for age, n in counts.items())
        + "."
    )
    return "<h3>Main IDPs by age and sex</h3>" + _figure_html(path, page_dir, caption)


def recipe_html(folder: Path, page_dir: Path) -> str:
    """A recipe's section: title, participants, box plot of its main IDPs, a subsection per step."""
    manifest = json.loads((folder / MANIFEST).read_text())
    recipe = str(manifest.get("recipe", folder.name))
    steps = manifest.get("steps", [])
    title = manifest.get("title") or recipe
    n = manifest.get("n")
    people = f"{n:,} participants in the analysis table" if isinstance(n, int) else "participants unknown"
    parts = [
        f'<section><h2 id="{_anchor(recipe)}">{html.escape(title)}</h2>',
        f"<p>Recipe <code>{html.escape(recipe)}</code>: {people}, {len(steps)} steps. Results folder: "
        f'<a href="{html.escape(_href(folder, page_dir))}/">{html.escape(folder.name)}/</a>.</p>',
        _box_html(recipe, folder, manifest, page_dir),
        *(step_html(recipe, step, folder, page_dir) for step in steps),
        "</section>",
    ]
    return "\n".join(parts)


def _contents(folders: Sequence[Path]) -> str:
    items = []
    for folder in folders:
        manifest = json.loads((folder / MANIFEST).read_text())
        recipe = str(manifest.get("recipe", folder.name))
        steps = "".join(
            f'<li><a href="#{_anchor(recipe, s["name"])}">{html.escape(s.get("title") or s["name"])}</a></li>'
            for s in manifest.get("steps", [])
        )
        title = html.escape(manifest.get("title") or recipe)
        items.append(f'<li><a href="#{_anchor(recipe)}">{title}</a><ul>{steps}</ul></li>')
    return f"<ul>{''.join(items)}</ul>"


def write_analysis_report(
    results_dir: str | Path, out_html: str | Path | None = None, title: str = TITLE
) -> Path:
    """Write an HTML page of every recipe's results under ``results_dir`` and return its path.

    Parameters
    ----------
    results_dir : path-like
        Folder holding one folder per recipe run (:func:`cohortscale.analysis.run.run_recipe`'s ``out``),
        each with its ``results.json``.
    out_html : path-like, optional
        The page (default ``results_dir/report.html``); figures are written next to it as
        ``<recipe>_<step>.png``.
    title : str
        Heading and title of the page.

    Returns
    -------
    Path
        The page.
    """
    results_dir = Path(results_dir)
    page = Path(out_html) if out_html is not None else results_dir / PAGE
    page.parent.mkdir(parents=True, exist_ok=True)
    # The packaged recipes in the order of their studies (STUDIES.md), then any others by name.
    folders = sorted(
        (p.parent for p in results_dir.glob(f"*/{MANIFEST}")),
        key=lambda f: (STUDY_ORDER.index(f.name) if f.name in STUDY_ORDER else len(STUDY_ORDER), f.name),
    )
    parts = [HEAD.format(title=html.escape(title)), f"<h1>{html.escape(title)}</h1>"]
    if folders:
        parts += [_contents(folders), *(recipe_html(folder, page.parent) for folder in folders)]
    else:
        where = html.escape(str(results_dir))
        parts.append(f'<p class="missing">No recipe results (folders with {MANIFEST}) in {where}.</p>')
    parts.append("</body></html>")
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
