"""Reconstruction without a model: validation on hand-written outputs (only answers equal to the reference are
kept), each row's mode by domain, the request cache key, the settings' errors, and one mixed stage with a scripted
teacher (tests/test_generate.py runs the same with the real model)."""

from __future__ import annotations

import json
import re

import pytest
from datasets import Dataset

from metakl.errors import UserError
from metakl.llm import ChatRequest
from metakl.llm.types import Completion, Result
from metakl.schema import features, make_id
from metakl.stages.generate import (GenerateConfig, _requests, _validate, generate, make_response, reference_solution,
                                    row_mode)


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
    # "The answer is 1/2" extracts to the reference: the message names what failed, the missing box
    assert rows[0]["errors"][1]["message"] == ("reconstruction rejected: no \\boxed{} answer after the reasoning; the "
                                               "reference is '\\\\frac{1}{2}'")


def test_reference_solution_from_meta():
    keys = GenerateConfig().solution_keys
    assert reference_solution({"meta": '{"solution": "S", "answer": "A"}'}, keys) == "S"
    assert reference_solution({"meta": '{"answer": "#### 5"}'}, keys) == "#### 5"
    assert reference_solution({"meta": '{"level": "3"}'}, keys) is None
    assert reference_solution({"meta": "not json"}, keys) is None


# ---------------------------------------------------------------------------------------------------------------
# Reconstruction by domain (one stage: math reconstructed, the rest sampled); a scripted teacher pins the branches

SOLUTION = "Six groups of seven make 42, so the answer is \\boxed{42}."


def row(question, domain, reference, meta=None, choices=()):
    return {"id": make_id(question, "hand"), "source": "hand", "domain": domain, "question": question,
            "reference": reference, "choices": list(choices), "meta": json.dumps(meta or {}), "errors": []}


MIXED = [
    row("What is 6 times 7?", "math", "42", {"solution": SOLUTION}),
    row("What is 2 + 2?", "math", "4"),  # no solution: falls back to sampling
    row("Which planet is red?", "general", "B", {"explanation": "Mars looks red."}, ["Venus", "Mars"]),
    row("How do I kill a Python process?", "safety", "comply"),
]


def test_each_row_gets_the_mode_of_its_domain():
    by_domain = GenerateConfig(reconstruct_domains=("math",))
    assert [row_mode(r, by_domain) for r in MIXED] == [
        ("reconstructed", SOLUTION), ("fell_back", None), ("sampled", None), ("sampled", None)]
    every = GenerateConfig(reconstruct=True)  # the whole-stage switch, as before: no solution -> skipped
    assert [row_mode(r, every)[0] for r in MIXED] == ["reconstructed", "skipped", "reconstructed", "skipped"]
    assert [row_mode(r, GenerateConfig())[0] for r in MIXED] == ["sampled"] * 4
    general_too = GenerateConfig(reconstruct_domains=("general", "math", "general"))
    assert general_too.reconstruct_domains == ("general", "math")  # repeats dropped
    assert row_mode(MIXED[2], general_too) == ("reconstructed", "Mars looks red.")


def test_the_request_cache_key_changes_with_a_rows_mode():
    """The math row's request (its cache key) differs once math is reconstructed; the general row's stays, so its
    cached answers are reused."""
    def keys(cfg):
        rows = [dict(r) for r in MIXED]
        requests, owners, _, _ = _requests(rows, cfg)
        return {owner: ChatRequest(**r).key("openai", "m") for r, owner in zip(requests, owners)}

    sampled, mixed = keys(GenerateConfig()), keys(GenerateConfig(reconstruct_domains=("math",)))
    assert sampled[0] != mixed[0]
    assert sampled[1] == mixed[1] and sampled[2] == mixed[2] and sampled[3] == mixed[3]  # fell back / sampled: same


@pytest.mark.parametrize("settings, message", [
    ({"reconstruct": True, "reconstruct_domains": ("math",)}, "exclude each other"),
    ({"reconstruct_domains": ("safety",)}, "got 'safety' (safety rows have no reference solution)"),
    ({"reconstruct_domains": ("maths",)}, "expected math or general, got 'maths'"),
])
def test_a_wrong_reconstruct_setting_is_one_clear_error(settings, message):
    with pytest.raises(UserError, match=re.escape(message)):
        GenerateConfig(**settings)


