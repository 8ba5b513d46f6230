"""The tolerant knowledge parser and validator on a corpus of messy answers with expected results."""

from __future__ import annotations

import json

import jsonschema
import pytest

from metakl.stages.knowledge_parse import (
    BAD_NAME,
    EMPTY_REASON,
    INVALID_JSON,
    NO_JSON,
    NO_SKILLS,
    TOO_MANY_SKILLS,
    WRONG_SHAPE,
    KnowledgeError,
    knowledge_json_schema,
    normalize_skill_name,
    parse_knowledge,
)

FRAC = [("adding_fractions", "The sum needs a common denominator.")]
TWO = [("adding_fractions", "Sum the parts."), ("simplifying_fractions", "Reduce the result.")]

# (answer text, expected [(skill, reason), ...] or an error kind)
CORPUS = [
    # clean JSON
    ('{"adding_fractions": "The sum needs a common denominator."}', FRAC),
    # code fence with language tag and prose around it
    ('Sure! Here are the skills:\n```json\n{"adding_fractions": "The sum needs a common denominator."}\n```\nHope this helps.', FRAC),
    # fence without a language tag
    ('```\n{"adding_fractions": "Sum the parts.", "simplifying_fractions": "Reduce the result."}\n```', TWO),
    # prose before and after, no fence
    ('The knowledge needed is {"adding_fractions": "The sum needs a common denominator."} as shown.', FRAC),
    # single quotes (Python dict)
    ("{'adding_fractions': 'Sum the parts.', 'simplifying_fractions': 'Reduce the result.'}", TWO),
    # single quotes with an apostrophe inside a reason
    ("{'adding_fractions': 'You can't add without a common denominator.'}", [("adding_fractions", "You can't add without a common denominator.")]),
    # trailing commas in object and list
    ('{"adding_fractions": "Sum the parts.", "simplifying_fractions": "Reduce the result.",}', TWO),
    ('[{"skill": "adding_fractions", "reason": "Sum the parts."}, {"skill": "simplifying_fractions", "reason": "Reduce the result."},]', TWO),
    # a list of records instead of an object, with synonyms for the keys
    ('[{"name": "Adding Fractions", "description": "Sum the parts."}, {"skill_name": "simplifying-fractions", "why": "Reduce the result."}]', TWO),
    # a list of single-key objects
    ('[{"adding_fractions": "Sum the parts."}, {"simplifying_fractions": "Reduce the result."}]', TWO),
    # a list of [name, reason] pairs
    ('[["adding_fractions", "Sum the parts."], ["simplifying_fractions", "Reduce the result."]]', TWO),
    # a wrapper object
    ('{"skills": {"adding_fractions": "Sum the parts.", "simplifying_fractions": "Reduce the result."}}', TWO),
    ('{"knowledge": [{"skill": "adding_fractions", "reason": "Sum the parts."}, {"skill": "simplifying_fractions", "reason": "Reduce the result."}]}', TWO),
    # a single record
    ('{"skill": "adding_fractions", "reason": "The sum needs a common denominator."}', FRAC),
    # names in other cases are normalized to lower snake case
    ('{"AddingFractions": "Sum the parts.", "Simplifying Fractions": "Reduce the result."}', TWO),
    ('{"L\'Hôpital\'s Rule": "The limit is 0/0."}', [("lhopitals_rule", "The limit is 0/0.")]),
    # duplicates after normalization keep the first
    ('{"adding_fractions": "Sum the parts.", "Adding Fractions": "Again.", "simplifying_fractions": "Reduce the result."}', TWO),
    # smart quotes
    ("{\u201cadding_fractions\u201d: \u201cThe sum needs a common denominator.\u201d}", FRAC),
    # unquoted keys
    ('{adding_fractions: "Sum the parts.", simplifying_fractions: "Reduce the result."}', TWO),
    # cut off by max_tokens inside a value: the truncated reason is kept
    ('{"adding_fractions": "Sum the parts.", "simplifying_fractions": "Reduce the res', [("adding_fractions", "Sum the parts."), ("simplifying_fractions", "Reduce the res")]),
    # cut off inside a key: the dangling key is dropped
    ('{"adding_fractions": "The sum needs a common denominator.", "simpl', FRAC),
    # cut off after a colon
    ('```json\n{"adding_fractions": "The sum needs a common denominator.", "simplifying_fractions":', FRAC),
    # reasons as a nested record or a list of sentences
    ('{"adding_fractions": {"reason": "Sum the parts."}, "simplifying_fractions": ["Reduce the result."]}', TWO),
    # numbers as reasons are accepted as text
    ('{"counting_principle": 3}', [("counting_principle", "3")]),
    # brackets in the prose before the answer
    ('Using [1] and the rule {a/b + c/d}, the answer is {"adding_fractions": "The sum needs a common denominator."}', FRAC),
    # errors ---------------------------------------------------------------
    ("", NO_JSON),
    ("I think you need to add fractions.", NO_JSON),
    ('{"adding_fractions" "Sum the parts" ::: }}}', INVALID_JSON),
    ("{}", NO_SKILLS),
    ("[]", NO_SKILLS),
    ('{"adding_fractions": ""}', EMPTY_REASON),
    ('{"adding_fractions": "   "}', EMPTY_REASON),
    ('["adding_fractions", "simplifying_fractions"]', EMPTY_REASON),
    ('{"skill_name": "The question is about fractions."}', BAD_NAME),
    ('{"???": "no name"}', BAD_NAME),
    ('{"123": "only digits"}', BAD_NAME),
    ('{"adding_fractions": {"steps": [1, 2]}}', WRONG_SHAPE),
    ('"just a string"', NO_JSON),
    ('{"a_1": "r", "a_2": "r", "a_3": "r", "a_4": "r", "a_5": "r"}', TOO_MANY_SKILLS),
]


