"""Group comparisons of many variables at once: normality, two- and k-group tests, contingency tables,
trend in proportions and the "Table 1 by sex with p-values".

Every function takes a frame of participants (rows), the variables to test (columns) and the grouping
column ``by``; groups are ``by``'s categories (categorical dtype) or its sorted distinct values, unless
``groups`` names them (and so their order and which rows take part). Rows whose group is missing or not
in ``groups`` are left out; each variable uses its own non-missing rows (NaN / pandas NA; ±inf is missing
too for the numeric tests), so ``n`` per group differs per variable and is reported. Results are tidy
frames, one row per variable (per group for normality), in the order the variables were given.

What each test reproduces (two-sided p-values throughout):

- :func:`normality`: ``"lilliefors"`` — ``statsmodels.stats.diagnostic.lilliefors(x, "norm",
  pvalmethod="table")``, the Kolmogorov–Smirnov test with the mean and SD estimated from the sample and
  p-values for that case (interpolated from simulated tables, so reported only within [0.001, 0.99]);
  ``"ks"`` — ``scipy.stats.kstest(x, scipy.stats.norm(mean, SD).cdf)`` with the same estimates (the same
  D, but the p-value of a fully specified normal, too large when parameters are estimated); ``"shapiro"``
  — ``scipy.stats.shapiro`` (scipy warns that its p-value may be inaccurate above 5,000 observations).
  These run one sample at a time: the references are per-sample algorithms and there are few variables.
- :func:`mann_whitney`: ``scipy.stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=True)``
  (normal approximation with tie correction and continuity correction; U is group 1's). This is not
  ``scipy.stats.ranksums``, which has neither correction. Vectorised over variables: one sort per
  variable, average ranks and tie counts from :class:`~cohortscale.stats.correlation.SortedVariables`.
- :func:`t_test`: ``scipy.stats.ttest_ind`` (Welch with ``equal_var=False``, Student otherwise),
  vectorised over variables from per-group means and sums of squared deviations.
- :func:`one_way_anova`: ``scipy.stats.f_oneway``, vectorised the same way; a group with no values of a
  variable is left out of that variable's test.
- :func:`chi_square`: ``scipy.stats.chi2_contingency`` on the variable × group table (levels or groups
  with no observations dropped); Yates' correction, when asked, applies to 2 × 2 tables only.
- :func:`cochran_armitage`: the Cochran–Armitage test for trend in proportions, binomial variance
  ``p̄(1 − p̄) Σ nᵢ(sᵢ − s̄)²`` (as R's ``prop.trend.test``: its χ² is z²). statsmodels'
  ``Table.test_ordinal_association`` uses the permutation variance, larger by ``N / (N − 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import pandas as pd
from scipy import special, stats
from statsmodels.stats.diagnostic import lilliefors

from cohortscale.stats.correlation import SortedVariables

NormalityTest: TypeAlias = Literal["lilliefors", "ks", "shapiro"]
ContinuousTest: TypeAlias = Literal["welch", "student", "mannwhitney", "anova"]
#: Continuity correction of the Mann–Whitney normal approximation.
CONTINUITY = 0.5
#: Decimal places of Table 1's means, SDs and percentages.
TABLE_ONE_DIGITS = 1
#: Table 1's cell for a value that cannot be computed (a group without values; the SD of one value).
NOT_AVAILABLE = "–"


# --- groups and values --------------------------------------------------------------------------------------


def _group_codes(
    data: pd.DataFrame, by: str, groups: Sequence[Hashable] | None = None
) -> tuple[np.ndarray, list[Hashable]]:
    """Each row's group number (−1: missing or not in ``groups``) and the group labels in order."""
    column = data[by]
    if groups is None:
        if isinstance(column.dtype, pd.CategoricalDtype):
            groups = list(column.cat.categories)
        else:
            groups = sorted(column.dropna().unique())
    codes = pd.Categorical(column, categories=list(groups)).codes
    return np.asarray(codes, dtype=np.int64), list(groups)


def _two_group_codes(
    data: pd.DataFrame, by: str, groups: Sequence[Hashable] | None
) -> tuple[np.ndarray, list[Hashable]]:
    """:func:`_group_codes`, checking that there are exactly two groups."""
    codes, labels = _group_codes(data, by, groups)
    if len(labels) != 2:
        raise ValueError(f"a two-group test needs exactly two groups in {by!r}, got {labels}")
    return codes, labels


