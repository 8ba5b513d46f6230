"""metakl decontaminate: hand-checked n-grams and cut-offs, planted items against the real MiniLM, real benchmark
overlaps from ../shared/data, the suite's benchmark list, and bad input.

Real data, read by hand (ngram pass, 13-grams; see test_real_overlaps):
- MMLU test (the half kept here) vs MMLU-Pro math: 364 MMLU rows share a 13-gram with an MMLU-Pro item. Read:
  "Write the ratio of 96 runners to 216 swimmers in simplest form." (the same stem, MMLU-Pro with 10 options),
  "Which situation could be represented by the expression 6 x 2?" (same stem, options reshuffled), "Find the product
  of 0.07 • 5.8." with the same four options (an `answer` match too: the same text and answer). Lowest-scoring match
  read: two abstract-algebra "Statement 1 | ... Statement 2 | ..." items sharing the clause "if H is a subgroup of G
  and a and b belong to G then" (a real shared statement, score 0.018).
  With the semantic pass (not run here: 8K texts to embed), 416 rows at the defaults, 0.88 and 0.86 alike: 52 more
  short stems with MMLU-Pro's other options ("Solve the equation 14 = w + 23."); the 51 of them read before the
  128-token embedding were all the same question (docs/results/decontamination.md).
- GSM8K train vs MATH test (minus MATH-500): no shared 13-gram and no equal problem: the two are disjoint sources.
- MMLU vs CommonsenseQA train: nothing; 51 n-grams repeated in more than 10 MMLU rows (the moral-scenarios preamble,
  shared passages) were set aside as boilerplate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, shared_data
from metakl.embed import Embedder
from metakl.errors import UserError
from metakl.io import load_stage, save_stage
from metakl.stages.decontaminate import (Benchmark, DecontaminateConfig, decontaminate, ngram_hashes, ngram_matches,
                                         suite_benchmarks, words)
from metakl.stages.ingest import IngestConfig, SourceSpec, ingest, load_mapping, load_preset

ROOT = Path(__file__).resolve().parents[1]
DEMO_BENCHMARK = ROOT / "annotations" / "demo" / "benchmark.jsonl"
FARMER = ("A farmer plants 8 rows of apple trees with 12 trees in each row. After a storm, 15 trees fall down. "
          "How many apple trees are still standing?")
CYCLIST = ("A cyclist rides at 18 km per hour for 3 hours and then at 12 km per hour for 2 hours. How far does she "
           "ride in total, in kilometres?")
BOILERPLATE = "Read the question below carefully and then choose the single best answer from the options that follow."


@pytest.fixture(scope="module")
def embedder(minilm_path, tmp_path_factory):
    return Embedder(minilm_path, cache_dir=tmp_path_factory.mktemp("embed-cache"))


def math_rows(tmp_path: Path, items: list[tuple[str, str]], name: str = "rows"):
    """Rows as ingest makes them from (question, answer) pairs (the demo-math layout)."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in items))
    return ingest([SourceSpec(str(path), load_preset("demo-math"))], IngestConfig()).dataset


def bench(tmp_path: Path, items: list[tuple[str, str]], name: str = "bench") -> Benchmark:
    return Benchmark(name, math_rows(tmp_path, items, name), name)


def kinds_of(result, question: str) -> set[str]:
    row = next(r for r in result.dataset if r["question"] == question)
    return {e["kind"] for e in row["contamination"]}


# ---------------------------------------------------------------- hand-checked pieces


def test_words_normalisation_and_ngram_count():
    assert words("What's 15% of 80?  It is 12.") == ["what", "s", "15", "of", "80", "it", "is", "12"]
    assert words("What's 15%", "casefold") == ["what's", "15%"]
    assert words("What's 15%", "none") == ["What's", "15%"]
    tokens = "a b c d e f g h i j k l m n o".split()  # 15 words -> 15 - 13 + 1 = 3 distinct 13-grams
    assert len(ngram_hashes(tokens, 13)) == 3
    assert len(ngram_hashes(tokens[:12], 13)) == 0  # shorter than n: no n-gram
    assert len(ngram_hashes(["x"] * 20, 13)) == 1  # one repeated n-gram counts once