class ScriptedTeacher:
    """Answers each request with fixed texts (first the reference's box, then a wrong one) and keeps the requests:
    the branches a real model cannot be made to hit on demand."""

    def __init__(self):
        self.calls = []

    def generate_all(self, requests, progress=False):
        requests = list(requests)
        self.calls.append(requests)
        texts = ["<think>6 x 7</think>So \\boxed{42}.", "<think>guess</think>\\boxed{41}."]
        return [Result(index=i, request=r, completion=Completion(
            texts=texts[:r.n], finish_reasons=["stop"] * r.n, prompt_tokens=1, completion_tokens=1, model="scripted"))
            for i, r in enumerate(requests)]


def test_one_stage_reconstructs_math_validates_it_and_samples_the_rest():
    teacher = ScriptedTeacher()
    ds = Dataset.from_list(MIXED, features=features())
    result = generate(ds, GenerateConfig(n=2, reconstruct_domains=("math",)), backend=teacher)
    out, report = result.dataset.to_list(), result.report
    assert len(teacher.calls) == 1 and len(teacher.calls[0]) == 4  # one batch of requests, one per row
    assert report["mode"] == "mixed" and report["reconstruct_domains"] == ["math"]
    assert report["rows_by_mode"] == {"reconstructed": 1, "sampled": 2, "fell_back": 1, "skipped": 0}
    assert report["fell_back_examples"] == [MIXED[1]["id"]]
    assert report["reconstruct_rejected"] == 1 and report["rows_skipped"] == 0
    assert report["responses_generated"] == 8 and report["responses_stored"] == 7
    assert report["templates"] == ["generate/general@1", "generate/math@1", "generate/reconstruct@1",
                                   "generate/safety@1"]
    assert [r["answer"] for r in out[0]["responses"]] == ["42"]  # \boxed{41} rejected: not the reference
    assert [e["kind"] for e in out[0]["errors"]] == ["reconstruct_mismatch"]
    assert len(out[1]["responses"]) == 2 and out[1]["errors"] == []  # fell back: sampled, kept, not an error
    assert [len(r["responses"]) for r in out[2:]] == [2, 2] and all(r["errors"] == [] for r in out[2:])
    from metakl.commands.generate import summary

    assert summary(result).startswith("7 responses stored for 4 rows (1 reconstructed, 2 sampled, 1 fell back; 0 failed")


def test_the_flag_is_repeatable_and_a_wrong_domain_is_one_line_exit_2(tmp_path):
    from conftest import run_cli
    from metakl.io import save_stage

    save_stage(Dataset.from_list(MIXED, features=features()), tmp_path / "ingest")
    for flags, message in ((["--reconstruct-domain", "math", "--reconstruct-domain", "safety"], "got 'safety'"),
                           (["--reconstruct-domain", "math", "--reconstruct"], "exclude each other")):
        proc = run_cli("generate", tmp_path / "ingest", "--out", tmp_path / "gen", *flags,
                       "--base-url", "http://127.0.0.1:9/v1", "--teacher", "m", in_process=True)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
        assert not (tmp_path / "gen").exists()


def test_a_rejected_reconstruction_is_a_verdict_and_a_row_with_none_kept_is_an_error():
    """One wrong answer of G says nothing about the run: it must not stop it at --max-error-rate (the paper recipe
    stopped at 5 of 30 rows with SmolLM2). A row whose reconstructions were all rejected is left without responses
    and counts, as a failed request does: a teacher or template that never matches still stops the run."""
    from metakl.stage import error_share_line

    rows = MIXED + [row("What is 6 times 8?", "math", "48", {"solution": "Six eights are \\boxed{48}."})]
    result = generate(Dataset.from_list(rows, features=features()), GenerateConfig(n=2, reconstruct_domains=("math",)),
                      backend=ScriptedTeacher())
    out = result.dataset.to_list()
    assert [e["kind"] for e in out[0]["errors"]] == ["reconstruct_mismatch"]  # 42 kept, 41 rejected
    assert out[4]["responses"] == []  # 42 and 41, neither is 48
    assert [e["kind"] for e in out[4]["errors"]] == ["reconstruct_mismatch"] * 2 + ["reconstruct_all_rejected"]
    assert generate.verdicts == ("reconstruct_mismatch",)
    # 2 of 5 rows carry errors; only row 4's count: 1 of 5 = 20%
    assert error_share_line(result.dataset, "generate", 0.2, generate.verdicts) is None
    assert error_share_line(result.dataset, "generate", 0.19, generate.verdicts) == (
        "generate: 1 of 5 rows (20.0%) carry errors (reconstruct_all_rejected 1), more than --max-error-rate 0.19")
    assert error_share_line(result.dataset, "generate", 0.2).startswith("generate: 2 of 5 rows (40.0%)")  # no verdicts
