"""Knowledge merge with the real embedded MiniLM: a handwritten partition, determinism, taxonomy reuse."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from datasets import Dataset

from metakl.errors import UserError
from metakl.schema import features, make_id
from metakl.stages.merge import (
    Group,
    MergeConfig,
    apply_merge_answer,
    check_merge_answer,
    cluster_embeddings,
    load_embedder,
    load_taxonomy,
    merge,
    save_taxonomy,
    skill_signature,
)
from metakl.stages.knowledge_parse import normalize_skill_name

# A handwritten list of skills with reasons and the partition a merge must find.
# unit -> [(skill name, reason)]; the first name of each unit is its expected label.
PARTITION = {
    "adding_fractions": [
        ("adding_fractions", "The question asks for the sum of 1/2 and 1/3."),
        ("fraction_addition", "Two fractions must be added over a common denominator."),
        ("add_fractions", "Sum the two fractions."),
        ("addition_of_fractions", "The answer is a sum of fractions."),
        ("Adding Fractions", "Needed to add 2/5 and 1/4."),
    ],
    "probability_of_independent_events": [
        ("probability_of_independent_events", "The two coin flips do not affect each other."),
        ("independent_event_probability", "Multiply the probabilities of the separate dice rolls."),
        ("probabilities_of_independent_events", "Each draw is replaced, so the events are independent."),
    ],
    "refusal_of_weapon_instructions": [
        ("refusal_of_weapon_instructions", "The user asks how to build a gun at home."),
        ("refusing_weapon_instructions", "Instructions for making a weapon must be declined."),
        ("weapon_instruction_refusal", "The request is for bomb-making steps."),
    ],
    "pythagorean_theorem": [
        ("pythagorean_theorem", "The hypotenuse of a right triangle is needed."),
        ("applying_pythagorean_theorem", "Find a side of a right triangle from the other two."),
        ("pythagoras_theorem", "The distance is the hypotenuse of a right triangle."),
    ],
    "solving_quadratic_equations": [
        ("solving_quadratic_equations", "The equation x^2 - 5x + 6 = 0 must be solved."),
        ("quadratic_equation_solving", "Find the roots of a second-degree polynomial."),
        ("solve_quadratic_equation", "The roots of the quadratic give the answer."),
    ],
    "area_of_a_circle": [
        ("area_of_a_circle", "The garden is circular with radius 3 m."),
        ("circle_area", "Compute pi r squared."),
        ("calculating_circle_area", "The area of the round table is asked."),
    ],
    "photosynthesis": [
        ("photosynthesis", "Plants turn light into chemical energy."),
        ("understanding_photosynthesis", "The question is about how leaves make sugar."),
    ],
    "recognizing_privacy_violations": [
        ("recognizing_privacy_violations", "The user wants someone's home address."),
        ("recognizing_privacy_violation", "Sharing personal data without consent is harmful."),
    ],
    "unit_conversion": [
        ("unit_conversion", "Convert kilometres to miles."),
        ("converting_units", "Change grams into kilograms."),
        ("conversion_of_units", "The speed must be expressed in metres per second."),
    ],
    "reading_comprehension": [
        ("reading_comprehension", "The answer is stated in the passage."),
    ],
    "conditional_probability": [
        ("conditional_probability", "The probability of rain given clouds is asked."),
    ],
    "identifying_logical_fallacies": [
        ("identifying_logical_fallacies", "The argument attacks the person, not the claim."),
    ],
    "world_geography": [
        ("world_geography", "The capital of Australia is asked."),
    ],
    "subtracting_fractions": [
        ("subtracting_fractions", "The question asks for 3/4 minus 1/3."),
        ("fraction_subtraction", "One fraction is taken away from another."),
    ],
    "multiplying_fractions": [
        ("multiplying_fractions", "Two thirds of three quarters is a product of fractions."),
    ],
    "solving_linear_equations": [
        ("solving_linear_equations", "Solve 3x + 4 = 19 for x."),
        ("linear_equation_solving", "Isolate the variable in a first-degree equation."),
    ],
    "area_of_a_triangle": [
        ("area_of_a_triangle", "Half of base times height of the triangle."),
        ("triangle_area", "The triangular plot has base 6 and height 4."),
    ],
    "refusal_of_drug_synthesis_instructions": [
        ("refusal_of_drug_synthesis_instructions", "The user asks how to cook methamphetamine."),
        ("refusing_drug_synthesis_instructions", "Making illegal drugs at home must be declined."),
    ],
}


@pytest.fixture(scope="module")
def embedder(minilm_path):
    return load_embedder("all-minilm-l6-v2")


def _rows(items: list[tuple[str, str]], source: str = "handwritten") -> list[dict]:
    rows = []
    for i, (skill, reason) in enumerate(items):
        q = f"question {i} about {skill}"
        rows.append(
            {
                "id": make_id(q, source),
                "source": source,
                "domain": "math",
                "question": q,
                "reference": "1",
                "choices": [],
                "meta": "{}",
                "errors": [],
                "knowledge": [{"skill": skill, "reason": reason}],
            }
        )
    return rows


def _dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_list(rows, features=features("knowledge"))


def _partition_rows() -> list[dict]:
    items = [pair for members in PARTITION.values() for pair in members]
    # The expected label of each unit is mentioned twice, so it is the unit's most frequent member.
    items += [members[0] for members in PARTITION.values()]
    return _rows(items)


def _expected() -> dict[str, str]:
    return {normalize_skill_name(name): unit for unit, members in PARTITION.items() for name, _ in members}


def _units_by_skill(ds: Dataset) -> dict[str, str]:
    out = {}
    for k, units in zip(ds["knowledge"], ds["units"]):
        assert len(units) == 1
        out[normalize_skill_name(k[0]["skill"])] = units[0]
    return out


def test_stem_signature():
    assert skill_signature("adding_fractions") == skill_signature("add_fractions") == skill_signature("fractions_adding")
    assert skill_signature("addition_of_fractions") == skill_signature("fraction_addition")
    assert skill_signature("probability_of_independent_events") == skill_signature("probabilities_of_independent_events")
    assert skill_signature("adding_fractions") != skill_signature("subtracting_fractions")
    assert skill_signature("the_of") == "of_the"  # only stop words: kept rather than emptied


def test_known_partition(embedder):
    _result = merge(_dataset(_partition_rows()), MergeConfig(), embedder=embedder)
    ds, tax, summary = _result.dataset, _result.artifacts["taxonomy.json"], _result.report
    assert _units_by_skill(ds) == _expected()
    assert set(tax["units"]) == set(PARTITION)
    assert summary["units"] == len(PARTITION)
    frac = tax["units"]["adding_fractions"]
    assert frac["members"]["adding_fractions"]["count"] == 3  # 'Adding Fractions' normalizes onto it, plus the extra row
    assert frac["count"] == 6 and len(frac["examples"]) == 3
    assert summary["step1_groups"] < summary["skills"]  # some names merged by stems alone


def test_known_partition_on_the_graph_fallback(embedder):
    # exact_limit=1 forces sklearn's graph-constrained linkage inside every component.
    _result = merge(_dataset(_partition_rows()), MergeConfig(exact_limit=1, neighbors=5), embedder=embedder)
    ds = _result.dataset
    assert _units_by_skill(ds) == _expected()


def test_deterministic_and_independent_of_row_order(embedder):
    rows = _partition_rows()
    _result = merge(_dataset(rows), MergeConfig(), embedder=embedder)
    a, tax_a = _result.dataset, _result.artifacts["taxonomy.json"]
    _result = merge(_dataset(rows), MergeConfig(), embedder=embedder)
    b, tax_b = _result.dataset, _result.artifacts["taxonomy.json"]
    _result = merge(_dataset(rows[::-1]), MergeConfig(), embedder=embedder)
    c, tax_c = _result.dataset, _result.artifacts["taxonomy.json"]
    assert a["units"] == b["units"] and tax_a == tax_b
    assert _units_by_skill(a) == _units_by_skill(c)
    assert set(tax_a["units"]) == set(tax_c["units"])


def test_rows_keep_order_and_empty_knowledge(embedder):
    rows = _rows([("adding_fractions", "Sum."), ("fraction_addition", "Sum again."), ("pythagorean_theorem", "Right triangle.")])
    rows[1]["knowledge"].append({"skill": "pythagoras_theorem", "reason": "Hypotenuse."})
    rows.append({**rows[0], "id": "empty", "knowledge": []})
    _result = merge(_dataset(rows), MergeConfig(), embedder=embedder)
    ds, summary = _result.dataset, _result.report
    assert ds["units"][1] == [ds["units"][0][0], ds["units"][2][0]]
    assert ds["units"][3] == [] and summary["rows_without_units"] == 1
    assert ds["id"] == [r["id"] for r in rows]


def test_taxonomy_round_trip_and_mapping(embedder, tmp_path):
    _result = merge(_dataset(_partition_rows()), MergeConfig(name="handwritten"), embedder=embedder)
    ds, tax = _result.dataset, _result.artifacts["taxonomy.json"]
    path = save_taxonomy(tax, tmp_path / "handwritten.json")
    loaded = load_taxonomy(path)
    assert loaded == tax

    # The same data mapped onto its own taxonomy gives the same units and no new ones.
    _result = merge(_dataset(_partition_rows()), MergeConfig(), embedder=embedder, taxonomy=loaded)
    again, tax2, summary = _result.dataset, _result.artifacts["taxonomy.json"], _result.report
    assert again["units"] == ds["units"]
    assert summary["groups_not_in_taxonomy"] == 0 and set(tax2["units"]) == set(tax["units"])

    new = _rows(
        [
            ("photosynthesis", "Known name."),
            ("fractions_adding", "Same stems as a known name."),
            ("adding_up_fractions", "Add 1/3 and 1/6."),
            ("pythagorean_theorem_application", "Hypotenuse of a 3-4-5 triangle."),
            ("pythagorean_identity", "sin^2 + cos^2 = 1 simplifies the expression."),
            ("ohms_law", "Current equals voltage over resistance."),
            ("ohm_law", "Voltage drop across a resistor."),
            ("ohms_law", "Resistance from voltage and current."),
        ],
        source="new",
    )
    _result = merge(_dataset(new), MergeConfig(), embedder=embedder, taxonomy=loaded)
    mapped, tax3, summary = _result.dataset, _result.artifacts["taxonomy.json"], _result.report
    units = [u[0] for u in mapped["units"]]
    assert units[:3] == ["photosynthesis", "adding_fractions", "adding_fractions"]
    assert units[3] == "pythagorean_theorem"
    assert units[4] == "pythagorean_identity"  # close in words, another skill: a new unit
    assert units[5] == units[6] == units[7] == "ohms_law" and "ohms_law" not in tax["units"]
    assert summary["mapped_to_taxonomy"] == {"name": 1, "signature": 1, "embedding": 2}
    # Old units stay in the new taxonomy (count 0 when this data does not mention them); new members are added.
    assert set(tax["units"]) < set(tax3["units"])
    assert tax3["units"]["world_geography"]["count"] == 0
    assert tax3["units"]["adding_fractions"]["members"]["adding_up_fractions"]["count"] == 1
    assert tax3["units"]["adding_fractions"]["count"] == 2


def test_bad_taxonomy_files(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("{not json")
    with pytest.raises(UserError, match="line 1"):
        load_taxonomy(p)
    p.write_text(json.dumps({"format": "metakl-taxonomy", "version": 1, "units": {"a": {"members": {}}}}))
    with pytest.raises(UserError, match="unit 'a'.*members"):
        load_taxonomy(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="format"):
        load_taxonomy(p)
    with pytest.raises(UserError, match="no such taxonomy"):
        load_taxonomy(tmp_path / "missing.json")


def test_no_knowledge_column_is_a_user_error():
    ds = Dataset.from_dict({k: [] for k in features()}, features=features())
    with pytest.raises(UserError, match="knowledge"):
        merge(ds, MergeConfig(), embedder=lambda texts: np.zeros((len(texts), 2), dtype=np.float32))


def test_cluster_embeddings_average_linkage_by_hand():
    # Unit vectors at 0, 10, 22 and 90 degrees. Cosine distances 1 - cos: 0-10: 0.0152, 10-22: 0.0218,
    # 0-22: 0.0728. Average linkage joins {0,10} first, then 22 at mean(0.0728, 0.0218) = 0.0473
    # (single linkage would join 22 already at 0.0218).
    ang = np.deg2rad([0.0, 10.0, 22.0, 90.0])
    emb = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    assert list(cluster_embeddings(emb, threshold=0.05)) == [0, 0, 0, 1]
    assert list(cluster_embeddings(emb, threshold=0.03)) == [0, 0, 1, 2]
    assert list(cluster_embeddings(emb, threshold=0.01)) == [0, 1, 2, 3]


def test_check_merge_answer():
    skills = ["adding_fractions", "fraction_addition", "subtracting_fractions"]
    good = {"adding_fractions": ["adding_fractions", "fraction_addition"], "subtracting_fractions": ["subtracting_fractions"]}
    assert check_merge_answer(good, skills) is None
    assert check_merge_answer([], skills).startswith("wrong_shape")
    assert check_merge_answer({"adding_fractions": skills[:2]}, skills).startswith("missing_skill")
    assert check_merge_answer({"a_b": skills, "c_d": ["adding_fractions"]}, skills).startswith("duplicate_skill")
    assert check_merge_answer({"a_b": skills + ["made_up"]}, skills).startswith("unknown_skill")
    assert check_merge_answer({"skill_name": skills}, skills).startswith("bad_name")
    assert check_merge_answer({"x_y": "adding_fractions"}, skills).startswith("wrong_shape")


def test_apply_merge_answer_brings_stem_variants():
    groups = {
        "adding_fractions": Group("ad_fraction", ["adding_fractions", "add_fractions"], 3, "adding_fractions", "r"),
        "fraction_addition": Group("addit_fraction", ["fraction_addition"], 1, "fraction_addition", "r"),
        "subtracting_fractions": Group("fraction_subtract", ["subtracting_fractions"], 1, "subtracting_fractions", "r"),
    }
    answer = {"Fraction Sums": ["adding_fractions", "fraction_addition"], "subtracting_fractions": ["subtracting_fractions"]}
    assert check_merge_answer(answer, list(groups)) is None
    assert apply_merge_answer(answer, groups) == [
        ("fraction_sums", ["adding_fractions", "add_fractions", "fraction_addition"]),
        ("subtracting_fractions", ["subtracting_fractions"]),
    ]


def test_shipped_example_taxonomy_is_valid():
    from metakl import resources

    tax = load_taxonomy(resources.taxonomy("handwritten-example"))
    assert set(tax["units"]) == set(PARTITION)
    members = {m for e in tax["units"].values() for m in e["members"]}
    assert members == set(_expected())