def _matrix(data: pd.DataFrame, variables: Sequence[str]) -> np.ndarray:
    """Variables as float64 rows ``(variables, participants)``, NaN where missing or non-finite."""
    values = data[list(variables)].to_numpy(dtype=np.float64, na_value=np.nan).T
    return np.where(np.isfinite(values), values, np.nan)


class _Moments(NamedTuple):
    """Per group and variable ``(groups, variables)``: count, sum, mean and sum of squared deviations."""

    n: np.ndarray
    total: np.ndarray
    mean: np.ndarray
    ss: np.ndarray

    @property
    def sd(self) -> np.ndarray:
        """Sample standard deviation (denominator n − 1); NaN for fewer than two values."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.n > 1, np.sqrt(self.ss / (self.n - 1)), np.nan)


def _moments(values: np.ndarray, codes: np.ndarray, k: int) -> _Moments:
    """:class:`_Moments` of ``values`` (variables, participants) in groups ``0 … k − 1`` (two-pass)."""
    present = ~np.isnan(values)
    per_group = []
    for group in range(k):
        chosen = present & (codes == group)
        n = chosen.sum(axis=-1)
        total = np.where(chosen, values, 0.0).sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / n
        ss = np.where(chosen, (values - mean[:, None]) ** 2, 0.0).sum(axis=-1)
        per_group.append((n, total, mean, ss))
    return _Moments(*(np.array(stat) for stat in zip(*per_group, strict=True)))


def _two_group_frame(
    variables: Sequence[str], labels: Sequence[Hashable], n: np.ndarray, **columns: np.ndarray
) -> pd.DataFrame:
    """Tidy result of a two-group test: variable, group labels, group sizes, then ``columns``."""
    return pd.DataFrame(
        {
            "variable": list(variables),
            "group_1": labels[0],
            "group_2": labels[1],
            "n_1": n[0].astype(np.int64),
            "n_2": n[1].astype(np.int64),
            **columns,
        }
    )


# --- normality ----------------------------------------------------------------------------------------------


class _SampleTest(NamedTuple):
    """A one-sample test, ``function(x) → (statistic, p)``, and the fewest values it accepts."""

    function: Callable[[np.ndarray], tuple[float, float]]
    min_n: int


def _lilliefors(x: np.ndarray) -> tuple[float, float]:
    statistic, p = lilliefors(x, dist="norm", pvalmethod="table")
    return float(statistic), float(p)


def _ks_estimated(x: np.ndarray) -> tuple[float, float]:
    # Standardised rather than passing loc/scale as ``args``: the same statistic, and scipy 1.18 drops
    # ``args`` for the named normal CDF (``ndtr() takes from 1 to 2 positional arguments``).
    result = stats.kstest((x - x.mean()) / x.std(ddof=1), "norm")
    return float(result.statistic), float(result.pvalue)


def _shapiro(x: np.ndarray) -> tuple[float, float]:
    result = stats.shapiro(x)
    return float(result.statistic), float(result.pvalue)


_NORMALITY_TESTS: dict[str, _SampleTest] = {
    "lilliefors": _SampleTest(_lilliefors, 4),
    "ks": _SampleTest(_ks_estimated, 2),
    "shapiro": _SampleTest(_shapiro, 3),
}


def normality(
    data: pd.DataFrame,
    variables: Sequence[str],
    by: str | None = None,
    test: NormalityTest = "lilliefors",
    groups: Sequence[Hashable] | None = None,
) -> pd.DataFrame:
    """Normality test of each variable, in each group of ``by`` (or over all rows).

    Parameters
    ----------
    data : DataFrame
    variables : sequence of str
        Numeric columns to test.
    by : str, optional
        Grouping column (e.g. ``"sex"``); default: one test over all rows.
    test : {"lilliefors", "ks", "shapiro"}
        See the module notes for what each reproduces.
    groups : sequence, optional
        Group labels to test, in order.

    Returns
    -------
    DataFrame
        ``variable``, ``group`` (with ``by``), ``n`` (non-missing values), ``statistic`` (D for the KS
        variants, W for Shapiro–Wilk), ``p``; NaN statistic and p below the test's minimum sample size
        (4 Lilliefors, 2 KS, 3 Shapiro–Wilk).
    """
    if test not in _NORMALITY_TESTS:
        raise ValueError(f"unknown normality test {test!r}; expected one of {list(_NORMALITY_TESTS)}")
    sample_test = _NORMALITY_TESTS[test]
    if by is None:
        subsets: list[tuple[Hashable, np.ndarray]] = [(None, np.ones(len(data), dtype=bool))]
    else:
        codes, labels = _group_codes(data, by, groups)
        subsets = [(label, codes == g) for g, label in enumerate(labels)]
    rows = []
    for variable, values in zip(variables, _matrix(data, variables), strict=True):
        for label, chosen in subsets:
            x = values[chosen & ~np.isnan(values)]
            statistic, p = sample_test.function(x) if x.size >= sample_test.min_n else (np.nan, np.nan)
            group = {} if by is None else {"group": label}
            rows.append({"variable": variable, **group, "n": x.size, "statistic": statistic, "p": p})
    columns = ["variable", *([] if by is None else ["group"]), "n", "statistic", "p"]
    return pd.DataFrame(rows, columns=columns)


# --- two groups ---------------------------------------------------------------------------------------------


def t_test(
    data: pd.DataFrame,
    variables: Sequence[str],
    by: str,
    equal_var: bool = False,
    groups: Sequence[Hashable] | None = None,
) -> pd.DataFrame:
    """Two-sample t-test of each variable between the two groups of ``by`` (Welch by default).

    Parameters
    ----------
    data : DataFrame
    variables : sequence of str
    by : str
        Column with exactly two groups (or name them in ``groups``).
    equal_var : bool
        False: Welch's test (Welch–Satterthwaite df); True: Student's test with pooled variance.
    groups : sequence of two labels, optional
        Group 1 and group 2.

    Returns
    -------
    DataFrame
        ``variable``, ``group_1``, ``group_2``, ``n_1``, ``n_2``, ``mean_1``, ``mean_2``, ``statistic``
        (t of mean_1 − mean_2), ``df``, ``p``.
    """
    codes, labels = _two_group_codes(data, by, groups)
    m = _moments(_matrix(data, variables), codes, 2)
    (n1, n2), (ss1, ss2) = m.n, m.ss
    with np.errstate(divide="ignore", invalid="ignore"):
        if equal_var:
            df = n1 + n2 - 2.0
            se = np.sqrt((ss1 + ss2) / df * (1.0 / n1 + 1.0 / n2))
        else:
            vn1, vn2 = ss1 / (n1 - 1) / n1, ss2 / (n2 - 1) / n2
            df = (vn1 + vn2) ** 2 / (vn1**2 / (n1 - 1) + vn2**2 / (n2 - 1))
            se = np.sqrt(vn1 + vn2)
        t = (m.mean[0] - m.mean[1]) / se
    p = 2 * special.stdtr(df, -np.abs(t))
    return _two_group_frame(
        variables, labels, m.n, mean_1=m.mean[0], mean_2=m.mean[1], statistic=t, df=df, p=p
    )


def mann_whitney(
    data: pd.DataFrame, variables: Sequence[str], by: str, groups: Sequence[Hashable] | None = None
) -> pd.DataFrame:
    """Wilcoxon rank-sum (Mann–Whitney U) test of each variable between the two groups of ``by``.

    Normal approximation with tie and continuity corrections, as ``scipy.stats.mannwhitneyu(...,
    method="asymptotic")``; all variables at once.

    Parameters
    ----------
    data, variables, by, groups
        As :func:`t_test`.

    Returns
    -------
    DataFrame
        ``variable``, ``group_1``, ``group_2``, ``n_1``, ``n_2``, ``statistic`` (U of group 1: the number
        of (group 1, group 2) pairs where group 1's value is larger, ties counting one half), ``p``.
    """
    codes, labels = _two_group_codes(data, by, groups)
    values = _matrix(data, variables)
    keep = ~np.isnan(values) & (codes >= 0)
    in_first, in_second = keep & (codes == 0), keep & (codes == 1)
    n1, n2 = in_first.sum(axis=-1), in_second.sum(axis=-1)
    ranked = SortedVariables.of(values)
    u1 = np.where(in_first, ranked.ranks(keep), 0.0).sum(axis=-1) - n1 * (n1 + 1) / 2
    n = n1 + n2
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.sqrt(n1 * n2 / 12 * ((n + 1) - ranked.tie_term(keep) / (n * (n - 1))))
        z = (np.maximum(u1, n1 * n2 - u1) - n1 * n2 / 2 - CONTINUITY) / spread
    p = np.clip(2 * special.ndtr(-z), 0.0, 1.0)
    empty = (n1 == 0) | (n2 == 0)
    return _two_group_frame(
        variables,
        labels,
        np.stack([n1, n2]),
        statistic=np.where(empty, np.nan, u1),
        p=np.where(empty, np.nan, p),
    )


# --- k groups -----------------------------------------------------------------------------------------------


def _constant(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Whether each variable takes a single value over its kept entries (True when it has none)."""
    return np.where(keep, values, np.inf).min(axis=-1) >= np.where(keep, values, -np.inf).max(axis=-1)


def one_way_anova(
    data: pd.DataFrame, variables: Sequence[str], by: str, groups: Sequence[Hashable] | None = None
) -> pd.DataFrame:
    """One-way ANOVA F-test of each variable across the groups of ``by``, all variables at once.

    Parameters
    ----------
    data : DataFrame
    variables : sequence of str
        Numeric columns.
    by : str
        Grouping column (two or more groups).
    groups : sequence, optional
        Group labels taking part.

    Returns
    -------
    DataFrame
        ``variable``, ``groups`` (groups with values), ``n`` (values), ``statistic`` (F),
        ``df_between`` (groups − 1), ``df_within`` (n − groups), ``p``. NaN F and p with fewer than two
        groups, no residual degrees of freedom, or a variable constant across all its values.
    """
    codes, labels = _group_codes(data, by, groups)
    values = _matrix(data, variables)
    m = _moments(values, codes, len(labels))
    k = (m.n > 0).sum(axis=0)
    n = m.n.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        grand = m.total.sum(axis=0) / n
        between = np.where(m.n > 0, m.n * (m.mean - grand) ** 2, 0.0).sum(axis=0)
        df_between, df_within = k - 1, n - k
        f = (between / df_between) / (m.ss.sum(axis=0) / df_within)
    undefined = (df_between < 1) | (df_within < 1) | _constant(values, ~np.isnan(values) & (codes >= 0))
    f = np.where(undefined, np.nan, f)
    return pd.DataFrame(
        {
            "variable": list(variables),
            "groups": k,
            "n": n,
            "statistic": f,
            "df_between": df_between,
            "df_within": df_within,
            "p": special.fdtrc(df_between, df_within, f),
        }
    )


# --- categorical variables ----------------------------------------------------------------------------------


def _crosstab(column: pd.Series, codes: np.ndarray, k: int) -> tuple[list[Hashable], np.ndarray]:
    """Observed levels of ``column`` (sorted) and the counts ``(levels, groups)`` of rows in a group."""
    chosen = column.notna().to_numpy() & (codes >= 0)
    level_codes, levels = pd.factorize(column[chosen], sort=True)
    counts = np.zeros((len(levels), k), dtype=np.int64)
    np.add.at(counts, (level_codes, codes[chosen]), 1)
    return list(levels), counts


def chi_square(
    data: pd.DataFrame,
    variables: Sequence[str],
    by: str,
    correction: bool = True,
    groups: Sequence[Hashable] | None = None,
) -> pd.DataFrame:
    """Chi-square test of independence of each categorical variable and the groups of ``by``.

    Parameters
    ----------
    data : DataFrame
    variables : sequence of str
        Categorical columns (any dtype; each distinct non-missing value is a level).
    by : str
        Grouping column.
    correction : bool
        Yates' continuity correction for 2 × 2 tables (``scipy.stats.chi2_contingency``'s default).
    groups : sequence, optional
        Group labels taking part.

    Returns
    -------
    DataFrame
        ``variable``, ``n`` (rows with both values), ``dof``, ``statistic`` (χ²), ``p``, ``corrected``
        (whether Yates' correction was applied). NaN statistic and p when fewer than two levels or two
        groups are observed.
    """
    codes, labels = _group_codes(data, by, groups)
    rows = []
    for variable in variables:
        _, counts = _crosstab(data[variable], codes, len(labels))
        table = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
        row: dict[str, Any] = {"variable": variable, "n": int(table.sum())}
        if min(table.shape) < 2:
            row |= {"dof": 0, "statistic": np.nan, "p": np.nan, "corrected": False}
        else:
            result = stats.chi2_contingency(table, correction=correction)
            dof = int(result.dof)
            row |= {"dof": dof, "statistic": result.statistic, "p": result.pvalue}
            row["corrected"] = correction and dof == 1
        rows.append(row)
    return pd.DataFrame(rows, columns=["variable", "n", "dof", "statistic", "p", "corrected"])


class TrendTest(NamedTuple):
    """Cochran–Armitage test: ``statistic`` z (> 0: proportions rise with the score), two-sided ``p``."""

    statistic: np.ndarray | float
    p: np.ndarray | float


def cochran_armitage_counts(
    successes: np.ndarray | Sequence[float],
    totals: np.ndarray | Sequence[float],
    scores: np.ndarray | Sequence[float] | None = None,
) -> TrendTest:
    """Cochran–Armitage test for a linear trend in proportions ``successes / totals`` across ordered groups.

    ``z = Σ (sᵢ − s̄) xᵢ / √(p̄ (1 − p̄) Σ nᵢ (sᵢ − s̄)²)`` with ``xᵢ`` successes and ``nᵢ`` participants in
    group ``i``, ``sᵢ`` its score, ``s̄ = Σ nᵢ sᵢ / N`` and ``p̄ = Σ xᵢ / N``; ``p = 2 Φ(−|z|)``. The test is
    unchanged by a linear transformation of the scores.

    Parameters
    ----------
    successes, totals : array-like, (..., groups)
        Counts per group along the last axis; leading axes are separate tests.
    scores : array-like, (groups,), optional
        Scores of the ordered groups; default ``0, 1, …, groups − 1``.

    Returns
    -------
    TrendTest
        z and p with the leading shape (floats for one test); NaN when every participant, or none, is a
        success, or only one group has participants.
    """
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(totals, dtype=np.float64)
    s = np.arange(x.shape[-1], dtype=np.float64) if scores is None else np.asarray(scores, dtype=np.float64)
    total = n.sum(axis=-1, keepdims=True)
    p_bar = x.sum(axis=-1) / total[..., 0]
    centred = s - (n * s).sum(axis=-1, keepdims=True) / total
    defined = (p_bar > 0) & (p_bar < 1) & ((n > 0).sum(axis=-1) >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (centred * x).sum(axis=-1) / np.sqrt(p_bar * (1 - p_bar) * (n * centred**2).sum(axis=-1))
    z = np.where(defined, z, np.nan)
    p = 2 * special.ndtr(-np.abs(z))
    return TrendTest(z, p) if z.ndim else TrendTest(float(z), float(p))


def cochran_armitage(
    data: pd.DataFrame,
    outcomes: Sequence[str],
    by: str,
    scores: np.ndarray | Sequence[float] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> pd.DataFrame:
    """Cochran–Armitage trend test of each binary outcome across the ordered groups of ``by``.

    Parameters
    ----------
    outcomes : sequence of str
        Columns of 0/1 (or bool); missing values are left out.
    by : str
        Ordered grouping column (e.g. age group; an ordered categorical keeps its order).
    scores, groups
        See :func:`cochran_armitage_counts`; groups in ``groups`` order (default: ``by``'s categories or
        sorted values).

    Returns
    -------
    DataFrame
        ``variable``, ``n``, ``statistic`` (z), ``p``.
    """
    codes, labels = _group_codes(data, by, groups)
    values = _matrix(data, outcomes)
    observed = values[~np.isnan(values)]
    if not np.isin(observed, (0.0, 1.0)).all():
        raise ValueError("outcomes must hold only 0/1 (or bools) and missing values")
    m = _moments(values, codes, len(labels))
    trend = cochran_armitage_counts(m.total.T, m.n.T, scores)
    return pd.DataFrame(
        {"variable": list(outcomes), "n": m.n.sum(axis=0), "statistic": trend.statistic, "p": trend.p}
    )


# --- Table 1 ------------------------------------------------------------------------------------------------

_CONTINUOUS_TESTS: dict[str, tuple[str, Callable[..., pd.DataFrame]]] = {
    "welch": ("Welch t-test", partial(t_test, equal_var=False)),
    "student": ("Student t-test", partial(t_test, equal_var=True)),
    "mannwhitney": ("Mann–Whitney U", mann_whitney),
    "anova": ("one-way ANOVA", one_way_anova),
}


def _is_categorical(data: pd.DataFrame, variable: str, categorical: Sequence[str]) -> bool:
    column = data[variable]
    return (
        variable in categorical
        or pd.api.types.is_bool_dtype(column)
        or not pd.api.types.is_numeric_dtype(column)
    )


def table_one(
    data: pd.DataFrame,
    by: str,
    variables: Sequence[str],
    categorical: Sequence[str] = (),
    continuous_test: ContinuousTest = "welch",
    correction: bool = True,
    digits: int = TABLE_ONE_DIGITS,
    groups: Sequence[Hashable] | None = None,
) -> pd.DataFrame:
    """Table 1: each variable summarised per group of ``by``, with a p-value for the group difference.

    Parameters
    ----------
    data : DataFrame
    by : str
        Grouping column (e.g. ``"sex"``).
    variables : sequence of str
        Rows of the table, in order.
    categorical : sequence of str
        Variables summarised as counts; bool and non-numeric columns are categorical anyway.
    continuous_test : {"welch", "student", "mannwhitney", "anova"}
        Test of continuous variables (the first three need two groups); categorical ones get the
        chi-square test.
    correction : bool
        Yates' correction of 2 × 2 chi-square tests.
    digits : int
        Decimal places of means, SDs and percentages.
    groups : sequence, optional
        Group labels (columns of the table), in order.

    Returns
    -------
    DataFrame
        Columns ``variable``, ``level``, one column per group (named ``str(label)``), ``p``, ``test``.
        First row ``n``: participants per group. A continuous variable is one row, ``"mean ± SD"`` of its
        non-missing values; a categorical variable a row with its p-value and test, then one row per
        observed level with ``"count (percent%)"`` of the group's non-missing values.
    """
    if continuous_test not in _CONTINUOUS_TESTS:
        raise ValueError(f"unknown test {continuous_test!r}; expected one of {list(_CONTINUOUS_TESTS)}")
    codes, labels = _group_codes(data, by, groups)
    k = len(labels)
    continuous = [v for v in variables if not _is_categorical(data, v, categorical)]
    categories = [v for v in variables if _is_categorical(data, v, categorical)]
    test_name, test = _CONTINUOUS_TESTS[continuous_test]
    continuous_p = test(data, continuous, by, groups=labels).set_index("variable")["p"]
    categorical_tests = chi_square(data, categories, by, correction, groups=labels).set_index("variable")
    cells = _mean_sd_cells(_moments(_matrix(data, continuous), codes, k), digits)
    summaries = dict(zip(continuous, cells, strict=True))
    rows = [["n", "", *np.bincount(codes[codes >= 0], minlength=k).tolist(), np.nan, ""]]
    for variable in variables:
        if variable in summaries:
            rows.append([variable, "", *summaries[variable], continuous_p[variable], test_name])
        else:
            rows.extend(_categorical_rows(data[variable], codes, k, categorical_tests.loc[variable], digits))
    return pd.DataFrame(rows, columns=["variable", "level", *map(str, labels), "p", "test"])


def _number(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, or :data:`NOT_AVAILABLE` for NaN."""
    return NOT_AVAILABLE if np.isnan(value) else f"{value:.{digits}f}"


def _mean_sd_cells(m: _Moments, digits: int) -> list[list[str]]:
    """``"mean ± SD"`` of each variable (outer list) in each group (inner list)."""
    return [
        [f"{_number(mean, digits)} ± {_number(sd, digits)}" for mean, sd in zip(means, sds, strict=True)]
        for means, sds in zip(m.mean.T, m.sd.T, strict=True)
    ]


def _categorical_rows(
    column: pd.Series, codes: np.ndarray, k: int, test: pd.Series, digits: int
) -> list[list[Any]]:
    """Table 1 rows of a categorical variable: a header with its test, then ``count (percent%)`` per level."""
    levels, counts = _crosstab(column, codes, k)
    name = "chi-square (Yates)" if test["corrected"] else "chi-square"
    rows: list[list[Any]] = [[column.name, "", *([""] * k), test["p"], name]]
    with np.errstate(divide="ignore", invalid="ignore"):
        percent = 100 * counts / counts.sum(axis=0)
    for level, level_counts, level_percent in zip(levels, counts, percent, strict=True):
        cells = [f"{c} ({_number(pct, digits)}%)" for c, pct in zip(level_counts, level_percent, strict=True)]
        rows.append([column.name, level, *cells, np.nan, ""])
    return rows