def test_frequency_cut_off_ignores_ngrams_in_too_many_items_or_prompts():
    # hashes stand for n-grams: 7 is in three items, 8 in one item, 9 in one item and three prompts
    items = [np.array([7, 8]), np.array([7]), np.array([7, 9])]
    rows = [np.array([7]), np.array([8, 9]), np.array([9]), np.array([9])]
    found, stats = ngram_matches(rows, items, max_item_count=3, max_prompt_count=3)
    # 7 in row 0 matches items 0, 1, 2 (shares 1/2, 1/1, 1/2); row 1 shares 8 with item 0 and 9 with item 2
    assert found == {(0, 0): 0.5, (0, 1): 1.0, (0, 2): 0.5, (1, 0): 0.5, (1, 2): 0.5, (2, 2): 0.5, (3, 2): 0.5}
    found, stats = ngram_matches(rows, items, max_item_count=2, max_prompt_count=3)
    assert (0, 0) not in found and (0, 1) not in found and stats["boilerplate_in_items"] == 1  # 7: in 3 items > 2
    assert found == {(1, 0): 0.5, (1, 2): 0.5, (2, 2): 0.5, (3, 2): 0.5}
    found, stats = ngram_matches(rows, items, max_item_count=2, max_prompt_count=2)
    assert found == {(1, 0): 0.5} and stats["boilerplate_in_prompts"] == 1  # 9: in 3 prompts > 2


# ---------------------------------------------------------------- planted items, real MiniLM


def test_planted_verbatim_reworded_changed_numbers_and_short_items(tmp_path, embedder):
    items = [json.loads(line) for line in DEMO_BENCHMARK.read_text().splitlines()]
    benchmark = Benchmark("demo", math_rows(tmp_path, [(i["question"], i["answer"]) for i in items], "demo"), "demo")
    reworded = ("There are 8 rows of apple trees on a farm with 12 trees in every row. If a storm blows down 15 of the "
                "trees, how many apple trees remain standing?")  # cosine 0.969 with FARMER (MiniLM)
    reworded_cyclist = ("A cyclist travels 3 hours at 18 km per hour, then 2 hours at 12 km per hour. What total "
                        "distance in kilometres does she cover?")  # 0.948
    changed = FARMER.replace("8 rows", "9 rows").replace("12 trees", "11 trees").replace("15 trees", "14 trees")  # 0.970
    short = "What is 7 times 8?"  # 5 words: no 13-gram; the same text and answer as an item
    short_other_answer = "How many minutes are there in 4.5 hours?"  # the item's text, another answer
    clean = "A shop sells pencils at 3 for 1 dollar. How many pencils can Maya buy with 5 dollars?"
    ds = math_rows(tmp_path, [(FARMER, "81"), (reworded, "81"), (reworded_cyclist, "78"), (changed, "85"),
                              (short, "56"), (short_other_answer, "300"), (clean, "15")])
    result = decontaminate(ds, DecontaminateConfig(suite=None), benchmarks=[benchmark], embedder=embedder)
    kept = set(result.dataset["question"])
    assert kept == {changed, short_other_answer, clean}  # matched rows are dropped by default
    marked = decontaminate(ds, DecontaminateConfig(suite=None, mark_only=True), benchmarks=[benchmark],
                           embedder=embedder)
    assert len(marked.dataset) == 7
    assert kinds_of(marked, FARMER) == {"ngram", "semantic", "answer"}
    farmer = next(r for r in marked.dataset if r["question"] == FARMER)["contamination"]
    assert {(e["benchmark"], e["item_id"]) for e in farmer} == {("demo", benchmark.rows["id"][0])}
    assert next(e for e in farmer if e["kind"] == "ngram")["score"] == 1.0  # all of the item's 13-grams
    assert kinds_of(marked, reworded) == {"semantic"} and kinds_of(marked, reworded_cyclist) == {"semantic"}
    assert kinds_of(marked, short) == {"answer", "semantic"}  # no n-gram: 5 words

    for row in (changed, short_other_answer, clean):
        assert kinds_of(marked, row) == set()
    r = marked.report
    assert r["benchmarks"]["demo"] | {"origin": None} == {"items": 4, "origin": None, "ngram": 1, "semantic": 4,
                                                           "answer": 2, "rows": 4}
    assert r["rows_matched"] == 4 and r["dropped"] == 0 and result.report["dropped"] == 4
    # refused by the guards at cosine >= 0.92: the changed-numbers twin (numbers) and the other answer (answer)
    assert r["semantic_pairs_refused_by_guards"] == 2
    assert r["ngram"]["items_shorter_than_n"] == 2
    assert {e["row"]["text"] for e in r["examples"]["answer"]} == {FARMER, short}


