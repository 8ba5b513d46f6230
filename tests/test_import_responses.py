"""import-responses on the real response files in ../shared/data (prompt rows built here by hand)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
from datasets import Dataset

from conftest import run_cli, shared_data
from metakl.errors import UserError
from metakl.schema import features, make_id, normalize_text
from metakl.stages.import_responses import attach_responses, list_response_presets, load_response_mapping
from metakl.stages.reward import reward


def prompt_row(question, domain, reference, source, choices=(), meta=None):
    return {"id": make_id(question, source), "source": source, "domain": domain, "question": question,
            "reference": reference, "choices": list(choices), "meta": json.dumps(meta or {}), "errors": []}


def test_presets_listed():
    assert {"qwen25math", "mmlu-pro", "xstest", "generic"} <= set(list_response_presets())


def test_qwen25math_groups_attach_and_score():
    path = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    records = [json.loads(line) for line in path.open()][:12]
    rows = [prompt_row("  " + r["question"].upper() + " ", "math", r["answer"], "math") for r in records]  # normalized match
    rows.append(prompt_row("A prompt with no responses in the file", "math", "1", "math"))
    ds = Dataset.from_list(rows, features=features())
    out, report = attach_responses(ds, [path], load_response_mapping("qwen25math"))
    assert report["matched"] == 12 and report["unmatched"] == 88  # the file has 100 problems
    assert report["responses_per_model"] == {"Qwen2.5-Math-Instruct": 96}
    assert [len(r) for r in out["responses"]] == [8] * 12 + [0]
    first = out[0]["responses"][0]
    assert first["text"] == records[0]["response"][0] and first["answer"] == "420" and first["reward"] is None
    _result = reward(out)
    scored, rep = _result.dataset, _result.report
    # Correct answers score 0.8 + 0.1 * format + 0.1 * length >= 0.8, wrong ones at most 0.2. Problem idx 3 is left
    # out: the file flags "4:30 p.m." wrong for gold "\text{4:30 p.m.}" (its own normalizer mangles the gold).
    for rec, row in zip(records, scored.to_list()):
        if rec["idx"] != 3:
            assert [resp["reward"] >= 0.8 for resp in row["responses"]] == rec["score"], rec["idx"]
    assert rep["extraction_failure_rate"] < 0.05
    # Importing again adds nothing (same model, same text).
    again, rep2 = attach_responses(out, [path], load_response_mapping("qwen25math"))
    assert rep2["duplicates_skipped"] == 96 and [len(r) for r in again["responses"]] == [8] * 12 + [0]


def test_mmlu_pro_one_response_per_model():
    folder = shared_data("mmlu_pro_math_model_outputs")
    first_file = sorted(folder.glob("*.json"))[0]
    records = json.loads(first_file.read_text())[:6]
    rows = [prompt_row(r["question"], "general", r["answer"], "mmlu-pro", choices=r["options"]) for r in records]
    ds = Dataset.from_list(rows, features=features())
    out, report = attach_responses(ds, [folder], load_response_mapping("mmlu-pro"))
    assert len(report["files"]) == 8
    models = {m for m in report["responses_per_model"]}
    assert "Llama-2-7b-hf" in models and "gemini-1.5-pro-002" in models and len(models) == 8
    by_model = {}
    for path in sorted(folder.glob("*.json")):
        for rec in json.loads(path.read_text()):
            by_model.setdefault(rec["question_id"], {})[path.name] = rec
    for row, rec in zip(out.to_list(), records):
        responses = row["responses"]
        assert len(responses) == len({r["model"] for r in responses}) == len(by_model[rec["question_id"]])
        for resp in responses:
            assert resp["answer"] in (None, *"ABCDEFGHIJ")
    _result = reward(out)
    scored, rep = _result.dataset, _result.report
    assert rep["responses"] == report["responses"] and rep["groups"] == 6


def test_xstest_completions_match_by_question_and_by_id():
    prompts = list(csv.DictReader(shared_data("xstest", "xstest_prompts.csv").open(encoding="utf-8")))[:10]
    rows = [prompt_row(p["prompt"], "safety", "comply" if p["label"] == "safe" else "refuse", "xstest",
                       meta={"id": p["id"], "type": p["type"]}) for p in prompts]
    rows[3]["question"] = "reworded: " + rows[3]["question"]  # only its meta id can match it now
    ds = Dataset.from_list(rows, features=features())
    folder = shared_data("xstest", "model_completions")
    out, report = attach_responses(ds, [folder], load_response_mapping("xstest"))
    assert report["matched"] == 50 and report["matched_by_id"] == 5 and report["unmatched"] == 2200
    assert all(len(r) == 5 for r in out["responses"])
    assert {r["model"] for r in out[0]["responses"]} == {"gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct"}
    _result = reward(out)
    scored, rep = _result.dataset, _result.report
    assert rep["safety_judge"]["verdict_sources"] == {"rules": 50}
    assert 0 <= rep["mean_reward_per_domain"]["safety"] <= 1


def test_mapping_errors_name_the_place(tmp_path):
    bad = tmp_path / "out.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "response": "r"}) + "\n")
    ds = Dataset.from_list([prompt_row("q", "math", "1", "x")], features=features())
    with pytest.raises(UserError, match=r"out.jsonl line 1: no field 'question'"):
        attach_responses(ds, [bad], load_response_mapping("generic"))
    mapping_file = tmp_path / "m.yaml"
    mapping_file.write_text("question: prompt\nresponse: response\n")
    with pytest.raises(UserError, match="unknown key"):
        load_response_mapping(str(mapping_file))
    mapping_file.write_text("question: prompt\nresponses: response\n")
    out, report = attach_responses(ds, [bad], load_response_mapping(str(mapping_file)))
    assert out[0]["responses"][0]["model"] == "out" and out[0]["responses"][0]["answer"] is None


def test_end_to_end_after_real_ingest():
    """Prompts from the ingest stage (MATH test minus MATH-500, XSTest), then imported responses, then rewards."""
    from metakl.stages.ingest import SourceSpec, ingest, load_preset

    math_file = shared_data("math", "test_minus_math500.jsonl")
    xstest_file = shared_data("xstest", "xstest_prompts.csv")
    ds = ingest([SourceSpec(str(math_file), load_preset("math")), SourceSpec(str(xstest_file), load_preset("xstest"))]).dataset
    ds, rep_q = attach_responses(ds, [shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")],
                                 load_response_mapping("qwen25math"))
    ds, rep_x = attach_responses(ds, [shared_data("xstest", "model_completions")], load_response_mapping("xstest"))
    # 95 of the 100 Qwen problems are in this MATH file (the other 5 are MATH-500 problems, held back)
    assert rep_q["matched"] == 95 and rep_q["responses"] == 760
    # one XSTest prompt reads differently in the completion files: its 5 completions match by id
    assert rep_x["matched"] == 2250 and rep_x["matched_by_id"] == 5
    _result = reward(ds.filter(lambda r: len(r["responses"]) > 0))
    scored, report = _result.dataset, _result.report
    assert report["groups"] == 95 + 450 and report["responses"] == 760 + 2250
    assert report["correct_rate_per_domain"]["math"] > 0.85
    print("\nend to end:", {k: report[k] for k in ("mean_reward_per_domain", "correct_rate_per_domain",
                                                 "zero_variance_share", "extraction_failure_rate")})


# --- response files go through metakl.readers: every unreadable record names its file and line ---------------------


def _one_prompt() -> Dataset:
    return Dataset.from_list([prompt_row("q", "math", "1", "x")], features=features())


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", b'{"question": "q", "response": "r"}\n{"question": "q", "response": "r"\n',
         "bad.jsonl line 2: field '<line>': expected one complete JSON object per line, got Expecting ',' delimiter"),
        ("latin1.jsonl", b'{"question": "q", "response": "r"}\n{"question": "q", "response": "caf\xe9"}\n',
         "latin1.jsonl line 2: field '<line>': expected UTF-8 text, got byte 0xe9 at column 35"),
        ("cut.json", b'[\n {"question": "q", "response": "r"},\n {"question": "q"',
         "cut.json line 3: field '<file>': expected a complete JSON array"),
        ("wide.csv", b'question,response\nq,"two\nlines"\nq,r,extra\n',
         "wide.csv line 4: field '<line>': expected 2 fields as in the header, got 3 fields"),
        ("empty.jsonl", b"\n\n", "empty.jsonl: empty file (expected at least one record)"),
    ],
)
def test_unreadable_response_files_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as exc:
        attach_responses(_one_prompt(), [path], load_response_mapping("generic"))
    assert str(exc.value).startswith(f"{tmp_path}/{message}"), str(exc.value)


def test_csv_records_spanning_lines_and_other_suffixes(tmp_path):
    csv_file = tmp_path / "multi.csv"
    csv_file.write_text('question,response\nq,"first\nline"\nq,second\n')
    out, report = attach_responses(_one_prompt(), [csv_file], load_response_mapping("generic"))
    assert [r["text"] for r in out[0]["responses"]] == ["first\nline", "second"]
    other = tmp_path / "answers.out"  # a suffix the readers do not know: read as JSON lines, as before
    other.write_text(json.dumps({"question": "q", "response": "third"}) + "\n")
    out, _ = attach_responses(out, [other], load_response_mapping("generic"))
    assert [r["text"] for r in out[0]["responses"]][-1] == "third"


def test_folder_without_response_files(tmp_path):
    (tmp_path / "notes.md").write_text("nothing to read")
    with pytest.raises(UserError, match=r"no data files here \(expected \.csv, \.json, \.jsonl\)"):
        attach_responses(_one_prompt(), [tmp_path], load_response_mapping("generic"))


# --- matching: id first, then (source +) question; a text found in several sources is ambiguous (issue 20 item 4) ---


def _matching_rows():
    rows = [
        prompt_row("What is 2+2?", "general", "B", "mmlu"),  # 0
        prompt_row("What is 2+2?", "math", "C", "pro", meta={"qid": "7"}),  # 1: the same text in another source
        prompt_row("Same text twice", "math", "A", "pro", meta={"qid": "8"}),  # 2
        prompt_row("Same text twice", "math", "D", "pro", meta={"qid": "9"}),  # 3: another question, the same text
        prompt_row("Repeated in one source", "math", "1", "gsm"),  # 4
        prompt_row("Repeated in one source", "math", "1", "gsm"),  # 5
    ]
    rows[5]["id"] = "gsm-second"
    return Dataset.from_list(rows, features=features())


def _records(tmp_path, records):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _mapping(tmp_path, extra=""):
    path = tmp_path / f"m{abs(hash(extra))}.yaml"
    path.write_text("question: question\nresponses: response\nmodel_name: m\n" + extra)
    return load_response_mapping(str(path))


def test_matching_by_id_then_question_and_ambiguity(tmp_path):
    answers = _records(tmp_path, [
        {"question": "What is 2+2?", "qid": "7", "response": "r-7"},  # id 7: row 1 only, not the MMLU row
        {"question": "Same text twice", "qid": "9", "response": "r-9"},  # row 3, not row 2 (which is qid 8)
        {"question": "reworded question", "qid": "8", "response": "r-8"},  # by id alone: row 2
        {"question": "Repeated in one source", "response": "r-rep"},  # both rows of source gsm
        {"question": "What is 2+2?", "response": "r-any"},  # no id: mmlu or pro? ambiguous, attached to none
        {"question": "What is 2+2?", "qid": "8", "response": "r-conflict"},  # id says row 2, text says row 0
        {"question": "nowhere", "qid": "99", "response": "r-none"},
    ])
    out, report = attach_responses(_matching_rows(), [answers], _mapping(tmp_path, "id: qid\n"))
    assert [[r["text"] for r in rs] for rs in out["responses"]] == [[], ["r-7"], ["r-8"], ["r-9"], ["r-rep"], ["r-rep"]]
    assert {k: report[k] for k in ("records", "matched", "matched_by_id", "attached_to_several", "unmatched",
                                   "ambiguous")} == {"records": 7, "matched": 4, "matched_by_id": 1,
                                                     "attached_to_several": 1, "unmatched": 1, "ambiguous": 2}
    assert report["ambiguous_examples"] == [
        "answers.jsonl line 5: 'What is 2+2?' (rows of sources mmlu, pro)",
        "answers.jsonl line 6: 'What is 2+2?' (its id '8' and its question name different rows)",
    ]
    # Text alone (a mapping without ids): the shared text is refused, the repeated one in one source goes to both.
    out, report = attach_responses(_matching_rows(), [answers], _mapping(tmp_path))
    assert report["ambiguous"] == 3 and out[0]["responses"] == [] and out[1]["responses"] == []
    # Naming the answers' source: its rows only, every candidate of it.
    out, report = attach_responses(_matching_rows(), [answers], _mapping(tmp_path, "source: pro\n"))
    assert [[r["text"] for r in rs] for rs in out["responses"]] == [
        [], ["r-7", "r-any", "r-conflict"], ["r-9"], ["r-9"], [], []]
    assert report["ambiguous"] == 0 and report["attached_to_several"] == 1
    with pytest.raises(UserError, match=r"mapping m\d+: its answers belong to source 'nope', and the input has no row "
                                        r"of it \(its sources: gsm, mmlu, pro\)"):
        attach_responses(_matching_rows(), [answers], _mapping(tmp_path, "source: nope\n"))


def test_summaries_report_ambiguous_matches(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from metakl.io import save_stage

    save_stage(_matching_rows(), tmp_path / "in")
    answers = _records(tmp_path, [{"question": "What is 2+2?", "response": "\\boxed{B}"},
                                  {"question": "Repeated in one source", "response": "\\boxed{1}"}])
    mapping = tmp_path / "m.yaml"
    mapping.write_text("question: question\nresponses: response\nmodel_name: m\n")
    for verb, args in (("import-responses", [str(answers), "--mapping", str(mapping)]),
                       ("score", ["--responses", str(answers), "--mapping", str(mapping), "--no-plots"])):
        proc = run_cli(verb, tmp_path / "in", *args, "--out", tmp_path / verb, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert ("imported: 2 records, 1 matched (0 by id alone, 1 to several rows of one source), 0 unmatched, "
                "1 ambiguous (not attached)") in proc.stdout, proc.stdout
        assert ("first ambiguous: answers.jsonl line 1: 'What is 2+2?' (rows of sources mmlu, pro); give the mapping "
                "a `source` (or an `id`) to attach them") in proc.stdout


def test_mmlu_pro_answers_stay_on_mmlu_pro_rows_among_mmlu_and_math():
    """The issue's data: MMLU-Pro math questions ingested after MMLU and MATH, 422 of whose texts also occur there.
    At b795326 the first row with the text won: MMLU/MATH rows got MMLU-Pro answers (checked against their own
    references) and those MMLU-Pro rows got none."""
    from metakl.stages.ingest import SourceSpec, ingest, load_preset
    from metakl.stages.score import ScoreConfig, score

    folder = shared_data("mmlu_pro_math_model_outputs")
    mmlu, math = shared_data("mmlu", "test"), shared_data("math", "test_minus_math500.jsonl")
    pro = load_preset("mmlu-pro")
    pro_file = folder / "model_outputs_Llama-2-7b-hf_5shots.math.json"
    ds = ingest([SourceSpec(str(mmlu), load_preset("mmlu-csv")), SourceSpec(str(math), load_preset("math")),
                 SourceSpec(str(pro_file), pro)]).dataset
    by_text = defaultdict(set)
    for source, question in zip(ds["source"], ds["question"]):
        by_text[normalize_text(question)].add(source)
    shared = {t for t, s in by_text.items() if len(s) > 1 and "mmlu-pro" in s}
    assert len(shared) > 400  # the collisions that misplaced answers

    # What each MMLU-Pro row must get: the records of its own question id, one per model file.
    expected = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        model = path.name.removeprefix("model_outputs_").split("_5shots")[0]
        for rec in json.loads(path.read_text()):
            expected[str(rec["question_id"])].append((model, rec["generated_text"] if "generated_text" in rec
                                                      else rec["model_outputs"]))
    out, report = attach_responses(ds, [folder], load_response_mapping("mmlu-pro"))
    pro_rows = 0
    for row in out:
        got = sorted((r["model"], r["text"]) for r in row["responses"])
        if row["source"] != "mmlu-pro":
            assert got == [], (row["source"], row["question"][:60])
            continue
        pro_rows += 1
        assert got == sorted(expected[str(json.loads(row["meta"])["question_id"])]), row["question"][:60]
    assert pro_rows > 1300 and report["ambiguous"] == 0

    # Scored: every MMLU-Pro row has its 8 (7 where DeepSeek skipped it) models' proficiency, no other row has any,
    # and each model's accuracy is the files' own (pred == answer) within 0.01.
    result = score(ds, ScoreConfig(responses=(str(folder),), preset="mmlu-pro", plots=False))
    prof = result.dataset
    assert all((len(p) >= 7) == (s == "mmlu-pro") for s, p in zip(prof["source"], prof["proficiency"]))
    acc = {m: v["accuracy"] for m, v in result.report["models"].items()}
    file_acc = {}
    for path in sorted(folder.glob("*.json")):
        model = path.name.removeprefix("model_outputs_").split("_5shots")[0]
        records = json.loads(path.read_text())
        file_acc[model] = np.mean([r["pred"] == r["answer"] for r in records])
    assert max(abs(acc[m] - file_acc[m]) for m in file_acc) < 0.01, (acc, file_acc)
    print("\nmmlu-pro among mmlu+math:", {m: round(a, 3) for m, a in acc.items()})
