"""Study analyses: the analysis table (IDPs + derived phenotypes), recipes and their runner."""

from cohortscale.analysis.recipe import Recipe, Step, load_recipe, packaged_recipes
from cohortscale.analysis.run import run_recipe, run_recipes
from cohortscale.analysis.table import analysis_table, load_analysis_table, read_idps

__all__ = [
    "Recipe",
    "Step",
    "analysis_table",
    "load_analysis_table",
    "load_recipe",
    "packaged_recipes",
    "read_idps",
    "run_recipe",
    "run_recipes",
]
