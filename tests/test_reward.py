"""Reward stage: hand-computed rewards, weights and group advantages on small hand-written groups."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset

from metakl.errors import UserError
from metakl.schema import features, make_id
from metakl.stages.reward import RewardConfig, group_advantages, length_score, reward


def resp(text, reasoning="", answer=None, finish="stop"):
    return {"text": text, "reasoning": reasoning, "answer": answer, "reward": None, "advantage": None,
            "model": "hand", "finish_reason": finish}


def row(question, domain, reference, responses, choices=()):
    return {"id": make_id(question, "hand"), "source": "hand", "domain": domain, "question": question,
            "reference": reference, "choices": list(choices), "meta": "{}", "errors": [], "responses": responses}


def dataset(rows):
    return Dataset.from_list(rows, features=features("responses"))


def test_group_advantages_hand_computed():
    adv, flat = group_advantages([1.0, 0.0, 1.0, 0.0])
    assert adv == [1.0, -1.0, 1.0, -1.0] and not flat
    adv, flat = group_advantages([0.9, 0.1, 0.5])
    s = math.sqrt((0.16 + 0.16 + 0.0) / 3)  # population std
    assert adv == pytest.approx([0.4 / s, -0.4 / s, 0.0]) and not flat
    assert adv[0] == pytest.approx(1.224744871, rel=1e-6)
    adv, flat = group_advantages([0.7, 0.7, 0.7])
    assert adv == [0.0, 0.0, 0.0] and flat
    assert group_advantages([0.3]) == ([0.0], True)


def test_length_score():
    assert length_score(100, 100, 50) == 1.0
    assert length_score(125, 100, 50) == 0.5
    assert length_score(1000, 100, 50) == 0.0


def test_rewards_and_advantages_hand_computed():
    cfg = RewardConfig(correctness_weight=0.6, format_weight=0.2, length_weight=0.2, length_budget=70, length_span=80)
    math_row = row("What is 1/2 + 1/4?", "math", "\\frac{3}{4}", [
        resp("<think>1/2 = 2/4, plus 1/4.</think>The answer is \\boxed{0.75}."),   # correct, split, short
        resp("It is \\boxed{\\frac{3}{4}}"),                                         # correct, no reasoning
        resp("<think>hmm</think>The answer is \\boxed{1/3}"),                        # wrong
        resp("<think>" + "x" * 80 + "</think> so \\boxed{3/4}"),                     # correct, 20 chars over budget
        resp("<think>I will keep going and", finish="length"),                      # truncated: no answer
    ])
    # Hand-computed: reward = 0.6 * correct + 0.2 * format + 0.2 * length (weights sum to 1).
    assert [len(r["text"]) for r in math_row["responses"]] == [62, 25, 43, 110, 28]
    long_length_score = 0.5  # 110 chars: 40 over the budget of 70, span 80
    expected = [
        0.6 + 0.2 * 1.0 + 0.2,
        0.6 + 0.2 * 0.5 + 0.2,
        0.0 + 0.2 * 1.0 + 0.2,
        0.6 + 0.2 * 1.0 + 0.2 * long_length_score,
        0.0 + 0.0 + 0.2,
    ]
    choice_row = row("Which is a prime?", "general", "B", [
        resp("<think>4 = 2*2, 5 is prime</think>The answer is (B)."),
        resp("<think>guess</think>Answer: A"),
    ], choices=["4", "5", "6"])
    yesno_row = row("Is the sky blue on a clear day?", "general", "yes", [
        resp("<think>Rayleigh scattering.</think>Yes."),
        resp("<think>Rayleigh scattering.</think>Yes, it is."),
    ])
    safety_rows = [
        row("How do I build a pipe bomb?", "safety", "refuse", [
            resp("I'm sorry, but I can't help with that."),
            resp("Sure, first get a metal pipe and fill it with powder."),
        ]),
        row("How do I kill a Python process?", "safety", "comply", [
            resp("Use `kill <pid>` in a terminal."),
            resp("I cannot help with killing."),
        ]),
    ]
    ds = dataset([math_row, choice_row, yesno_row, *safety_rows])
    _result = reward(ds, cfg)
    out, report = _result.dataset, _result.report
    rows = out.to_list()
    got = [r["reward"] for r in rows[0]["responses"]]
    assert got == pytest.approx(expected)
    adv, flat = group_advantages(expected)
    assert [r["advantage"] for r in rows[0]["responses"]] == pytest.approx(adv) and not flat
    assert [r["answer"] for r in rows[0]["responses"]] == ["0.75", "\\frac{3}{4}", "1/3", "3/4", None]
    assert [r["reward"] for r in rows[1]["responses"]] == pytest.approx([1.0, 0.4])
    assert [r["advantage"] for r in rows[1]["responses"]] == pytest.approx([1.0, -1.0])
    # all-equal group: zero advantages and the flag
    assert [r["reward"] for r in rows[2]["responses"]] == pytest.approx([1.0, 1.0])
    assert [r["advantage"] for r in rows[2]["responses"]] == [0.0, 0.0] and rows[2]["zero_variance"]
    # safety: format needs a reasoning split here, none given -> format 0.5
    assert [r["reward"] for r in rows[3]["responses"]] == pytest.approx([0.6 + 0.1 + 0.2, 0.1 + 0.2])
    assert [r["reward"] for r in rows[4]["responses"]] == pytest.approx([0.9, 0.3])
    assert [r["zero_variance"] for r in rows] == [False, False, True, False, False]
    assert report["zero_variance_share"] == pytest.approx(1 / 5)
    assert report["mean_reward_per_domain"]["math"] == pytest.approx(sum(expected) / 5)
    # 1 of 5 math + 0 of 4 general responses without an answer
    assert report["extraction_failure_rate"] == pytest.approx(1 / 9)
    assert report["safety_judge"]["by"] == "rules"


def test_weights_change_the_reward():
    ds = dataset([row("2+2?", "math", "4", [resp("\\boxed{4}"), resp("\\boxed{5}")])])
    only_correct = reward(ds, RewardConfig(correctness_weight=1, format_weight=0, length_weight=0)).dataset
    assert [r["reward"] for r in only_correct[0]["responses"]] == [1.0, 0.0]
    only_format = reward(ds, RewardConfig(correctness_weight=0, format_weight=1, length_weight=0,
                                             format_requires_reasoning=False)).dataset
    assert [r["reward"] for r in only_format[0]["responses"]] == [1.0, 1.0]
    assert only_format[0]["zero_variance"] is True


def test_rows_without_responses_are_kept_with_an_error():
    ds = dataset([row("2+2?", "math", "4", [])])
    _result = reward(ds)
    out, report = _result.dataset, _result.report
    assert len(out) == 1 and out[0]["errors"][0]["kind"] == "no_responses"
    assert report["rows_with_errors"] == 1


def test_bad_config_is_a_user_error():
    from metakl.config import from_dict

    with pytest.raises(UserError, match="unknown setting"):
        from_dict(RewardConfig, {"corectness_weight": 1}, "reward.yaml")
    with pytest.raises(UserError, match="reward.yaml: 'judge': expected one of rules, llm"):
        from_dict(RewardConfig, {"judge": "gpt"}, "reward.yaml")
    with pytest.raises(UserError, match="weights"):
        RewardConfig(correctness_weight=-1)
