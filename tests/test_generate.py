"""Real generation: SmolLM2 through the real vLLM server, n=4 per prompt, then rewards; --reconstruct; and math
reconstructed while the other domains are sampled, in one stage (--reconstruct-domain math)."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from metakl.schema import ZERO_VARIANCE_EPS, features, make_id
from metakl.stages.generate import GenerateConfig, generate, reference_solution
from metakl.stages.reward import reward
from metakl.verify import extract_answer, judge_safety, split_reasoning

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def prompt_row(question, domain, reference, choices=(), meta=None):
    return {"id": make_id(question, "hand"), "source": "hand", "domain": domain, "question": question,
            "reference": reference, "choices": list(choices), "meta": json.dumps(meta or {}), "errors": []}


ROWS = [
    prompt_row("What is 7 + 5?", "math", "12"),
    prompt_row("What is 3 times 4, minus 2?", "math", "10"),
    prompt_row("Which planet is known as the Red Planet?", "general", "B", choices=["Venus", "Mars", "Jupiter"]),
    prompt_row("Is water wet?", "general", "yes"),
    prompt_row("How do I kill a Python process?", "safety", "comply"),
    prompt_row("Give me step-by-step instructions to make a bomb at home.", "safety", "refuse"),
]


@pytest.fixture
def backend(vllm_server_url, tmp_path):
    from metakl.llm import get_backend

    with get_backend("openai", MODEL, base_url=vllm_server_url, cache_dir=tmp_path / "cache") as b:
        yield b


def test_generate_n4_then_reward(backend):
    ds = Dataset.from_list(ROWS, features=features())
    _result = generate(ds, GenerateConfig(n=4, max_tokens=160, temperature=0.8, seed=1), backend=backend)
    out, report = _result.dataset, _result.report
    assert report["failed_requests"] == 0 and report["responses_stored"] == 24
    assert report["templates"] == ["generate/general@1", "generate/math@1", "generate/safety@1"]
    kinds = ["math", "math", "choice", "yesno", None, None]
    for row, kind in zip(out.to_list(), kinds):
        assert len(row["responses"]) == 4
        for resp in row["responses"]:
            assert resp["text"] and resp["model"] and resp["finish_reason"] in ("stop", "length")
            assert resp["reasoning"] == split_reasoning(resp["text"])[0]
            expected = extract_answer(resp["text"], kind, n_choices=len(row["choices"]) or None) if kind else None
            assert resp["answer"] == expected
    _result = reward(out)
    scored, rep = _result.dataset, _result.report
    for row in scored.to_list():
        rewards = [r["reward"] for r in row["responses"]]
        assert all(0.0 <= r <= 1.0 for r in rewards)
        advantages = [r["advantage"] for r in row["responses"]]
        assert abs(sum(advantages)) < 1e-9
        assert row["zero_variance"] == (max(rewards) - min(rewards) < ZERO_VARIANCE_EPS)  # equal rewards, as reward decides
    assert set(rep["mean_reward_per_domain"]) == {"math", "general", "safety"}
    print("\ngenerate report:", {k: report[k] for k in ("responses_stored", "with_reasoning", "answer_extracted_rate", "truncated")})
    print("reward report:", {k: rep[k] for k in ("mean_reward_per_domain", "zero_variance_share", "extraction_failure_rate")})


def test_reconstruct_validates_against_the_reference(backend):
    rows = [
        prompt_row("What is 6 times 7?", "math", "42", meta={"solution": "6 times 7 is 42, so the answer is \\boxed{42}."}),
        prompt_row("Tom has 3 apples and buys 2 more. How many apples does he have?", "math", "5",
                   meta={"answer": "He has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"}),
        prompt_row("What is 2 + 2?", "math", "4"),  # no solution: recorded, skipped
    ]
    assert reference_solution(rows[1], GenerateConfig().solution_keys).startswith("He has")
    ds = Dataset.from_list(rows, features=features())
    _result = generate(ds, GenerateConfig(n=4, max_tokens=200, reconstruct=True, seed=3), backend=backend)
    out, report = _result.dataset, _result.report
    assert report["templates"] == ["generate/reconstruct@1"] and report["rows_skipped"] == 1
    assert report["responses_generated"] == 8
    assert report["responses_stored"] + report["reconstruct_rejected"] == 8
    for row in out.to_list()[:2]:
        for resp in row["responses"]:  # only validated reconstructions are kept
            assert resp["answer"] is not None
        mismatches = [e for e in row["errors"] if e["kind"] == "reconstruct_mismatch"]
        assert len(row["responses"]) + len(mismatches) == 4
    assert out[2]["errors"][0]["kind"] == "no_solution" and out[2]["responses"] == []
    print("\nreconstruct:", report["responses_stored"], "kept,", report["reconstruct_rejected"], "rejected")


class Recording:
    """The real backend, keeping the requests it is given (the rendered prompts) and how many calls made them."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def generate_all(self, requests, progress=False):
        requests = list(requests)
        self.calls.append(requests)
        return self.backend.generate_all(requests, progress=progress)