# Two planted reworded items the full-size benchmark missed at the old 0.88 (cosine 0.872 both there), and a look-alike
COEFFICIENT = "What is the coefficient of $x^2y^2$ in the expansion of $(x+y)^4+(x+2y)^4$?"  # MATH test, answer 30
PROCREATING = ("What is procreating too much likely to lead to?",  # CommonsenseQA train, answer E
               ["having children", "feeling good", "food shortage", "exhaustion", "overpopulation"])


def test_default_thresholds_find_rewordings_below_0_88_and_the_guards_still_refuse_look_alikes(embedder):
    """Issue 24: reworded recall was 0.880 at math/general 0.88 (target 0.9); at 0.86 it is 0.915 with no other match
    added (docs/results/decontamination.md). These two rewordings come from that run (words dropped, "what is" ->
    "tell me", options reversed); the look-alike is the same stem with other numbers."""
    from datasets import Dataset

    config = DecontaminateConfig(suite=None, mark_only=True, ngram=0)  # the semantic pass alone
    assert [config.threshold_of(d) for d in ("math", "general", "safety", "code")] == [0.86, 0.86, 0.86, 0.88]
    items = Dataset.from_list([
        {"id": "coef", "domain": "math", "question": COEFFICIENT, "choices": None, "reference": "30"},
        {"id": "procreate", "domain": "general", "question": PROCREATING[0], "choices": PROCREATING[1],
         "reference": "E"}])
    reworded_math = "Here is a problem for you. tell me the coefficient of $x^2y^2$ in the of $(x+y)^4+(x+2y)^4$?"
    reworded_general = "Here is a problem for you. tell me procreating too much likely to lead"
    look_alike = COEFFICIENT.replace("(x+2y)^4", "(x+3y)^4")  # another problem: answer 60
    rows = Dataset.from_list([
        {"id": "r-math", "domain": "math", "question": reworded_math, "choices": None, "reference": "30"},
        {"id": "r-general", "domain": "general", "question": reworded_general,
         "choices": list(reversed(PROCREATING[1])), "reference": "A"},
        {"id": "look-alike", "domain": "math", "question": look_alike, "choices": None, "reference": "60"}])
    result = decontaminate(rows, config, benchmarks=[Benchmark("bench", items, "test")], embedder=embedder)
    found = {r["id"]: r["contamination"] for r in result.dataset}
    for row, item in (("r-math", "coef"), ("r-general", "procreate")):
        (match,) = found[row]
        assert (match["item_id"], match["kind"]) == (item, "semantic")
        assert 0.86 <= match["score"] < 0.88, match  # found now, missed at the old default
    assert found["look-alike"] == []  # above the threshold, refused by the number guard
    assert result.report["semantic_pairs_refused_by_guards"] == 1


def test_shared_boilerplate_is_not_contamination_thanks_to_the_cut_off(tmp_path):
    """Three benchmark items open with the same 17-word instruction; a prompt with that instruction and its own
    question shares 5 of its 13-grams with each, and nothing else."""
    questions = ["How many legs does a spider have?", "What is the capital city of Peru?",
                 "Which planet is closest to the sun?"]
    benchmark = bench(tmp_path, [(f"{BOILERPLATE} {q}", "x") for q in questions])
    row = f"{BOILERPLATE} Name the gas that plants take in from the air."
    ds = math_rows(tmp_path, [(row, "carbon dioxide")])
    cut = decontaminate(ds, DecontaminateConfig(suite=None, semantic=False, max_item_count=2, mark_only=True),
                        benchmarks=[benchmark])
    assert cut.dataset[0]["contamination"] == [] and cut.report["ngram"]["boilerplate_in_items"] == 5
    loose = decontaminate(ds, DecontaminateConfig(suite=None, semantic=False, max_item_count=3, mark_only=True),
                          benchmarks=[benchmark])
    assert {e["kind"] for e in loose.dataset[0]["contamination"]} == {"ngram"}
    assert len(loose.dataset[0]["contamination"]) == 3  # without the cut-off, every item would count
    # the default cut-off in prompts: an n-gram in more than max(10, 0.1% of the prompts) prompts is boilerplate too
    many = math_rows(tmp_path, [(f"{BOILERPLATE} Question number {i}?", "x") for i in range(11)], "many")
    by_prompts = decontaminate(many, DecontaminateConfig(suite=None, semantic=False), benchmarks=[benchmark])
    assert len(by_prompts.dataset) == 11 and by_prompts.report["ngram"]["boilerplate_in_prompts"] >= 5


