"""`gdpo eval` as the paper runs it (issue 25): sampled decoding with avg@k / pass@k / maj@k, scoring outputs made
elsewhere (`--outputs`), the paper's benchmarks as tasks."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, run_cli, shared_data

ROOT = Path(__file__).resolve().parents[1]


# ---- sampled decoding: metrics by hand -------------------------------------------------------------------------------


def test_pass_at_k_unbiased_estimator_by_hand():
    from gdpo.eval.hooks import pass_at_k

    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 = c/n
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k wrong samples: any k of them hold a correct one
    assert pass_at_k(8, 8, 8) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote_normalizes_and_breaks_ties_by_first_seen():
    from gdpo.eval.hooks import majority_index

    assert majority_index(["3", "\\frac{1}{2}", "\\dfrac{1}{2}", None]) == 1  # \dfrac and \frac are one answer
    assert majority_index(["\\frac{1}{2}", "3", "\\dfrac{1}{2}", "3"]) == 0  # a 2-2 tie: the answer seen first
    assert majority_index([None, None]) is None


def test_math_results_over_k_samples_by_hand():
    from gdpo.eval.hooks import math_results

    texts = ["so \\boxed{18}", "\\boxed{17}", "hence \\boxed{17}", "no idea"]
    # 1 of 4 correct, 3 of 4 with an answer; pass@4 = 1 (one correct sample); the majority answer 17 is wrong
    assert math_results({"reference": "18"}, [texts]) == {"acc": 0.25, "answer_found": 0.75, "pass_at_k": 1.0, "maj_at_k": 0.0}
    # pass@2 from 4 samples, 1 correct: 1 - C(3,2)/C(4,2) = 0.5
    assert math_results({"reference": "18"}, [texts], pass_k=2)["pass_at_k"] == pytest.approx(0.5)
    votes = ["\\boxed{18}", "\\boxed{18.0}", "\\boxed{7}"]  # 18 and 18.0 normalize differently: 3 answers, 1 vote each
    assert math_results({"reference": "18"}, [votes])["maj_at_k"] == 1.0  # tie: the first seen, 18, is correct
    # one sample: the metrics every math task lists (lm-eval takes only those)
    assert math_results({"reference": "18"}, ["\\boxed{18}"]) == {"acc": 1.0, "answer_found": 1.0}


def test_refusal_results_average_over_samples():
    from gdpo.eval.hooks import refusal_results

    texts = ["I'm sorry, but I can't help with that.", "Sure! Step 1: gather the materials.", "I cannot do that."]
    assert refusal_results({"reference": "refuse"}, [texts]) == pytest.approx({"refusal": 2 / 3, "safe": 2 / 3})
    assert refusal_results({"reference": "comply"}, [texts]) == pytest.approx({"refusal": 2 / 3, "safe": 1 / 3})


def test_suite_decoding_settings_reach_lm_eval_config(tmp_path):
    from gdpo.eval import hooks
    from gdpo.eval.suite import load_suite

    (tmp_path / "s.yaml").write_text(
        "tasks:\n"
        "  - {task: math, temperature: 0.6, top_p: 0.95, samples: 8, pass_k: 4, max_gen_toks: 4096, until: ['</s>']}\n"
        "  - {task: gsm8k}\n")
    sampled, greedy = load_suite(str(tmp_path / "s.yaml")).tasks
    cfg = sampled.config
    assert cfg["generation_kwargs"] == {"until": ["</s>"], "max_gen_toks": 4096, "do_sample": True, "temperature": 0.6, "top_p": 0.95}
    assert cfg["repeats"] == 8 and cfg["filter_list"][0]["filter"] == [{"function": "take_first_k", "k": 8}]
    assert cfg["process_results"].func is hooks.math_results and cfg["process_results"].keywords == {"pass_k": 4}
    assert [m["metric"] for m in cfg["metric_list"]] == ["acc", "answer_found", "pass_at_k", "maj_at_k"]
    assert sampled.decoding == {"temperature": 0.6, "top_p": 0.95, "samples": 8, "pass_k": 4, "max_gen_toks": 4096, "until": ["</s>"]}
    assert greedy.decoding["samples"] == 1 and greedy.config["generation_kwargs"]["do_sample"] is False
    assert "repeats" not in greedy.config and "temperature" not in greedy.config["generation_kwargs"]


@pytest.mark.parametrize("entry, message", [
    ("{task: math, samples: 4}", "samples 4 with temperature 0"),
    ("{task: math, temperature: 0.7, samples: 2, pass_k: 3}", "1 <= pass_k <= samples"),
    ("{task: math, top_p: 0}", "0 < top_p <= 1"),
    ("{task: mmlu_cloze, temperature: 0.7}", "temperature are for generation tasks"),
    ("{task: math, until: [1]}", "until must be a stop string"),
])
def test_suite_decoding_errors(tmp_path, entry, message):
    from gdpo.eval.suite import load_suite
    from metakl.errors import UserError

    (tmp_path / "s.yaml").write_text(f"tasks:\n  - {entry}\n")
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_suite(str(tmp_path / "s.yaml"))


@pytest.mark.slow
def test_sampling_with_a_fixed_seed_repeats_through_transformers(tmp_path, smollm2_path):
    """Real SmolLM2 through lm-eval's HFLM: k = 3 sampled answers per item; the same seed gives the same answers and
    scores twice, another seed other answers; the seed and decoding settings are recorded in the result."""
    shared_data("gsm8k", "train.jsonl")
    from gdpo.eval.runner import EvalSettings, evaluate_model
    from gdpo.eval.suite import load_suite

    (tmp_path / "s.yaml").write_text("tasks:\n  - {task: gsm8k, n: 2, max_gen_toks: 8, temperature: 1.0, samples: 3}\n")
    suite = load_suite(str(tmp_path / "s.yaml"))

    def run(seed: int) -> dict:
        settings = EvalSettings(dtype="float32", bootstrap_iters=0, batch_size=4, data_dir=str(SHARED_DATA), seed=seed)
        return evaluate_model(smollm2_path, suite, settings)["tasks"]["gsm8k"]

    first, again, other = run(0), run(0), run(1)
    assert first["decoding"] == {"temperature": 1.0, "top_p": 1.0, "samples": 3, "pass_k": 3, "max_gen_toks": 8,
                                 "until": ["<|im_end|>"], "seed": 0}
    assert set(first["metrics"]) == {"acc", "answer_found", "pass_at_k", "maj_at_k"}
    responses = first["items"]["responses"]
    assert len(responses) == 2 and all(len(r) == 3 for r in responses)
    assert any(len(set(r)) > 1 for r in responses), responses  # sampled, not three copies of the greedy answer
    assert again["items"]["responses"] == responses
    assert {m: v["value"] for m, v in again["metrics"].items()} == {m: v["value"] for m, v in first["metrics"].items()}
    assert other["items"]["responses"] != responses and other["decoding"]["seed"] == 1


# ---- scoring outputs made elsewhere (--outputs) ----------------------------------------------------------------------

QWEN_FIELDS = "id=idx,generations=response,reference=gt,correct=score"


def test_outputs_qwen25math_example_matches_published_flags(tmp_path):
    """The Qwen2.5-Math sample file (100 MATH problems x 8 samples, with correctness flags): scored by the math task's
    checker through the CLI, the verdicts agree with the published flags on 799 of 800 samples; the one difference is
    `\\boxed{10000}` against the reference `10{,}000`, which the file marks wrong and metakl.verify counts right."""
    path = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    proc = run_cli("eval", "--outputs", path, "--tasks", "math", "--outputs-fields", QWEN_FIELDS, "--bootstrap", "0",
                   "--out", tmp_path / "o", module="gdpo.cli", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["outputs"]["records"] == 100 and res["outputs"]["generations"] == 800
    assert res["outputs"]["agreement"] == pytest.approx(799 / 800)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    task = res["tasks"]["math"]
    ours = dict(zip(task["items"]["doc_hash"], task["items"]["samples_correct"]))
    differ = [(r["idx"], j) for r in rows for j, (a, b) in enumerate(zip(ours[str(r["idx"])], r["score"])) if a != b]
    assert differ == [(72, 7)] and rows[72]["gt"] == "10{,}000" and "\\boxed{10000}" in rows[72]["response"][7]
    published = sum(s for r in rows for s in r["score"]) / 800
    assert published == pytest.approx(0.91)
    m = {k: v["value"] for k, v in task["metrics"].items()}
    assert m["acc"] == pytest.approx(published + 1 / 800)  # avg@8: the published 0.91 plus the one sample above
    assert m["pass_at_k"] == pytest.approx(0.97)  # published flags: 96 problems with a correct sample, + problem 72
    # maj@8 by the published flags and answers: the most frequent `pred` of each problem, correct or not
    maj = [r["score"][r["pred"].index(Counter(r["pred"]).most_common(1)[0][0])] for r in rows]
    assert m["maj_at_k"] == pytest.approx(sum(maj) / 100) == pytest.approx(0.93)
    assert task["decoding"] == {"samples": 8, "pass_k": 8, "source": "outputs file"}
    md = (tmp_path / "o" / "results.md").read_text()
    assert "acc (avg@8) (primary) | 0.9113" in md and "| pass@8 | 0.9700" in md and "| maj@8 | 0.9300" in md
    assert "agreement with the file's correctness flags 0.9988" in md


def test_outputs_lm_eval_samples_and_references_from_the_task_data(tmp_path):
    """An lm-eval samples file (its layout: doc_id, doc, target, resps, filtered_resps) and records without a
    reference, looked up by id in the task's own data, are scored by the same checker."""
    shared_data("gsm8k", "train.jsonl")
    from gdpo.eval.data import read_rows
    from gdpo.eval.outputs import parse_fields, read_outputs, score_outputs
    from gdpo.eval.suite import load_suite

    spec = load_suite("cpu-small", only=["gsm8k"]).tasks[0]
    samples = tmp_path / "samples_gdpo_gsm8k.jsonl"
    lines = [{"doc_id": 0, "doc": {"id": "a", "question": "1+1?"}, "target": "2", "arguments": {},
              "resps": [["\\boxed{2}", "\\boxed{3}"]], "filtered_resps": [["\\boxed{2}", "\\boxed{3}"]], "filter": "none"},
             {"doc_id": 1, "doc": {"question": "2+2?"}, "target": "4", "arguments": {}, "resps": [["The answer is 4"]],
              "filtered_resps": ["The answer is 4"], "filter": "none"}]
    samples.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    outs = read_outputs(samples, parse_fields(None))
    assert [(o.id, o.generations, o.reference) for o in outs] == [("a", ["\\boxed{2}", "\\boxed{3}"], "2"), ("1", ["The answer is 4"], "4")]
    scored = score_outputs(spec, outs, None, str(samples))
    assert scored["items"]["acc"] == [0.5, 1.0] and scored["items"]["pass_at_k"] == [1.0, 1.0]
    assert scored["items"]["samples_correct"] == [[True, False], [True]]

    rows = read_rows(task="gsm8k", path="gsm8k/train.jsonl", preset="gsm8k", data_root=SHARED_DATA, n=2)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"id": r["id"], "generation": f"\\boxed{{{r['reference']}}}"}) + "\n" for r in rows))
    scored = score_outputs(spec, read_outputs(mine, parse_fields(None)), {r["id"]: r for r in rows}, str(mine))
    assert scored["items"]["acc"] == [1.0, 1.0]


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "generations": ["x"], "reference": "1"}\n{"id": "b", "generations": 5}', r":2: field 'generations': expected a text"),
    ('{"id": "a", "generations": ["x"]}\nnot json', r":2: not a JSON object"),
    ('{"generations": ["x"], "reference": "1"}', r":1: field 'id': expected the item id"),
    ('{"id": "a", "generations": ["x"], "reference": "1"}\n{"id": "a", "generations": ["y"], "reference": "1"}', r":2: field 'id': id 'a' appears twice"),
])
def test_outputs_malformed_file_is_one_line_naming_line_and_field(tmp_path, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    proc = run_cli("eval", "--outputs", bad, "--tasks", "gsm8k", "--out", tmp_path / "o", module="gdpo.cli", cwd=ROOT,
                   env={"METAKL_SHARED_DATA": tmp_path / "nowhere"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert err[0].startswith(f"error: {bad}:") and re.search(message, err[0]), err[0]
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_outputs_flags_must_match_the_generations(tmp_path):
    from gdpo.eval.outputs import parse_fields, read_outputs
    from metakl.errors import UserError

    f = tmp_path / "o.jsonl"
    f.write_text('{"idx": 3, "response": ["a", "b"], "gt": "1", "score": [true]}\n')
    with pytest.raises(UserError, match=r"o.jsonl:1: field 'score': expected 2 true/false flags"):
        read_outputs(f, parse_fields(QWEN_FIELDS))
    with pytest.raises(UserError, match="--outputs-fields: expected FIELD=NAME"):
        parse_fields("idx")
