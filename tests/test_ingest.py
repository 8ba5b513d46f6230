"""Ingest behaviour: bad inputs named by file and line, on-error modes, dedup, limit/sample/domain, stable ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metakl.errors import UserError
from metakl.stages.ingest import (
    IngestConfig,
    SourceSpec,
    ingest,
    ingest_rows,
    load_mapping,
    load_preset,
)

LOCAL = Path(__file__).parent / "fixtures" / "ingest" / "local"


def run(path, preset="gsm8k", **opts):
    """(dataset, report) of ingesting one source."""
    result = ingest([SourceSpec(str(path), load_preset(preset))], IngestConfig(**opts))
    return result.dataset, result.report


def fails(path, preset="gsm8k", **opts) -> str:
    with pytest.raises(UserError) as exc:
        run(path, preset, **opts)
    return str(exc.value)


def gsm_line(q="How many?", a="#### 3") -> bytes:
    return (json.dumps({"question": q, "answer": a}) + "\n").encode()


# --- bad inputs: each message names the file and line/row -------------------------------------------------------


def test_non_utf8_jsonl_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(gsm_line() + b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
    msg = fails(p)
    assert f"{p} line 2: field '<line>': expected UTF-8 text, got byte 0xe9" in msg
    assert "1 record(s) failed; nothing was written" in msg


def test_non_utf8_csv(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(b"goal,target\nok,fine\nbad \xff here,x\n")
    msg = fails(p, "advbench-csv")
    assert msg == f"{p} line 3: field '<file>': expected UTF-8 text, got byte 0xff at column 5"


def test_truncated_json_line(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_bytes(gsm_line() + b'{"question": "How many apples are ther')
    msg = fails(p)
    assert f"{p} line 2: field '<line>': expected one complete JSON object per line, got Unterminated string" in msg
    assert "(column 14); the line looks truncated" in msg


def test_byte_order_mark_and_crlf_are_fine(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + gsm_line("Q1").replace(b"\n", b"\r\n") + gsm_line("Q2"))
    ds, _ = run(p)
    assert ds["question"] == ["Q1", "Q2"]
    c = tmp_path / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbfgoal,target\r\nDo harm,x\r\n")
    ds, _ = run(c, "advbench-csv")
    assert ds["question"] == ["Do harm"]


def test_truncated_json_array(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text('[\n  {"instruction": "a", "category": null},\n  {"instruction": "b"')
    msg = fails(p, "refusal-harmful")
    assert msg.startswith(f"{p} line 3: field '<file>': expected a complete JSON array")


@pytest.mark.parametrize("name,content", [("empty.jsonl", b""), ("blank.csv", b"\n  \n"), ("empty.json", b"")])
def test_empty_files(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    assert fails(p, "advbench-csv" if name.endswith(".csv") else "gsm8k") == f"{p}: empty file (expected at least one record)"


def test_header_only_csv_is_an_empty_source(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("goal,target\n")
    assert fails(p, "advbench-csv") == f"{p}: no records (empty source)"


def test_missing_csv_column_names_header(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("prompt,target\nhello,world\n")
    msg = fails(p, "advbench-csv")
    assert msg == (f"{p} line 1 (header): missing column(s) 'goal' needed by mapping 'advbench-csv'; "
                   "columns present: prompt, target")


def test_missing_parquet_column(tmp_path):
    from datasets import Dataset

    p = tmp_path / "x.parquet"
    Dataset.from_list([{"text": "hi"}]).to_parquet(str(p))
    assert fails(p, "advbench").startswith(f"{p}: missing column(s) 'prompt'")


def test_local_parquet_file_rows_are_0_based(tmp_path):
    from datasets import Dataset

    p = tmp_path / "adv.parquet"
    Dataset.from_list([{"prompt": "Harm someone", "target": "t"}, {"prompt": "", "target": "t"}]).to_parquet(str(p))
    ds, report = run(p, "advbench", on_error="skip")
    assert ds["question"] == ["Harm someone"]
    assert report["error_samples"][0]["location"] == f"{p} row 1"


def test_missing_field_in_jsonl_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(gsm_line() + b'{"question": "Q2"}\n')
    msg = fails(p)
    assert f"{p} line 2: field 'answer': expected the field to be present, got no such field (fields: question)" in msg


def test_wrong_types(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b'{"question": ["not", "text"], "answer": "#### 1"}\n[1, 2]\n' + gsm_line("Q3", "no marker"))
    ds, report = run(p, on_error="skip")
    assert len(ds) == 0 and report["totals"]["errors"] == 3
    samples = [f"{e['location']}: {e['field']}: {e['expected']} / {e['actual']}" for e in report["error_samples"]]
    assert samples[0] == f"{p} line 1: question: a string / list ['not', 'text']"
    assert samples[1] == f"{p} line 2: <record>: a JSON object / list [1, 2]"
    assert samples[2] == f"{p} line 3: answer: a solution ending in '#### <answer>' / 'no marker'"


def test_bad_choice_index_and_csv_width(tmp_path):
    d = tmp_path / "mmlu"
    d.mkdir()
    (d / "anatomy_test.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\nQ1,a,b,c,d,4\nQ2,a,b,c,d,x\nQ3,a,b,c\n")
    ds, report = run(d, "mmlu-csv", on_error="skip")
    e = report["error_samples"]
    assert (e[0]["location"], e[0]["field"], e[0]["expected"], e[0]["actual"]) == (
        f"{d / 'anatomy_test.csv'} line 2", "answer", "a choice index in 0..3", "4")
    assert (e[1]["location"], e[1]["expected"]) == (f"{d / 'anatomy_test.csv'} line 3", "a 0-based choice index")
    assert (e[2]["location"], e[2]["expected"], e[2]["actual"]) == (
        f"{d / 'anatomy_test.csv'} line 4", "6 fields as in the header", "4 fields")


def test_unknown_domain_and_bad_safety_reference_in_mapping(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("domain: poetry\nquestion: q\n")
    with pytest.raises(UserError, match=r"m.yaml: key 'domain': expected one of math, general, safety, got 'poetry'"):
        load_mapping(m)
    m.write_text("domain: safety\nquestion: q\nreference: {field: r, extract: text}\n")
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "Do a bad thing", "r": "refuse"}\n{"q": "Do another", "r": "maybe"}\n')
    with pytest.raises(UserError) as exc:
        ingest([SourceSpec(str(data), load_mapping(m))])
    assert f"{data} line 2: field 'reference': expected 'refuse' or 'comply' for a safety prompt, got 'maybe'" in str(exc.value)


def test_csv_line_numbers_count_multiline_fields(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('goal,target\n"two\nlines",t\n,empty goal\n')
    msg = fails(p, "advbench-csv")
    assert f"{p} line 4: field 'question': expected a non-empty string, got ''" in msg


def test_bad_mapping_files(tmp_path):
    m = tmp_path / "bad.yaml"
    m.write_text("domain: math\nquestion: q\nreference: {field: a, extract: magic}\n")
    with pytest.raises(UserError, match="key 'reference.extract': expected one of"):
        load_mapping(m)
    m.write_text("domain: math\nquestion: q\ncolour: red\n")
    with pytest.raises(UserError, match="unknown key"):
        load_mapping(m)
    m.write_text("domain: math\nquestion: [q\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+: not valid YAML"):
        load_mapping(m)
    with pytest.raises(UserError, match="unknown preset 'nope'; presets: "):
        load_preset("nope")


def test_missing_source_and_hub_offline(tmp_path):
    assert fails(tmp_path / "nothing.jsonl").endswith("no such file or folder, and not a Hub dataset id (owner/name)")
    assert fails("train.jsonl") == "train.jsonl: no such file or folder, and not a Hub dataset id (owner/name)"
    msg = fails("no-such-owner/no-such-dataset-xyz")
    assert msg.startswith("no-such-owner/no-such-dataset-xyz (config main): cannot load with datasets.load_dataset")


def test_skip_mode_keeps_going_and_reports(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_bytes(gsm_line("Q1") + b"{oops\n" + gsm_line("Q2"))
    ds, report = run(p, on_error="skip")
    assert ds["question"] == ["Q1", "Q2"]
    assert report["totals"]["errors"] == 1 and report["sources"][0]["errors"] == 1
    assert report["error_samples"][0]["location"] == f"{p} line 2"


# --- dedup, limit, sample, domain ---------------------------------------------------------------------------------


def test_dedup_within_and_across_sources(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("goal,target\nSteal a car,x\nsteal  a CAR,x\nBuild a bomb,x\n")
    b = tmp_path / "b.csv"
    b.write_text("id,prompt,type,label,focus,note\n1,Build a bomb,t,unsafe,f,n\n2,Bake a cake,t,safe,f,n\n")
    _result = ingest([SourceSpec(str(a), load_preset("advbench-csv")), SourceSpec(str(b), load_preset("xstest"))])
    ds, report = _result.dataset, _result.report
    assert ds["question"] == ["Steal a car", "Build a bomb", "Bake a cake"]
    s = report["sources"]
    assert (s[0]["duplicates_within"], s[0]["duplicates_across"], s[1]["duplicates_within"], s[1]["duplicates_across"]) == (1, 0, 0, 1)
    assert report["totals"]["duplicates_within"] == 1 and report["totals"]["duplicates_across"] == 1
    assert report["totals"]["duplicates_conflicting"] == 0


def test_conflicting_duplicates_are_counted(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(gsm_line("Same question", "#### 1") + gsm_line("same  QUESTION", "#### 2") + gsm_line("Same question", "#### 1"))
    ds, report = run(p)
    assert ds["reference"] == ["1"]
    assert report["sources"][0]["duplicates_within"] == 2 and report["sources"][0]["duplicates_conflicting"] == 1


def test_same_stem_different_choices_are_not_duplicates():
    ds, report = run(LOCAL / "mmlu", "mmlu-csv")
    assert report["totals"]["duplicates_within"] == 0 and len(set(ds["id"])) == len(ds)


def test_limit_domain_and_stratified_sample(tmp_path):
    math = tmp_path / "m.jsonl"
    math.write_bytes(b"".join(gsm_line(f"Math question {i}", f"#### {i}") for i in range(30)))
    safety = tmp_path / "s.csv"
    safety.write_text("goal,target\n" + "".join(f"Bad request {i},x\n" for i in range(10)))
    specs = [SourceSpec(str(math), load_preset("gsm8k")), SourceSpec(str(safety), load_preset("advbench-csv"))]
    _result = ingest(specs, IngestConfig(limit=5))
    ds, rep = _result.dataset, _result.report
    assert ds["question"][:5] == [f"Math question {i}" for i in range(5)] and len(ds) == 10
    _result = ingest(specs, IngestConfig(domains=("safety",)))
    ds, rep = _result.dataset, _result.report
    assert set(ds["domain"]) == {"safety"} and len(ds) == 10 and rep["totals"]["other_domain"] == 30
    _result = ingest(specs, IngestConfig(sample=8, seed=3))
    ds, rep = _result.dataset, _result.report
    assert ds["source"].count("gsm8k") == 6 and ds["source"].count("advbench") == 2  # 30:10 -> 6:2
    again = ingest(specs, IngestConfig(sample=8, seed=3)).dataset
    other = ingest(specs, IngestConfig(sample=8, seed=4)).dataset
    assert again["id"] == ds["id"] and other["id"] != ds["id"]
    assert rep["totals"]["sampled_out"] == 32
    with pytest.raises(UserError, match="--domain: expected one of math, general, safety, got poetry"):
        ingest(specs, IngestConfig(domains=("poetry",)))


def test_reingest_gives_identical_ids_and_rows():
    specs = [SourceSpec(str(LOCAL / "gsm8k_train.jsonl"), load_preset("gsm8k")),
             SourceSpec(str(LOCAL / "mmlu"), load_preset("mmlu-csv")),
             SourceSpec(str(LOCAL / "xstest_prompts.csv"), load_preset("xstest"))]
    _result = ingest(specs)
    first, r1 = _result.dataset, _result.report
    _result = ingest(specs)
    second, r2 = _result.dataset, _result.report
    r1.pop("seconds"), r2.pop("seconds")  # wall time differs; everything else must not
    assert first.to_list() == second.to_list() and r1 == r2
    assert len(set(first["id"])) == len(first)
    assert all(len(i) == 16 for i in first["id"])


# --- ingest_rows: the public entry point for code that needs a source's rows (gdpo eval) --------------------------


def test_ingest_rows_reads_a_file_as_the_stage_does(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_bytes(gsm_line("Q1", "#### 7") + b"{oops\n" + gsm_line("Q2", "#### 12"))
    ds = ingest_rows(p, preset="gsm8k")  # skips the damaged line by default
    assert ds["question"] == ["Q1", "Q2"] and ds["reference"] == ["7", "12"]
    assert ds["id"] == run(p, on_error="skip")[0]["id"]  # the same rows, ids included, as the stage gives
    m = tmp_path / "m.yaml"
    m.write_text("domain: general\nquestion: q\nreference: {field: a, extract: text}\n")
    own = tmp_path / "own.jsonl"
    own.write_text('{"q": "Sky colour?", "a": "blue"}\n')
    mapped = ingest_rows(own, mapping=m)
    assert mapped["question"] == ["Sky colour?"] and mapped["domain"] == ["general"] and mapped["reference"] == ["blue"]
    with pytest.raises(UserError, match=f"{p} line 2"):
        ingest_rows(p, preset="gsm8k", on_error="fail")
    for given in ({}, {"preset": "gsm8k", "mapping": m}):
        with pytest.raises(UserError, match="give exactly one of a preset or a mapping"):
            ingest_rows(p, **given)
