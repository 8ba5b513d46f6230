"""`filter` after `reward`: zero-variance groups skipped, groups with a correct response first among equal gaps, and
the reason the selection stopped (hand-worked on tests/test_filter.py's six prompts)."""

from __future__ import annotations

import dataclasses

from datasets import Dataset

from metakl.io import save_stage
from metakl.schema import ZERO_VARIANCE_EPS, features
from metakl.stages.filter import filter_prompts
from tests.test_filter import HAND, PROMPTS, app, dataset

RIGHT = ([1.0, 0.0], ["1", "2"])  # a preference, and a correct answer (the reference is "1")


def with_groups(groups: dict[str, tuple[list[float], list[str]]]) -> Dataset:
    """PROMPTS with a rewarded response group per prompt: {id: (rewards, answers)}, RIGHT where not given."""
    rows = dataset().to_list()
    for row in rows:
        rewards, answers = groups.get(row["id"], RIGHT)
        row["responses"] = [{"text": f"answer {a}", "reasoning": "", "answer": a, "reward": r, "advantage": 0.0,
                             "model": "t", "finish_reason": "stop"} for r, a in zip(rewards, answers)]
    return Dataset.from_list(rows, features=features("units", "proficiency", "responses"))


def test_zero_variance_groups_are_skipped_unless_kept():
    # p2's rewards are all equal: without it (as with a near-duplicate, tests/test_filter.py) p0 and p1 fill algebra,
    # p3 geometry, p5 refusal. Kept, p2 fills algebra and geometry at once (gain 2) as in the hand-worked selection.
    flat = with_groups({"p2": ([0.5, 0.5], ["2", "2"])})
    result = filter_prompts(flat, HAND)
    assert result.dataset["id"] == ["p0", "p1", "p3", "p5"]
    assert result.report["zero_variance_groups"] == 1 and result.report["zero_variance_skipped"] == 1
    kept = filter_prompts(flat, dataclasses.replace(HAND, keep_zero_variance=True))
    assert kept.dataset["id"] == ["p0", "p2", "p5"]
    assert kept.report["zero_variance_groups"] == 1 and kept.report["zero_variance_skipped"] == 0


def test_zero_variance_is_the_schema_threshold_on_the_population_std():
    # rewards (a, a + 2d) have population std d: flat at d = EPS / 2, a preference at d = 2 * EPS.
    d_flat, d_pref = ZERO_VARIANCE_EPS / 2, ZERO_VARIANCE_EPS * 2
    near = filter_prompts(with_groups({"p2": ([0.5, 0.5 + 2 * d_flat], ["1", "2"])}), HAND)
    assert near.report["zero_variance_skipped"] == 1 and "p2" not in near.dataset["id"]
    apart = filter_prompts(with_groups({"p2": ([0.5, 0.5 + 2 * d_pref], ["1", "2"])}), HAND)
    assert apart.report["zero_variance_skipped"] == 0 and apart.dataset["id"] == ["p0", "p2", "p5"]


def test_rows_without_responses_select_as_before():
    result = filter_prompts(dataset(), HAND)  # a filter before generate: no responses column
    assert result.dataset["id"] == ["p0", "p2", "p5"]
    assert result.report["zero_variance_groups"] == 0 and result.report["groups_without_correct"] == 0


def test_a_group_with_a_correct_response_wins_a_tie_not_a_larger_gap():
    # Step 2 of the hand-worked selection: p0, p1, p4 (algebra) and p5 (refusal) tie at gain 1 and p0 (hardest) won.
    # p0's teachers all answered wrong (7, 8 against 1): p1 (next hardest, its "1.0" equals 1 for the math checker)
    # takes algebra's second place instead.
    wrong_p0 = with_groups({"p0": ([0.2, 0.1], ["7", "8"]), "p1": ([1.0, 0.0], ["1.0", "3"])})
    result = filter_prompts(wrong_p0, HAND)
    assert result.artifacts["selection.json"]["ids"] == ["p2", "p1", "p5"]
    assert result.report["groups_without_correct"] == 1 and result.report["selected_without_correct"] == 0
    # the preference only breaks ties: p2 without a correct answer still fills two gaps at once and goes first
    wrong_p2 = filter_prompts(with_groups({"p2": ([0.2, 0.1], ["7", "8"])}), HAND)
    assert wrong_p2.artifacts["selection.json"]["ids"] == ["p2", "p0", "p5"]
    assert wrong_p2.report["selected_without_correct"] == 1
    # safety behaviour needs the judge: p5 is never demoted, whatever its answers
    assert filter_prompts(with_groups({"p5": ([0.2, 0.1], ["x", "y"])}), HAND).report["groups_without_correct"] == 0


def test_stop_reason_names_the_sum_of_targets_and_the_option():
    # targets (hand-worked in tests/test_filter.py): algebra 2, geometry 1, refusal 1 = 4, all within their pools;
    # p2 counts for algebra and geometry, so 3 prompts meet them and a budget of 5 is never reached.
    result = filter_prompts(dataset(), dataclasses.replace(HAND, budget=5))
    reason = result.report["stop_reason"]
    assert result.report["stopped"] == "no_gap" and result.report["selected"] == 3
    assert reason["targets_sum"] == 4 and reason["needs_sum"] == 4
    assert "unit targets add up to 4" in reason["text"] and "short of the budget of 5" in reason["text"]
    assert "raise --max-target (now 3)" in reason["text"]
    assert result.artifacts["gap_report.json"]["stop_reason"] == reason
    spent = filter_prompts(dataset(), dataclasses.replace(HAND, budget=1)).report["stop_reason"]
    assert spent["text"] == "the budget of 1 prompts is spent"
    no_budget = filter_prompts(dataset(), HAND).report["stop_reason"]["text"]
    assert "add up to 4" in no_budget and "--max-target" not in no_budget


