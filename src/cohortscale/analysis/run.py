"""Run a recipe: the analysis table through each step, one tidy result table per step on disk.

``run_recipe`` writes into ``OUT/<recipe>/``: ``data.parquet`` (the analysis table after the recipe's
transforms and the columns steps add), ``<step>.csv`` per step, and ``results.json`` listing the steps
(name, kind, title, file, options) for :mod:`cohortscale.report.analysis_report`. Every step is a thin
call of a :mod:`cohortscale.stats` function; the mapping is :data:`STEP_KINDS`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohortscale.analysis.recipe import Recipe, Step
from cohortscale.pheno.derive import tertiles
from cohortscale.pheno.gwas import write_gwas_files
from cohortscale.stats import agebias, correlation, hypothesis, logistic, ols, roc, survival
from cohortscale.stats.design import strata_rows
from cohortscale.stats.multiple import adjust
from cohortscale.stats.phewas import phewas as phewas_scan

#: Name of the 0/1 exposure of a tertile comparison (1 top tertile, 0 bottom, missing in between).
TOP_VS_BOTTOM = "top_vs_bottom_tertile"
#: Manifest of a recipe's results.
MANIFEST = "results.json"
#: The analysis table as the steps left it.
DATA = "data.parquet"


@dataclass
class Context:
    """What steps share: the table (steps may add columns), ICD-10 code sets, the output folder."""

    data: pd.DataFrame
    codes: pd.Series | None
    out: Path


def _table_one(ctx: Context, by: str, variables: list[str], categorical: list[str] = (), **kw: Any):
    rows = [*variables, *(c for c in categorical if c not in variables)]
    return hypothesis.table_one(ctx.data, by, rows, list(categorical), **kw)


def _normality(ctx: Context, variables: list[str], by: str | None = None, test: str = "lilliefors"):
    return hypothesis.normality(ctx.data, variables, by, test)


def _correlation(
    ctx: Context, x: list[str], y: list[str], method: str = "spearman", by: str | None = None,
    correction: str = "bonferroni", alpha: float = 0.05,
):  # fmt: skip
    """Correlation of every x with every y (per stratum), with −log10 p and the corrected threshold over
    all strata's tests."""
    tables = []
    for level, rows in strata_rows(ctx.data, by):
        part = ctx.data[rows]
        result = correlation.correlation_matrix(part[x], part[y], method=method).tidy()
        tables.append(result.assign(stratum=level))
    table = pd.concat(tables, ignore_index=True)
    adjusted = adjust(table["p"].to_numpy(), correction, alpha)
    return table.assign(
        p_adjusted=adjusted.adjusted,
        threshold=adjusted.threshold,
        significant=table["p"] <= adjusted.threshold,
        correction=correction,
    )


def _ols(
    ctx: Context, outcomes: list[str], exposures: list[str], covariates: list[str] = (),
    by: str | None = None, joint: bool = False,
):  # fmt: skip
    """``ols_many``; ``joint`` puts every exposure in one model (each row: that exposure, adjusted for the
    others and the covariates)."""
    if not joint:
        return ols.ols_many(ctx.data, outcomes, exposures, list(covariates), strata=by)
    return pd.concat(
        [
            ols.ols_many(ctx.data, outcomes, [e], [*[o for o in exposures if o != e], *covariates], strata=by)
            for e in exposures
        ],
        ignore_index=True,
    )


def _group_test(ctx: Context, variables: list[str], by: str, test: str = "mann_whitney"):
    tests = {
        "mann_whitney": hypothesis.mann_whitney,
        "anova": hypothesis.one_way_anova,
        "t": hypothesis.t_test,
    }
    return tests[test](ctx.data, variables, by)


def _decline(ctx: Context, outcomes: list[str], age: str = "age", by: str | None = None):
    return ols.decline_per_decade(ctx.data, outcomes, age, strata=by)


def _trend(ctx: Context, outcomes: list[str], variable: str, bins: list[float]):
    """Cochran–Armitage trend of 0/1 outcomes across ordered bins of ``variable`` (e.g. age groups)."""
    groups = pd.cut(ctx.data[variable], bins, right=False)
    table = ctx.data.assign(_group=groups.cat.codes.where(groups.notna()))
    return hypothesis.cochran_armitage(table, outcomes, "_group").assign(groups_of=variable, bins=str(bins))


