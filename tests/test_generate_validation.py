"""--reconstruct validation on hand-written outputs (no model): only answers equal to the reference are kept."""

from __future__ import annotations

from metakl.stages.generate import GenerateConfig, _validate, make_response, reference_solution


def test_reconstructions_are_validated_against_the_reference():
    rows = [
        {"domain": "math", "reference": "\\frac{1}{2}", "choices": [], "errors": []},
        {"domain": "general", "reference": "B", "choices": ["red", "blue", "green"], "errors": []},
    ]
    outputs = [
        (0, "<think>Half of one is 0.5.</think>So the result is \\boxed{0.5}."),    # equivalent: kept
        (0, "<think>...</think>The answer is \\boxed{\\dfrac{2}{4}}"),               # equivalent: kept
        (0, "<think>...</think>The answer is \\boxed{2}"),                          # wrong: rejected
        (0, "<think>...</think>The answer is 1/2"),                                 # no box: rejected
        (0, "<think>\\boxed{1/2} in the reasoning only</think>I am not sure."),     # box only in reasoning
        (1, "<think>The sky is blue.</think>The answer is \\boxed{B}"),             # kept
        (1, "<think>...</think>\\boxed{C}"),                                        # rejected
    ]
    new = [(ri, make_response(text, "math" if ri == 0 else "choice", 3 if ri else None, "m", "stop")) for ri, text in outputs]
    ok, rejected = _validate(rows, new, GenerateConfig(reconstruct=True))
    assert ok == [True, True, False, False, False, True, False] and rejected == 4
    kinds = [e["kind"] for r in rows for e in r["errors"]]
    assert kinds == ["reconstruct_mismatch"] * 4
    assert "does not equal the reference '\\\\frac{1}{2}'" in rows[0]["errors"][0]["message"]


def test_reference_solution_from_meta():
    keys = GenerateConfig().solution_keys
    assert reference_solution({"meta": '{"solution": "S", "answer": "A"}'}, keys) == "S"
    assert reference_solution({"meta": '{"answer": "#### 5"}'}, keys) == "#### 5"
    assert reference_solution({"meta": '{"level": "3"}'}, keys) is None
    assert reference_solution({"meta": "not json"}, keys) is None
