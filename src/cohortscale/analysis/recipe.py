"""Recipes: a short TOML file per study that says which analyses to run on the analysis table.

A recipe names the study, the visit and multi-echo field of its IDPs, new columns computed from the table
(``[transforms]``: pandas expressions such as ``"log(vbm_iron)"`` or ``"tmv_cm3 / height_m2"``) and a list
of ``[[steps]]``, each with a ``name``, a ``kind`` (:data:`cohortscale.analysis.run.STEP_KINDS`) and that
kind's options. The packaged recipes (``vbm``, ``thigh``, ``spine-age``, ``phewas``) live beside this
module; a user's recipe is any file of the same shape.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The packaged recipes in the order of their studies (STUDIES.md §1, §2, §3, §5).
STUDY_ORDER = ("vbm", "thigh", "spine-age", "phewas")
#: Folder of the packaged recipes.
RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class Step:
    """One analysis of a recipe: its name (the result file's), kind and options."""

    name: str
    kind: str
    title: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A study's analyses.

    Attributes
    ----------
    name, title : str
    visit : int
        Visit instance whose IDPs and phenotypes are analysed (2: first imaging visit).
    field : int
        Multi-echo field of the slice IDPs.
    transforms : dict of str to str
        New column → pandas expression on the analysis table, evaluated in order.
    steps : tuple of Step
    """

    name: str
    title: str
    visit: int = 2
    field: int = 20254
    transforms: dict[str, str] = dataclasses.field(default_factory=dict)
    steps: tuple[Step, ...] = ()


def packaged_recipes() -> list[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A packaged recipe by name (``"vbm"``) or a recipe file.

    Raises
    ------
    ValueError
        Unknown name, or a file missing ``name``/``steps`` or with a step without ``name``/``kind``.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ValueError(f"no packaged recipe {name_or_path!r}; there are {packaged_recipes()}")
    raw = tomllib.loads(path.read_text())
    steps = []
    for number, entry in enumerate(raw.get("steps", []), start=1):
        entry = dict(entry)
        if "name" not in entry or "kind" not in entry:
            raise ValueError(f"{path}: step {number} needs a name and a kind")
        steps.append(Step(entry.pop("name"), entry.pop("kind"), entry.pop("title", ""), entry))
    if "name" not in raw or not steps:
        raise ValueError(f"{path}: a recipe needs a name and at least one [[steps]] entry")
    return Recipe(
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        visit=int(raw.get("visit", 2)),
        field=int(raw.get("field", 20254)),
        transforms=dict(raw.get("transforms", {})),
        steps=tuple(steps),
    )