def _tertile_logit(
    ctx: Context, variable: str, outcomes: list[str], covariates: list[str] = (), within: str | None = None,
):  # fmt: skip
    """Odds ratios of 0/1 outcomes, top vs bottom tertile of ``variable`` (cut within ``within``'s levels)."""
    split = tertiles(ctx.data[variable], by=ctx.data[within] if within else None)
    labels = split.labels.astype(float)
    ctx.data[TOP_VS_BOTTOM] = labels.map({1.0: 0.0, 3.0: 1.0})
    table = logistic.logit_many(ctx.data, outcomes, TOP_VS_BOTTOM, list(covariates))
    return table.assign(variable=variable)


def _logit(
    ctx: Context, outcomes: list[str], exposure: str, covariates: list[str] = (), by: str | None = None
):
    return logistic.logit_many(ctx.data, outcomes, exposure, list(covariates), strata=by)


def _age_model(
    ctx: Context, predictors: list[str], age: str = "age", test_fraction: float = 0.5, seed: int = 0,
    n_folds: int = agebias.N_FOLDS,
):  # fmt: skip
    """An imaging age from IDPs: age predicted by least squares on ``predictors``, out of fold on a
    training part and fitted on all of it for the test part; then the predicted age difference (PAD) and
    its Beheshti age-bias correction. Adds ``predicted_age``, ``pad``, ``pad_corrected`` and ``test_set``."""
    data = ctx.data
    usable = data[[age, *predictors]].notna().all(axis=1).to_numpy()
    rng = np.random.default_rng(seed)
    test = usable & (rng.random(len(data)) < test_fraction)
    train = usable & ~test
    x = np.column_stack([np.ones(len(data)), data[predictors].to_numpy(float)])
    y = data[age].to_numpy(float)
    predicted = np.full(len(data), np.nan)
    folds = agebias.assign_folds(int(train.sum()), n_folds, seed)
    train_rows = np.flatnonzero(train)
    for fold in range(n_folds):
        held, kept = train_rows[folds == fold], train_rows[folds != fold]
        coef = np.linalg.lstsq(x[kept], y[kept], rcond=None)[0]
        predicted[held] = x[held] @ coef
    coef = np.linalg.lstsq(x[train], y[train], rcond=None)[0]
    predicted[test] = x[test] @ coef
    correction = agebias.beheshti_correction(
        y[train], predicted[train], y[test], predicted[test], n_folds=n_folds, seed=seed
    )
    data["predicted_age"] = predicted
    data["pad"] = predicted - y
    corrected = np.full(len(data), np.nan)
    corrected[train], corrected[test] = correction.train_pad, correction.test_pad
    data["pad_corrected"] = corrected
    data["test_set"] = np.where(usable, test.astype(float), np.nan)
    rows = []
    for part, mask in (("train", train), ("test", test)):
        rows.append(
            {
                "set": part,
                "n": int(mask.sum()),
                "mae_y": float(np.mean(np.abs(predicted[mask] - y[mask]))),
                "r_pad_age": float(np.corrcoef(data["pad"].to_numpy()[mask], y[mask])[0, 1]),
                "r_corrected_pad_age": float(np.corrcoef(corrected[mask], y[mask])[0, 1]),
                "bias_slope": correction.slope,
                "bias_intercept": correction.intercept,
            }
        )
    return pd.DataFrame(rows)


def _delong(ctx: Context, outcome: str, scores: list[str], rows: str | None = None):
    """AUROC of two scores for a 0/1 outcome and DeLong's test of their difference."""
    data = ctx.data if rows is None else ctx.data[ctx.data[rows] == 1]
    data = data[[outcome, *scores]].dropna()
    result = roc.delong_test(
        data[outcome].to_numpy(int), data[scores[0]].to_numpy(), data[scores[1]].to_numpy()
    )
    fields = {name: getattr(result, name) for name in result.__dataclass_fields__}
    for name in ("ci_a", "ci_b"):
        fields[f"{name}_low"], fields[f"{name}_high"] = fields.pop(name)
    return pd.DataFrame([{"outcome": outcome, "score_a": scores[0], "score_b": scores[1], **fields}])