def test_normalisation_and_n_are_settings(tmp_path):
    benchmark = bench(tmp_path, [(CYCLIST, "78")])
    shouted = CYCLIST.upper().replace(",", " ,")
    ds = math_rows(tmp_path, [(shouted, "78")])
    cfg = dict(suite=None, semantic=False, answer_leakage=False, mark_only=True)
    assert len(decontaminate(ds, DecontaminateConfig(**cfg), benchmarks=[benchmark]).dataset[0]["contamination"]) == 1
    raw = decontaminate(ds, DecontaminateConfig(normalize="none", **cfg), benchmarks=[benchmark])
    assert raw.dataset[0]["contamination"] == []  # upper case words are other words when nothing is normalised
    # 30 words: with n = 31 there is no n-gram at all, with n = 30 one
    assert decontaminate(ds, DecontaminateConfig(ngram=31, **cfg), benchmarks=[benchmark]).report["benchmarks"][
        "bench"]["ngram"] == 0
    exact = decontaminate(ds, DecontaminateConfig(ngram=30, **cfg), benchmarks=[benchmark])
    assert exact.dataset[0]["contamination"][0]["score"] == 1.0


# ---------------------------------------------------------------- real benchmarks


def _read(path: Path, preset: str | None = None, mapping: Path | None = None):
    m = load_mapping(mapping) if mapping else load_preset(preset)
    return ingest([SourceSpec(str(path), m)], IngestConfig(on_error="skip")).dataset


@pytest.mark.slow
def test_real_overlaps():
    mmlu = _read(shared_data("mmlu", "test"), "mmlu-csv")
    pro_file = shared_data("mmlu_pro_math_model_outputs",
                           "model_outputs_Meta-Llama-3_1-70B-Instruct_5shots.math.json")
    pro = _read(pro_file, "mmlu-pro")
    cfg = DecontaminateConfig(suite=None, semantic=False, mark_only=True)
    found = decontaminate(mmlu, cfg, benchmarks=[Benchmark("mmlu-pro-math", pro, "test")])
    b = found.report["benchmarks"]["mmlu-pro-math"]
    assert 300 <= b["rows"] <= 450 and b["answer"] >= 1  # 364 and 4 here (module docstring: matches read)
    rows = {r["question"]: r["contamination"] for r in found.dataset if r["contamination"]}
    assert "Write the ratio of 96 runners to 216 swimmers in simplest form." in rows
    assert any(e["kind"] == "answer" for e in rows["Find the product of 0.07 • 5.8."])

    csqa = _read(shared_data("commonsenseqa", "train_rand_split.jsonl"), "commonsenseqa-raw")
    none = decontaminate(mmlu, cfg, benchmarks=[Benchmark("csqa", csqa, "test")])
    assert none.report["rows_matched"] == 0 and none.report["ngram"]["boilerplate_in_prompts"] > 0

    gsm8k = _read(shared_data("gsm8k", "train.jsonl"), "gsm8k")
    math = _read(shared_data("math", "test_minus_math500.jsonl"), "math")
    assert decontaminate(gsm8k, cfg, benchmarks=[Benchmark("math", math, "test")]).report["rows_matched"] == 0


def test_suite_benchmarks_are_the_eval_suites_tasks_and_absent_data_is_skipped_aloud(tmp_path):
    found, skipped = suite_benchmarks("paper", str(tmp_path))  # a data root without any file
    assert found == []
    reasons = {s["benchmark"]: s["reason"] for s in skipped}
    assert "strongreject" in reasons and "aime24" in reasons  # the suite's benchmarks with neither a local file nor the Hub
    assert "gsm8k" in reasons and "data file" in reasons["gsm8k"]  # an absent file, said so


@pytest.mark.slow
def test_suite_benchmarks_read_the_shared_data_as_gdpo_eval_does():
    root = shared_data("gsm8k").parent
    found, skipped = suite_benchmarks("paper", str(root))
    names = {b.name: len(b.rows) for b in found}
    from gdpo.eval.data import read_rows

    assert names["gsm8k"] == len(read_rows(task="gsm8k", path="gsm8k/train.jsonl", preset="gsm8k", data_root=root))
    assert "mmlu_cloze" in names and "commonsenseqa_cloze" in names  # the letter variants read the same files
    assert not any(s["benchmark"] == "gsm8k" for s in skipped)


# ---------------------------------------------------------------- the verb


