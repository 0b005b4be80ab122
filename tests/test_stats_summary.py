"""The text summary of result tables: one line per model under its outcome, estimate [CI], p and n."""

from __future__ import annotations

import pandas as pd
import pytest

from cohortscale.stats.summary import summary


def test_regression_and_odds_ratio_lines() -> None:
    """β rows by exposure and stratum; odds ratios preferred over the log-odds β when both are there."""
    ols = pd.DataFrame(
        {
            "outcome": ["pdff", "pdff"],
            "exposure": ["age", "age"],
            "stratum": ["women", "men"],
            "n": [100, 90],
            "beta": [0.2164, 0.27759],
            "ci_low": [0.1407, 0.2122],
            "ci_high": [0.2921, 0.343],
            "p": [2.57e-08, 0.0],
        }
    )
    lines = summary(ols, "model").splitlines()
    assert lines[:2] == ["model", "pdff"]
    assert lines[2].split() == ["age", "·", "women", "β", "0.216", "[0.141,", "0.292]", "p=2.6e-08", "n=100"]
    assert lines[3].split()[3:] == ["β", "0.278", "[0.212,", "0.343]", "p=<1e-300", "n=90"]
    logit = ols.assign(or_=[1.5, 2.0], or_ci_low=[1.1, 1.2], or_ci_high=[2.0, 3.5])
    assert "OR 1.5 [1.1, 2]" in summary(logit)


def test_needs_an_estimate() -> None:
    with pytest.raises(ValueError, match="no estimate column"):
        summary(pd.DataFrame({"outcome": ["a"], "p": [0.5]}))