def _cox(
    ctx: Context, duration: str, event: str, exposures: list[str], covariates: list[str] = (),
    per_sd: bool = True, rows: str | None = None,
):  # fmt: skip
    data = ctx.data if rows is None else ctx.data[ctx.data[rows] == 1]
    return survival.cox_ph(data, duration, event, exposures, list(covariates), per_sd=per_sd)


def _kaplan_meier(ctx: Context, duration: str, event: str, groups: dict[str, str]):
    """Kaplan–Meier curves by the combination of ``groups``: column → ``"median"`` (above the median) or
    ``"top_tertile"``."""
    data = ctx.data[[duration, event, *groups]].dropna()
    labels = []
    for column, rule in groups.items():
        values = data[column]
        if rule == "median":
            high = values > values.median()
            labels.append(np.where(high, f"{column} > median", f"{column} ≤ median"))
        elif rule == "top_tertile":
            high = values > values.quantile(2 / 3)
            labels.append(np.where(high, f"{column} top tertile", f"{column} lower tertiles"))
        else:
            raise ValueError(f"kaplan_meier groups: rule {rule!r} is not 'median' or 'top_tertile'")
    group = pd.Series([" & ".join(parts) for parts in zip(*labels, strict=True)], index=data.index)
    return survival.kaplan_meier(data[duration].to_numpy(float), data[event].to_numpy(int), group.to_numpy())


def _phewas(
    ctx: Context, idp: str, covariates: list[str] = (), min_cases: int = 20, profile_ci: bool = False
):
    if ctx.codes is None:
        raise ValueError("a phewas step needs the phenotype table's ICD-10 records (field 41270)")
    return phewas_scan(ctx.data, idp, ctx.codes, list(covariates), min_cases=min_cases, profile_ci=profile_ci)


def _gwas_export(
    ctx: Context, phenotypes: list[str], covariates: list[str] = (), binary: list[str] = (),
    tools: list[str] = ("regenie", "plink2"),
):  # fmt: skip
    """REGENIE and PLINK 2 phenotype/covariate files of the table (one row per participant)."""
    data = ctx.data.rename_axis("eid")
    rows = []
    for tool in tools:
        files = write_gwas_files(data, phenotypes, ctx.out / tool, covariates, binary, tool)
        rows.append({"tool": tool, "phenotypes": files.phenotypes.name, "covariates": files.covariates.name})
    return pd.DataFrame(rows)


#: Step kinds: name → function(context, **options) → tidy DataFrame.
STEP_KINDS: dict[str, Callable[..., pd.DataFrame]] = {
    "table_one": _table_one,
    "normality": _normality,
    "correlation": _correlation,
    "ols": _ols,
    "group_test": _group_test,
    "decline": _decline,
    "trend": _trend,
    "tertile_logit": _tertile_logit,
    "logit": _logit,
    "age_model": _age_model,
    "delong": _delong,
    "cox": _cox,
    "kaplan_meier": _kaplan_meier,
    "phewas": _phewas,
    "gwas_export": _gwas_export,
}


def apply_transforms(data: pd.DataFrame, transforms: dict[str, str]) -> pd.DataFrame:
    """The table with each transform's column added, in order (later ones may use earlier ones).

    A comparison becomes 0/1, missing wherever a column it reads is missing (pandas would say False).
    """
    data = data.copy()
    for name, expression in transforms.items():
        try:
            values = data.eval(expression, engine="python")
        except Exception as exc:  # pandas raises many kinds for a bad expression
            raise ValueError(f"transform {name} = {expression!r}: {exc}") from exc
        if pd.api.types.is_bool_dtype(values):
            read = [c for c in data.columns if re.search(rf"\b{re.escape(str(c))}\b", expression)]
            values = values.astype(float).where(data[read].notna().all(axis=1))
        data[name] = values
    return data


@dataclass(frozen=True)
class RecipeResults:
    """Where a recipe's results went and what each step returned."""

    recipe: Recipe
    folder: Path
    tables: dict[str, pd.DataFrame]
    participants: int
    failures: dict[str, str] = dataclasses.field(default_factory=dict)