def test_cli_drops_the_planted_item_and_refuses_a_bad_benchmark_file(tmp_path):
    prompts = tmp_path / "prompts"
    save_stage(math_rows(tmp_path, [(FARMER, "81"), ("What is 2 + 2?", "4")]), prompts)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": CYCLIST, "answer": "78"}) + "\n" + '{"question": "broken\n')
    r = run_cli("decontaminate", prompts, "--out", tmp_path / "bad-out", "--suite", "none", "--benchmark",
                f"demo-math={bad}", env={"METAKL_CACHE_DIR": tmp_path / "cache"}, in_process=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert len(r.stderr.strip().splitlines()) == 1 and f"{bad} line 2" in line, r.stderr
    assert not (tmp_path / "bad-out").exists()

    r = run_cli("decontaminate", prompts, "--out", tmp_path / "out", "--suite", "none", "--no-semantic", "--benchmark",
                f"demo-math={DEMO_BENCHMARK}", env={"METAKL_CACHE_DIR": tmp_path / "cache"}, in_process=True)
    assert r.returncode == 0, r.stderr
    out = load_stage(tmp_path / "out")
    assert out["question"] == ["What is 2 + 2?"] and out["contamination"] == [[]]
    report = json.loads((tmp_path / "out" / "decontaminate_report.json").read_text())
    assert report["rows_in"] == 2 and report["rows_out"] == 1 and report["skipped_benchmarks"] == []
    assert report["benchmarks"]["demo-math:benchmark"]["rows"] == 1


def test_config_errors_are_one_line():
    for bad, said in (({"normalize": "stem"}, "normalize: expected one of"), ({"threshold": 1.5}, "threshold"),
                      ({"max_prompt_share": 0}, "max_prompt_share"), ({"ngram": -1}, "ngram")):
        with pytest.raises(UserError, match=said):
            DecontaminateConfig(**bad)
    assert DecontaminateConfig(suite="none").suite is None


def test_the_dataset_card_has_a_decontamination_section(tmp_path):
    from metakl.stages.publish import PublishConfig, publish, write_release

    ds = math_rows(tmp_path, [(FARMER, "81"), ("What is 2 + 2?", "4"), (CYCLIST, "78")])
    benchmark = bench(tmp_path, [(FARMER, "81")], "farm-bench")
    result = decontaminate(ds, DecontaminateConfig(suite=None, semantic=False), benchmarks=[benchmark])
    folder = tmp_path / "decontaminate"
    save_stage(result.dataset, folder, result.report, "decontaminate_report.json")
    released = publish(load_stage(folder), PublishConfig(), input_dir=folder)
    text = (write_release(released, tmp_path / "release") / "README.md").read_text()
    section = text[text.index("## Decontamination"):].split("\n## ")[0]
    assert "shared 13-grams of words (normalisation: words;" in section and "embedding cosine" not in section
    assert "1 prompts matched an item and were left out of this release" in section
    assert "| farm-bench | 1 | 1 | 0 | 1 | 1 |" in section
    assert "| decontaminate | 3 | 2 |" in text  # the stage's row in "How it was built"


def test_a_run_config_with_a_missing_benchmark_file_or_suite_fails_before_any_stage(tmp_path):
    from metakl.pipeline import load_plan

    base = {"run_dir": str(tmp_path / "run"), "ingest": {"sources": ["demo-math"]}}
    with pytest.raises(UserError, match=r"decontaminate: 'benchmarks': no such file or folder: .*missing\.jsonl"):
        load_plan(None, {**base, "decontaminate": {"suite": "none", "benchmarks": ["demo-math=missing.jsonl"]}})
    with pytest.raises(UserError, match="decontaminate: unknown suite 'nosuch'"):
        load_plan(None, {**base, "decontaminate": {"suite": "nosuch"}})
    plan = load_plan(None, {**base, "decontaminate": {"suite": "none", "benchmarks": [f"demo-math={DEMO_BENCHMARK}"]}})
    assert [s.folder.name for s in plan.stages] == ["01-ingest", "09-decontaminate"]


def test_verb_flags_are_the_config_fields_with_their_defaults():
    import dataclasses

    import typer.main

    from metakl.cli import _register_commands, app

    _register_commands()
    command = typer.main.get_command(app).commands["decontaminate"]
    fields = {f.name: f.default for f in dataclasses.fields(DecontaminateConfig)}
    # a setting named like a model option (batch_size, cache_dir) takes the parameter name NAME_setting
    params = {p.name.removesuffix("_setting"): p.default for p in command.params}
    assert set(fields) - set(params) == set()  # every setting is a flag too (generated from the config, issue 22)
    for name, default in params.items():
        if name in fields and default is not None and fields[name] is not dataclasses.MISSING:
            assert default == fields[name], name
