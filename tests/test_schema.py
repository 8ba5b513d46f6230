"""The row schema: features, ids, normalization, validation."""

from __future__ import annotations

import hashlib

from datasets import Dataset

from metakl.schema import (
    CORE_FEATURES,
    DOMAINS,
    SAFETY_BEHAVIOURS,
    STAGE_FEATURES,
    choice_letter,
    dedup_key,
    describe_problem,
    error,
    features,
    make_id,
    normalize_text,
    validate_row,
)


def _row(**kw):
    row = {"question": "What is 2+2?", "domain": "math", "reference": "4", "choices": []}
    row.update(kw)
    return row


def test_features_core_and_stage_columns():
    f = features("responses", "units")
    assert list(f)[: len(CORE_FEATURES)] == list(CORE_FEATURES)
    assert "responses" in f and "units" in f and "knowledge" not in f
    assert set(STAGE_FEATURES) >= {"responses", "knowledge", "units", "proficiency", "cluster", "duplicate_of"}
    ds = Dataset.from_dict(
        {"id": ["a"], "source": ["s"], "domain": ["math"], "question": ["q"], "reference": ["1"], "choices": [[]],
         "meta": ["{}"], "errors": [[error("ingest", "bad", "msg")]]},
        features=features(),
    )
    assert ds[0]["errors"] == [{"stage": "ingest", "kind": "bad", "message": "msg"}]


def test_normalize_text_nfkc_case_whitespace():
    assert normalize_text("  Ｈello\u00a0\tWORLD\n") == "hello world"
    assert normalize_text("ﬁne") == "fine"  # NFKC ligature


def test_make_id_is_sha256_of_source_and_normalized_question():
    expected = hashlib.sha256("gsm8k\x1fwhat is 2+2?".encode()).hexdigest()[:16]
    assert make_id("What  is 2+2? ", "gsm8k") == expected
    assert make_id("what is 2+2?", "gsm8k") == expected
    assert make_id("what is 2+2?", "math") != expected


def test_make_id_includes_choices_when_given():
    a = make_id("Which is true?", "mmlu", ["x", "y"])
    b = make_id("Which is true?", "mmlu", ["x", "z"])
    assert a != b and a != make_id("Which is true?", "mmlu")
    assert a == make_id("which  is TRUE?", "mmlu", ["X", "y "])
    assert dedup_key("Q ", ["A", "b"]) == dedup_key("q", ["a", "B"]) != dedup_key("q")


def test_choice_letter():
    assert [choice_letter(i) for i in range(4)] == ["A", "B", "C", "D"]


def test_validate_row_accepts_good_rows():
    assert validate_row(_row()) == []
    assert validate_row(_row(domain="general", choices=["a", "b", "c"], reference="C")) == []
    assert validate_row(_row(domain="general", reference="yes")) == []
    for behaviour in SAFETY_BEHAVIOURS:
        assert validate_row(_row(domain="safety", reference=behaviour)) == []
    assert DOMAINS == ("math", "general", "safety")


def test_validate_row_problems_name_field_expected_actual():
    assert validate_row(_row(question="  ")) == [("question", "a non-empty string", "'  '")]
    assert validate_row(_row(domain="poetry"))[0][:2] == ("domain", "one of math, general, safety")
    assert validate_row(_row(domain="safety", reference="maybe"))[0] == (
        "reference", "'refuse' or 'comply' for a safety prompt", "'maybe'")
    assert validate_row(_row(domain="general", choices=["a", "b"], reference="C"))[0] == (
        "reference", "a choice letter in A..B", "'C'")
    assert validate_row(_row(reference=""))[0][0] == "reference"
    assert validate_row(_row(domain="general", choices=["a", ""], reference="A"))[0][0] == "choices"
    assert validate_row(_row(domain="general", choices=["only"], reference="A"))[0] == (
        "choices", "between 2 and 26 options", "1 options")


def test_describe_problem():
    assert describe_problem("f.jsonl line 3", "answer", "yes or no", "'maybe'") == (
        "f.jsonl line 3: field 'answer': expected yes or no, got 'maybe'")