def test_stop_reason_when_the_units_run_out_of_candidates():
    # max_target 10: algebra's target is round(1 + 9 * 0.5625) = 6, but it has 4 prompts; p3 (geometry) is a
    # zero-variance group, so geometry's one candidate is p2 (target 1 = candidates, as refusal's). Targets 6 + 1 + 1
    # = 8, within candidates 4 + 1 + 1 = 6; p2, p0, p1, p4, p5 meet them: 5 < budget 6. No unit stopped at its
    # target, so a larger --max-target cannot help: only more candidates can.
    cfg = dataclasses.replace(HAND, max_target=10, budget=6)
    reason = filter_prompts(with_groups({"p3": ([0.5, 0.5], ["2", "2"])}), cfg).report["stop_reason"]
    assert (reason["targets_sum"], reason["needs_sum"], reason["units_short_of_candidates"]) == (8, 6, 1)
    assert reason["text"].endswith("so 5 prompts met them, short of the budget of 6; 1 units have fewer candidate "
                                   "prompts than their target: add prompts (not candidates: 1 zero-variance groups "
                                   "(--keep-zero-variance keeps them))")
    assert "--max-target" not in reason["text"]


def test_stop_reason_counts_the_rows_without_units_and_names_the_option():
    # p6 has no unit (the embedding tagger abstained on it): it is never a candidate, and the hand-worked selection
    # (p2, p0, p5; 3 < budget 5) is unchanged; the reason says how many such rows there are and what tags them.
    untagged = dataset([*PROMPTS, ("p6", "math", [], 0.0, 0.0)])
    result = filter_prompts(untagged, dataclasses.replace(HAND, budget=5))
    reason = result.report["stop_reason"]
    assert result.artifacts["selection.json"]["ids"] == ["p2", "p0", "p5"]
    assert reason["rows_without_units"] == 1 == result.report["rows_without_units"]
    assert reason["text"].endswith("; 1 of 7 rows carry no knowledge unit and are not candidates (annotate left them "
                                   "untagged: a lower `annotate --min-similarity` for the embedding tagger, or another "
                                   "annotator, tags more of them)")
    assert "carry no knowledge unit" not in filter_prompts(dataset(), HAND).report["stop_reason"]["text"]


def test_filter_verb_prints_why_it_stopped_and_the_skipped_groups(cli, tmp_path):
    save_stage(with_groups({"p2": ([0.5, 0.5], ["2", "2"])}), tmp_path / "reward")
    args = ["filter", str(tmp_path / "reward"), "--base-model", "m", "--r", "0", "--reminders", "1",
            "--max-target", "3", "--prior-strength", "0", "--min-support", "1", "--budget", "5", "--no-plots"]
    result = cli.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "zero-variance groups (all rewards equal, no preference): 1, 1 skipped" in result.stdout
    assert "stopped: no prompt adds a gap" in result.stdout and "unit targets add up to 4" in result.stdout
    assert "raise --max-target (now 3)" in result.stdout
    kept = cli.invoke(app, [*args, "--keep-zero-variance", "--out", str(tmp_path / "b")])
    assert kept.exit_code == 0, kept.output
    assert "1, kept (--keep-zero-variance)" in kept.stdout and "filter: 6 rows in → 3 out" in kept.stdout


def test_tie_ranks_put_demoted_prompts_after_all_others():
    from metakl.stages.knowledge_gap import tie_ranks

    # p0 is the hardest but demoted: p1 (0.5), p2 (0.9), then p0; None (unscored) still sorts last among its kind
    assert tie_ranks([0.0, 0.5, 0.9], demoted=[True, False, False]) == [2, 0, 1]
    assert tie_ranks([0.0, None, 0.9, 0.2], demoted=[True, False, False, True]) == [2, 1, 0, 3]
    assert tie_ranks([0.0, 0.5, 0.9]) == tie_ranks([0.0, 0.5, 0.9], demoted=[False] * 3) == [0, 1, 2]


def test_a_group_settled_on_the_fast_path_sends_nothing_to_math_verify():
    # Filter only asks whether a group has a right answer: p0's "1" settles it without sympy, so its "\cos(0)"
    # (which only math-verify can compare) is never sent. Checking every answer was 36 of filter's 44 s at 44K prompts.
    from metakl.verify.pool import shared_pool

    stats = shared_pool().stats
    before = stats["items"]
    settled = filter_prompts(with_groups({"p0": ([1.0, 0.0], ["1", "\\cos(0)"])}), HAND)
    assert stats["items"] == before  # every other group's "1" settles it too
    assert settled.report["groups_without_correct"] == 0
    # a group no answer settles on the fast path still gets math-verify's verdict: cos(0) = 1 is right
    before = stats["items"]
    checked = filter_prompts(with_groups({"p0": ([1.0, 0.0], ["\\cos(0)", "7"])}), HAND)
    assert stats["items"] == before + 1
    assert checked.report["groups_without_correct"] == 0
    assert checked.artifacts["selection.json"]["ids"] == ["p2", "p0", "p5"]  # the hand-worked selection
