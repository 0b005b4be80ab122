"""The analysis report (cohortscale.report.analysis_report) of the four packaged recipes run on a small
synthetic cohort: every step on the page, every figure written and non-trivial, links that resolve, long
tables cut, and a recipe folder with a missing or empty result file still rendered with a note."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from cohortscale.analysis.recipe import load_recipe
from cohortscale.analysis.run import MANIFEST, run_recipe
from cohortscale.analysis.table import analysis_table
from cohortscale.pheno.derive import icd10_code_sets
from cohortscale.pheno.read import parse_phenotypes
from cohortscale.report.analysis_report import (
    P_UNDERFLOW,
    TABLE_ROWS,
    format_estimate,
    format_p,
    write_analysis_report,
)
from cohortscale.synth import simulate_population, to_ukbconv, truth_idps

RECIPES = ("vbm", "thigh", "spine-age", "phewas")
PARTICIPANTS = 1500
SEED = 11
#: Smallest size of a figure that shows something, bytes.
MIN_FIGURE_BYTES = 5_000
#: Figures the page must have whatever the data: a heatmap per correlation step, the PheWAS plot, the
#: Kaplan–Meier curves, forest plots and each recipe's box plot.
EXPECTED_FIGURES = (
    "vbm_correlations.png",
    "thigh_concordance.png",
    "phewas_phewas.png",
    "spine-age_survival_curves.png",
    "vbm_determinants.png",
    "thigh_pa_tertiles.png",
    "thigh_decline.png",
    *(f"{recipe}_idps_by_age_sex.png" for recipe in RECIPES),
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four recipes' results on a synthetic cohort."""
    population = simulate_population(PARTICIPANTS, SEED)
    idps = truth_idps(population).assign(instance=2).set_index("instance", append=True)
    phenos = parse_phenotypes(to_ukbconv(population, SEED))
    table = analysis_table(idps, phenos)
    out = tmp_path_factory.mktemp("analysis")
    for name in RECIPES:
        run_recipe(load_recipe(name), table, out, icd10_code_sets(phenos))
    return out


@pytest.fixture(scope="module")
def page(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report written away from the results, so that every link has to be relative to the page."""
    return write_analysis_report(results, tmp_path_factory.mktemp("site") / "analysis.html")


def links(page: Path) -> list[str]:
    """Every file the page links to or shows (not anchors within it)."""
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', page.read_text(encoding="utf-8"))


def manifests(results: Path) -> list[dict]:
    return [json.loads((results / name / MANIFEST).read_text()) for name in RECIPES]


def test_page_has_every_recipe_and_step(results: Path, page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for manifest in manifests(results):
        assert html.escape(manifest["title"]) in text
        assert f"{manifest['n']:,} participants" in text
        for step in manifest["steps"]:
            assert html.escape(step["title"]) in text, step["name"]


def test_figures_exist_and_show_something(page: Path) -> None:
    images = [src for src in links(page) if src.endswith(".png")]
    assert set(EXPECTED_FIGURES) <= set(images)
    for src in images:
        figure = page.parent / src
        assert figure.is_file(), src
        assert figure.stat().st_size > MIN_FIGURE_BYTES, src


def test_links_resolve_from_the_page(page: Path) -> None:
    targets = links(page)
    assert any(t.endswith("vbm/correlations.csv") for t in targets)
    for target in targets:
        assert (page.parent / target).exists(), target


def test_long_tables_are_cut_to_the_smallest_p(results: Path, page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    correlations = sum(1 for _ in (results / "vbm" / "correlations.csv").open()) - 1
    assert correlations > TABLE_ROWS
    assert f"Showing the {TABLE_ROWS} rows with the smallest p of {correlations}" in text
    vbm = text[text.index('id="vbm-table1"') :]
    assert "Showing" not in vbm[: vbm.index("<h3")]  # Table 1 is shown whole


def test_missing_and_empty_results_are_noted(results: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(results / "thigh", tmp_path / "thigh")
    (folder / "concordance.csv").unlink()
    (folder / "decline.csv").write_text("")
    page = write_analysis_report(tmp_path)
    text = page.read_text(encoding="utf-8")
    assert page == tmp_path / "report.html"
    assert "concordance.csv is missing" in text
    assert "decline.csv is empty" in text
    for step in manifests(results)[RECIPES.index("thigh")]["steps"]:
        assert html.escape(step["title"]) in text
    assert not (tmp_path / "thigh_concordance.png").exists()
    assert (tmp_path / "thigh_pa_tertiles.png").stat().st_size > MIN_FIGURE_BYTES


def test_unknown_kinds_and_odd_tables_render_as_tables(results: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(results / "thigh", tmp_path / "thigh")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["steps"].append(
        {"name": "extra", "kind": "mystery", "title": "A step of a new kind", "file": "x.csv"}
    )
    (folder / MANIFEST).write_text(json.dumps(manifest))
    (folder / "x.csv").write_text("label,estimate,p\nfirst,0.123456,0.000123\n")
    (folder / "pa_tertiles.csv").write_text("outcome,p\nweak_grip,0.5\n")  # no odds-ratio columns
    text = write_analysis_report(tmp_path).read_text(encoding="utf-8")
    assert "A step of a new kind" in text
    assert re.search(r"<td[^>]*>0\.123</td>", text) and re.search(r"<td[^>]*>1\.2e-04</td>", text)
    assert "No figure" in text
    assert not (tmp_path / "thigh_pa_tertiles.png").exists()


def test_folder_without_results(tmp_path: Path) -> None:
    text = write_analysis_report(tmp_path).read_text(encoding="utf-8")
    assert "No recipe results" in text


@pytest.mark.parametrize(
    ("p", "text"), [(0.008320858, "8.3e-03"), (0.66, "6.6e-01"), (1.0, "1.0e+00"), (0.0, P_UNDERFLOW)]
)
def test_p_values_have_two_significant_digits(p: float, text: str) -> None:
    assert format_p(p) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.2912994, "0.291"),
        (0.0044766, "0.00448"),
        (-388.3581, "-388"),
        (11108.9, "11,100"),
        (0.0910248, "0.0910"),
        (2.13e-05, "2.13e-05"),
        (float("inf"), "∞"),
    ],
)
def test_estimates_have_three_significant_digits(value: float, text: str) -> None:
    assert format_estimate(value) == text
