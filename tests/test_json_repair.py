"""metakl.llm.json_repair: the tolerant JSON extraction annotate and merge share (knowledge checks live elsewhere)."""

from __future__ import annotations

import pytest

from metakl.llm.json_repair import INVALID_JSON, NO_JSON, JSONRepairError, extract_json


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": ["x", "y"]}', {"a": ["x", "y"]}),
        ('Here:\n```json\n{"a": 1}\n```\nDone.', {"a": 1}),  # fenced, prose around it
        ("{'a': 'it''s', 'b': True, 'c': None}", None),  # only checked to parse below
        ('{"a": [1, 2,], "b": "x",}', {"a": [1, 2], "b": "x"}),  # trailing commas
        ("{merged_name: [\"x\"]}", {"merged_name": ["x"]}),  # bare key
        ('{"a": "one", "b": "cut off', {"a": "one", "b": "cut off"}),  # max_tokens reached inside a string
        ("{\u201ca\u201d: \u201cb\u201d}", {"a": "b"}),  # smart quotes
    ],
)
def test_extracts_and_repairs(text, expected):
    values = extract_json(text)
    assert values and isinstance(values[0], (dict, list))
    if expected is not None:
        assert values[0] == expected


def test_merge_answer_shape_is_not_its_business():
    # A list is returned as found: whether it is the right shape is the caller's check.
    assert extract_json('["a", "b"]')[0] == ["a", "b"]


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_answer(text):
    with pytest.raises(JSONRepairError) as info:
        extract_json(text)
    assert info.value.kind == NO_JSON and "empty" in info.value.message


def test_no_json_names_the_expected_shape_when_given():
    with pytest.raises(JSONRepairError) as info:
        extract_json("I think the skills are algebra and counting.", example='{"skill_name": "reason"}')
    assert info.value.kind == NO_JSON
    assert info.value.message == 'no JSON object found in the answer; reply with a JSON object {"skill_name": "reason"}'
    with pytest.raises(JSONRepairError) as info:
        extract_json("no braces here")
    assert info.value.message == "no JSON object found in the answer; reply with a JSON object"


def test_malformed_json_is_invalid_json():
    with pytest.raises(JSONRepairError) as info:
        extract_json("{:::}")
    assert info.value.kind == INVALID_JSON and info.value.message.startswith("the JSON is malformed: ")