@pytest.mark.parametrize("text,expected", CORPUS, ids=[f"corpus{i}" for i in range(len(CORPUS))])
def test_corpus(text, expected):
    if isinstance(expected, str):
        with pytest.raises(KnowledgeError) as info:
            parse_knowledge(text, max_skills=4)
        assert info.value.kind == expected, info.value.message
        assert info.value.message  # fed back to the model: must say something
    else:
        got = parse_knowledge(text, max_skills=4)
        assert [(k["skill"], k["reason"]) for k in got] == expected


def test_max_skills_is_configurable():
    text = '{"a_1": "r", "a_2": "r", "a_3": "r"}'
    assert len(parse_knowledge(text, max_skills=3)) == 3
    with pytest.raises(KnowledgeError) as info:
        parse_knowledge(text, max_skills=2)
    assert info.value.kind == TOO_MANY_SKILLS and "at most 2" in info.value.message


def test_name_too_long():
    with pytest.raises(KnowledgeError) as info:
        parse_knowledge('{"a_b_c_d_e_f": "r"}', max_name_words=5)
    assert info.value.kind == BAD_NAME


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Adding Fractions", "adding_fractions"),
        ("addingFractions", "adding_fractions"),
        ("adding-fractions", "adding_fractions"),
        ("  __adding__fractions__ ", "adding_fractions"),
        ("Pythagorean theorem (right triangles)", "pythagorean_theorem_right_triangles"),
        ("Bayes' theorem", "bayes_theorem"),
        ("crème brûlée", "creme_brulee"),
        ("GCD/LCM", "gcd_lcm"),
    ],
)
def test_normalize_skill_name(raw, expected):
    assert normalize_skill_name(raw) == expected


def test_schema_accepts_valid_and_rejects_invalid():
    schema = knowledge_json_schema(max_skills=3)
    jsonschema.validate({"adding_fractions": "Sum the parts."}, schema)
    for bad in ({}, {"Adding Fractions": "x y z"}, {"adding_fractions": ""}, {"a_1": "abc", "a_2": "abc", "a_3": "abc", "a_4": "abc"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    # Whatever the schema accepts, the validator accepts too.
    good = {"adding_fractions": "Sum the parts.", "simplifying_fractions": "Reduce it."}
    jsonschema.validate(good, schema)
    assert len(parse_knowledge(json.dumps(good), max_skills=3)) == 2