def run_recipe(
    recipe: Recipe, table: pd.DataFrame, out: str | Path, codes: pd.Series | None = None
) -> RecipeResults:
    """Run every step of ``recipe`` on the analysis table and write the results to ``out/<recipe>/``.

    Parameters
    ----------
    recipe : Recipe
    table : pandas.DataFrame
        The analysis table (:func:`cohortscale.analysis.table.analysis_table`), indexed by eid.
    out : path-like
    codes : pandas.Series, optional
        ICD-10 3-character code sets by eid (for PheWAS steps).

    Raises
    ------
    ValueError
        An unknown step kind, a bad option or transform (naming the step).
    """
    folder = Path(out) / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(apply_transforms(table, recipe.transforms), codes, folder)
    tables: dict[str, pd.DataFrame] = {}
    manifest = []
    failures: dict[str, str] = {}
    for step in recipe.steps:
        entry = {"name": step.name, "kind": step.kind, "title": step.title, "file": f"{step.name}.csv"}
        (folder / entry["file"]).unlink(missing_ok=True)  # no stale result of an earlier run
        try:
            tables[step.name] = _run_step(step, ctx)
        except StepFailed as failed:
            # The data cannot support this analysis (too few participants, no events, a missing column):
            # the other steps still run, and the manifest and the report say why this one has no table.
            failures[step.name] = entry["error"] = str(failed)
        else:
            tables[step.name].to_csv(folder / entry["file"], index=False)
        manifest.append({**entry, **step.options})
    ctx.data.to_parquet(folder / DATA)
    summary = {
        "recipe": recipe.name,
        "title": recipe.title,
        "n": len(ctx.data),
        "data": DATA,
        "steps": manifest,
    }
    (folder / MANIFEST).write_text(json.dumps(summary, indent=1, default=str))
    return RecipeResults(recipe, folder, tables, len(ctx.data), failures)


class StepFailed(RuntimeError):
    """A step whose data cannot support it (raised by the statistics, e.g. too few rows or no events)."""


def _run_step(step: Step, ctx: Context) -> pd.DataFrame:
    """Run one step.

    Raises
    ------
    ValueError
        The recipe is wrong: an unknown kind, an option the kind does not take, or a missing option.
    StepFailed
        The data cannot support the step.
    """
    if step.kind not in STEP_KINDS:
        raise ValueError(f"step {step.name}: unknown kind {step.kind!r} (one of {sorted(STEP_KINDS)})")
    try:
        return STEP_KINDS[step.kind](ctx, **step.options)
    except TypeError as exc:  # an option the kind does not take, or a missing one
        raise ValueError(f"step {step.name} ({step.kind}): {exc}") from exc
    except (ValueError, KeyError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise StepFailed(f"step {step.name} ({step.kind}): {exc}") from exc


def run_recipes(
    idps: str | Path,
    phenotypes: str | Path,
    out: str | Path,
    recipes: list[str | Path] | None = None,
) -> list[RecipeResults]:
    """Run recipes (default: every packaged one) on an IDP table file joined with a phenotype export.

    Parameters
    ----------
    idps : path-like
        ``idps.parquet`` of a run, or a synthetic cohort's ``truth/idps.csv``.
    phenotypes : path-like
        Phenotype export in any UK Biobank layout.
    out : path-like
        Results folder (one sub-folder per recipe).
    recipes : list, optional
        Packaged recipe names or recipe files.
    """
    from cohortscale.analysis.recipe import load_recipe, packaged_recipes
    from cohortscale.analysis.table import analysis_table, read_idps
    from cohortscale.pheno.derive import FIELD_ICD10, icd10_code_sets
    from cohortscale.pheno.read import read_phenotypes

    loaded = [load_recipe(r) for r in (recipes or packaged_recipes())]
    phenos = read_phenotypes(phenotypes)
    codes = icd10_code_sets(phenos) if FIELD_ICD10 in phenos.columns.get_level_values(0) else None
    measured = read_idps(idps)
    return [run_recipe(r, analysis_table(measured, phenos, r.visit, r.field), out, codes) for r in loaded]