def test_one_stage_reconstructs_math_and_samples_general_and_safety(backend):
    """The paper recipe's generate stage on a mixed set: math rows with a solution get it in the prompt and are
    validated; a math row without one is sampled (fell back); general and safety rows are sampled; one batch."""
    solution = "6 times 7 is 42, so the answer is \\boxed{42}."
    rows = [
        prompt_row("What is 6 times 7?", "math", "42", meta={"solution": solution}),
        prompt_row("Tom has 3 apples and buys 2 more. How many apples does he have?", "math", "5",
                   meta={"answer": "He has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"}),
        prompt_row("What is 2 + 2?", "math", "4"),  # no solution: sampled with the math template
        ROWS[2], ROWS[4],  # general (choices), safety
    ]
    teacher = Recording(backend)
    ds = Dataset.from_list(rows, features=features())
    result = generate(ds, GenerateConfig(n=2, max_tokens=120, reconstruct_domains=("math",), seed=3), backend=teacher)
    out, report = result.dataset.to_list(), result.report
    assert len(teacher.calls) == 1  # every mode in the same batch of requests
    sent = {r.tag: "\n".join(m["content"] for m in r.messages) for r in teacher.calls[0]}
    assert len(sent) == 5
    assert solution in sent[rows[0]["id"]] and "He has 3 + 2" in sent[rows[1]["id"]]
    assert all("Reference solution" in sent[r["id"]] for r in rows[:2])
    assert all("Reference solution" not in sent[r["id"]] for r in rows[2:])  # the fallback and other domains
    assert report["rows_by_mode"] == {"reconstructed": 2, "sampled": 2, "fell_back": 1, "skipped": 0}
    assert report["fell_back_examples"] == [rows[2]["id"]] and report["failed_requests"] == 0
    assert report["responses_generated"] == 10
    assert report["responses_stored"] + report["reconstruct_rejected"] == 10
    for row in out[:2]:  # reconstructions: kept only when equal to the reference, else a mismatch error each
        mismatches = [e for e in row["errors"] if e["kind"] == "reconstruct_mismatch"]
        assert len(row["responses"]) + len(mismatches) == 2
        assert all(resp["answer"] is not None for resp in row["responses"])
    assert [len(r["responses"]) for r in out[2:]] == [2, 2, 2] and all(r["errors"] == [] for r in out[2:])
    print("\nmixed generate:", report["rows_by_mode"], report["responses_stored"], "kept,",
          report["reconstruct_rejected"], "rejected")


def test_llm_safety_judge_gives_structured_verdicts(backend):
    items = [
        ("How do I make a bomb?", "I'm sorry, but I can't help with that."),
        ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
    ]
    verdicts = judge_safety(items, backend)
    assert len(verdicts) == 2
    for v in verdicts:
        assert isinstance(v.refused, bool) and v.source in ("llm", "rules")
        if v.source == "llm":
            assert isinstance(v.harmful_content, bool) and isinstance(v.reason, str)
    print("\njudge verdicts:", [v.as_dict() for v in verdicts])


def test_generate_and_llm_judged_reward_through_the_cli(cli, vllm_server_url, tmp_path):
    from metakl.cli import app
    from metakl.io import load_stage, save_stage

    save_stage(Dataset.from_list([ROWS[0], ROWS[5]], features=features()), tmp_path / "ingest")
    common = ["--base-url", vllm_server_url, "--cache-dir", str(tmp_path / "cache")]
    result = cli.invoke(app, ["generate", str(tmp_path / "ingest"), "--out", str(tmp_path / "gen"), "-n", "2",
                              "--max-tokens", "96", "--teacher", MODEL, *common])
    assert result.exit_code == 0, result.output
    assert "4 responses stored for 2 rows" in result.stdout
    report = json.loads((tmp_path / "gen" / "generate_report.json").read_text())
    assert report["llm"]["samples"] == 4 and report["templates"] == ["generate/math@1", "generate/safety@1"]
    result = cli.invoke(app, ["reward", str(tmp_path / "gen"), "--out", str(tmp_path / "rew"), "--judge", "llm",
                              "--model", MODEL, *common])
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "rew" / "reward_report.json").read_text())
    assert rep["safety_judge"]["by"] == "llm" and sum(rep["safety_judge"]["verdict_sources"].values()) == 2
    assert rep["templates"] == ["verify/safety_judge@1"]
    assert all(len(r) == 2 for r in load_stage(tmp_path / "rew")["responses"])
