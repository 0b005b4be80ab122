"""Phenotype tables: the three export layouts read to one canonical frame, and the value rules.

The round trip writes one synthetic ukbconv table (``cohortscale.synth``) in the R ``.tab`` and research
analysis platform (RAP) layouts with converters defined here, and checks that all three files read to
identical canonical frames. The value rules (special codes, visit instances, multi-array fields) are
checked on hand-made rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortscale.pheno.read import Layout, Phenotypes, detect_layout, parse_phenotypes, read_phenotypes
from cohortscale.pheno.values import (
    array_values,
    choose_instance,
    field_instances,
    field_value,
    has_code,
    long_values,
    mask_special_codes,
    visit_date,
)
from cohortscale.synth import simulate_population, to_ukbconv

UKBCONV_COLUMN = "{field}-{instance}.{array}"


def table(columns: dict[tuple[int, int, int], list], eids: list[int] | None = None) -> Phenotypes:
    """Canonical table from hand-made ``(field, instance, array) → values`` columns."""
    n = len(next(iter(columns.values())))
    frame = pd.DataFrame(
        {
            "eid": eids or list(range(1, n + 1)),
            **{UKBCONV_COLUMN.format(field=f, instance=i, array=a): v for (f, i, a), v in columns.items()},
        }
    )
    return parse_phenotypes(frame)


# -- converters of a ukbconv CSV (read as text) to the other layouts ---------------------------------------


def _key(column: str) -> tuple[int, int, int]:
    field, rest = column.split("-")
    instance, array = rest.split(".")
    return int(field), int(instance), int(array)


def to_r_tab(ukbconv: pd.DataFrame) -> pd.DataFrame:
    """ukbconv columns renamed ``f.eid`` / ``f.<field>.<instance>.<array>``."""
    names = {c: "f.{}.{}.{}".format(*_key(c)) for c in ukbconv.columns if c != "eid"}
    return ukbconv.rename(columns={"eid": "f.eid", **names})


def _rap_list(cells: pd.DataFrame, style: str) -> pd.Series:
    """One RAP multi-valued column from array columns (``json``: ``["a","b"]``; ``pipe``: ``a|b``)."""

    def join(row: pd.Series) -> str | None:
        items = [v for v in row if isinstance(v, str)]
        if not items:
            return None
        return json.dumps(items) if style == "json" else "|".join(items)

    return cells.apply(join, axis=1)


def to_rap(ukbconv: pd.DataFrame, list_fields: dict[int, str]) -> pd.DataFrame:
    """RAP layout: ``p<field>`` with ``_i`` when the field has instances other than 0 and ``_a`` when it
    has several arrays; fields in ``list_fields`` become one multi-valued column per instance."""
    keys = {c: _key(c) for c in ukbconv.columns if c != "eid"}
    out: dict[str, pd.Series] = {"participant.eid": ukbconv["eid"]}
    for column, (field, instance, array) in keys.items():
        same_field = [k for k in keys.values() if k[0] == field]
        name = f"participant.p{field}"
        if any(k[1] for k in same_field):
            name += f"_i{instance}"
        if field in list_fields:
            cells = ukbconv[[c for c, k in keys.items() if k[:2] == (field, instance)]]
            out.setdefault(name, _rap_list(cells, list_fields[field]))
            continue
        if any(k[2] for k in same_field):
            name += f"_a{array}"
        out[name] = ukbconv[column]
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def ukbconv_frame() -> pd.DataFrame:
    """A 300-participant synthetic phenotype table (typed values, ukbconv columns)."""
    return to_ukbconv(simulate_population(300, seed=5), seed=5)


@pytest.fixture(scope="module")
def ukbconv_csv(ukbconv_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pheno") / "phenotypes.csv"
    ukbconv_frame.to_csv(path, index=False)
    return path


def test_three_layouts_read_to_identical_canonical_frames(ukbconv_csv: Path, tmp_path: Path) -> None:
    text = pd.read_csv(ukbconv_csv, dtype=str, keep_default_na=False, na_values=[""])
    r_path = tmp_path / "phenotypes.tab"
    to_r_tab(text).to_csv(r_path, sep="\t", index=False, na_rep="NA")
    rap_path = tmp_path / "rap.csv"
    to_rap(text, {41270: "json", 20002: "pipe"}).to_csv(rap_path, index=False)

    reference = read_phenotypes(ukbconv_csv)
    assert reference.columns.names == ["field", "instance", "array"]
    assert reference.index.name == "eid" and reference.index.is_monotonic_increasing
    assert (41270, 0, 1) in reference.columns and (20002, 2, 1) in reference.columns  # lists had ≥ 2 items
    for path in (r_path, rap_path):
        pd.testing.assert_frame_equal(read_phenotypes(path), reference)
    rap_header = pd.read_csv(rap_path, nrows=0).columns
    assert "participant.p41270" in rap_header and "participant.p20002_i2" in rap_header
    assert "participant.p31" in rap_header and "participant.p41280_a0" in rap_header


def test_typed_frame_and_file_agree_and_dtypes_follow_content(
    ukbconv_frame: pd.DataFrame, ukbconv_csv: Path
) -> None:
    from_frame = parse_phenotypes(ukbconv_frame)
    from_file = read_phenotypes(ukbconv_csv)
    pd.testing.assert_frame_equal(from_frame, from_file)
    assert from_file[(21003, 2, 0)].dtype == "float64"
    assert from_file[(53, 2, 0)].dtype == "datetime64[ns]"
    assert from_file[(41270, 0, 0)].dtype == "string"


def test_fields_selects_columns_and_missing_fields_raise(ukbconv_csv: Path) -> None:
    chosen = read_phenotypes(ukbconv_csv, fields=[31, 20002])
    assert set(chosen.columns.get_level_values("field")) == {31, 20002}
    with pytest.raises(KeyError, match="99999"):
        read_phenotypes(ukbconv_csv, fields=[31, 99999])


@pytest.mark.parametrize(
    ("columns", "layout"),
    [
        (["eid", "31-0.0", "41270-0.12"], Layout.UKBCONV),
        (["f.eid", "f.31.0.0", "f.41270.0.12"], Layout.R_TAB),
        (["eid", "p31", "p21003_i2", "p41280_a3", "p20002_i2_a1"], Layout.RAP),
        (["participant.eid", "participant.p31"], Layout.RAP),
    ],
)
def test_detect_layout(columns: list[str], layout: Layout) -> None:
    assert detect_layout(columns) is layout


@pytest.mark.parametrize(
    "columns",
    [
        ["eid", "31-0.0", "p21003_i2"],
        ["id", "31-0.0"],
        ["eid", "31-0.0", "age"],
        ["eid", "f.eid", "f.31.0.0"],
    ],
)
def test_detect_layout_refuses_mixed_or_unknown_headers(columns: list[str]) -> None:
    with pytest.raises(ValueError, match="not a UK Biobank phenotype export"):
        detect_layout(columns)


def test_rap_multi_valued_cells() -> None:
    frame = pd.DataFrame(
        {
            "eid": [1, 2, 3, 4, 5],
            "p41270": ['["E119", "K219"]', "E119|K219|I10", "[]", None, "['M810']"],
            "p20002_i2": ["[1223, 1065]", "1220", None, "1223|1309", "[]"],
        }
    )
    phenos = parse_phenotypes(frame)
    codes = array_values(phenos, 41270, 0)
    assert codes.columns.tolist() == [0, 1, 2]
    assert codes.loc[1].tolist()[:2] == ["E119", "K219"] and pd.isna(codes.loc[1, 2])
    assert codes.loc[2].tolist() == ["E119", "K219", "I10"]
    assert codes.loc[[3, 4]].isna().all().all()
    assert codes.loc[5, 0] == "M810"
    reported = array_values(phenos, 20002, 2)
    assert reported.dtypes.eq("float64").all()
    assert reported.loc[1].tolist() == [1223.0, 1065.0]
    assert reported.loc[4].tolist() == [1223.0, 1309.0]
    assert reported.loc[[3, 5]].isna().all().all()


def test_rap_list_and_explicit_array_of_the_same_field_refused() -> None:
    frame = pd.DataFrame({"eid": [1], "p20002_i2": ["1223|1065"], "p20002_i2_a0": ["1223"]})
    with pytest.raises(ValueError, match="appears twice"):
        parse_phenotypes(frame)


def test_ids_must_be_unique_and_present() -> None:
    with pytest.raises(ValueError, match="duplicated"):
        parse_phenotypes(pd.DataFrame({"eid": [1, 1], "31-0.0": [0, 1]}))
    with pytest.raises(ValueError, match="missing or non-numeric"):
        parse_phenotypes(pd.DataFrame({"eid": [1, None], "31-0.0": [0, 1]}))


def test_text_fields_keep_leading_zeros_na_token_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "icd9.tab"
    path.write_text("\ufefff.eid\tf.41271.0.0\tf.189.0.0\n7\t0389\tNA\n8\tNA\t-3.0\n")
    phenos = read_phenotypes(path)
    assert phenos.loc[7, (41271, 0, 0)] == "0389"
    assert pd.isna(phenos.loc[8, (41271, 0, 0)])
    assert phenos[(189, 0, 0)].tolist()[1] == -3.0 and np.isnan(phenos[(189, 0, 0)].tolist()[0])


# -- values: special codes ------------------------------------------------------------------------------


def test_special_codes_are_missing_in_coded_fields_only() -> None:
    phenos = table(
        {
            (2296, 2, 0): [1, -1, -3, 3, -818, -121],  # falls: categorical
            (189, 0, 0): [-3.0, -1.0, -7.0, -3.5, 2.0, -818.0],  # Townsend index: a measurement
            (99999, 0, 0): [-1, -3, -7, 4, 5, 6],  # a field nobody declared: left alone
        }
    )
    falls = field_value(phenos, 2296, 2)
    assert falls.isna().tolist() == [False, True, True, False, True, True]
    assert field_value(phenos, 189, 0).tolist() == [-3.0, -1.0, -7.0, -3.5, 2.0, -818.0]
    assert field_value(phenos, 99999, 0).tolist() == [-1, -3, -7, 4, 5, 6]


def test_keep_codes_keeps_none_of_the_above() -> None:
    phenos = table({(6164, 2, 0): [-7, -3, 4], (6164, 2, 1): [None, None, 1]})
    assert field_value(phenos, 6164, 2).isna().tolist() == [True, True, False]
    kept = array_values(phenos, 6164, 2, keep_codes=[-7])
    assert kept.loc[1, 0] == -7 and pd.isna(kept.loc[2, 0]) and kept.loc[3].tolist() == [4.0, 1.0]


def test_special_dates_are_missing() -> None:
    phenos = table(
        {(40000, 0, 0): ["1900-01-01", "2021-05-03", None], (53, 2, 0): ["2037-07-07", None, None]}
    )
    deaths = field_value(phenos, 40000, 0)
    assert pd.isna(deaths.iloc[0]) and deaths.iloc[1] == pd.Timestamp("2021-05-03")
    assert visit_date(phenos).isna().all()


def test_mask_special_codes_on_a_plain_series() -> None:
    answers = pd.Series([2.0, -1.0, -7.0])
    assert mask_special_codes(answers, 924).isna().tolist() == [False, True, True]
    assert mask_special_codes(answers, 924, keep_codes=[-7]).isna().tolist() == [False, True, False]
    assert mask_special_codes(answers, 22039).tolist() == [2.0, -1.0, -7.0]


# -- values: instances ----------------------------------------------------------------------------------


def test_choose_instance_rules() -> None:
    phenos = table(
        {
            (31, 0, 0): [0, 1, None],
            (21000, 0, 0): [1001, None, None],
            (21000, 2, 0): [None, 3001, None],
            (46, 0, 0): [30, 31, 32],
            (46, 2, 0): [28, None, None],
        }
    )
    assert choose_instance(phenos, 31, visit=2).tolist()[:2] == [0.0, 1.0]  # baseline-only field
    assert choose_instance(phenos, 21000).tolist()[:2] == [1001.0, 3001.0]  # earliest instance with a value
    grip = choose_instance(phenos, 46)
    assert grip.iloc[0] == 28 and grip.iloc[1:].isna().all()  # no silent fall-back to baseline
    assert choose_instance(phenos, 46, fallback=(0,)).tolist() == [28.0, 31.0, 32.0]
    assert choose_instance(phenos, 46, visit=3).isna().all()  # nobody at the repeat visit
    assert field_instances(phenos, 46) == (0, 2) and field_instances(phenos, 46, up_to=0) == (0,)
    with pytest.raises(KeyError, match="21003"):
        choose_instance(phenos, 21003)


# -- values: multi-array fields -------------------------------------------------------------------------


def test_codes_found_at_any_array_position_and_instance() -> None:
    phenos = table(
        {
            (20002, 2, 0): [1065, None, 1065, None],
            (20002, 2, 1): [1473, None, None, None],
            (20002, 2, 2): [1223, None, None, None],  # a later array position
            (20002, 3, 0): [None, None, 1223, None],  # only at the repeat visit
            (41270, 0, 0): ["K219", "E119", None, "E10"],
        }
    )
    assert has_code(phenos, 20002, [1223]).tolist() == [True, False, True, False]
    assert has_code(phenos, 20002, [1223], field_instances(phenos, 20002, up_to=2)).tolist() == [
        True,
        False,
        False,
        False,
    ]
    assert has_code(phenos, 41270, ["E11"], prefix=True).tolist() == [False, True, False, False]
    assert has_code(phenos, 41270, ["E11"]).tolist() == [False, False, False, False]  # exact without prefix
    long = long_values(phenos, 20002)
    assert long.columns.tolist() == ["eid", "instance", "array", "value"]
    assert long[long["eid"] == 1]["array"].tolist() == [0, 1, 2]
    assert long[long["eid"] == 3][["instance", "value"]].to_numpy().tolist() == [[2, 1065.0], [3, 1223.0]]
    assert long_values(phenos, 20002, [1]).empty
