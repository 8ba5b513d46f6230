"""`metakl ingest` through Typer's CliRunner and, for the error path, a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path


from conftest import run_cli
from metakl.cli import app
from metakl.io import load_stage

LOCAL = Path(__file__).parent / "fixtures" / "ingest" / "local"


def test_ingest_several_presets_writes_stage_and_report(cli, tmp_path):
    out = tmp_path / "run" / "ingest"
    args = ["ingest", f"gsm8k={LOCAL / 'gsm8k_train.jsonl'}", f"mmlu-csv={LOCAL / 'mmlu'}",
            f"xstest={LOCAL / 'xstest_prompts.csv'}", "--out", str(out)]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    ds = load_stage(out)
    assert len(ds) == 2 + 3 + 2
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["rows_out"] == 7 and report["domains"] == {"math": 2, "general": 3, "safety": 2}
    assert report["totals"]["duplicates_within"] == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["source", "input", "records", "kept", "math", "general", "safety", "dup_within",
                                "dup_across", "errors", "filtered"]
    total = next(line for line in lines if line.startswith("total")).split()
    assert total == ["total", "8", "7", "2", "3", "2", "1", "0", "0", "0"]
    assert f"wrote 7 rows to {out}" in result.output


def test_a_preset_that_names_its_data_is_a_source_on_its_own(cli, tmp_path, monkeypatch):
    # The demo presets read the prompts shipped with metakl (their `local:` file): no path to give.
    result = cli.invoke(app, ["ingest", "demo-math", "demo-general", "demo-safety", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "ingest_report.json").read_text())
    assert report["domains"] == {"math": 11, "general": 9, "safety": 13}  # math: 10 + the planted benchmark item
    # A user's preset (on $METAKL_ANNOTATIONS) whose `local:` file is missing: one line naming the file.
    own = tmp_path / "mine"
    (own / "presets").mkdir(parents=True)
    (own / "presets" / "mine.yaml").write_text("source: mine\ndomain: math\nquestion: q\nreference: {field: a, extract: text}\n"
                                                "local: data/mine.jsonl\n")
    monkeypatch.setenv("METAKL_ANNOTATIONS", str(own))
    result = cli.invoke(app, ["ingest", "mine", "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "data file data/mine.jsonl is not installed" in str(result.exception)
    (own / "data").mkdir()
    (own / "data" / "mine.jsonl").write_text(json.dumps({"q": "What is 2 + 2?", "a": "4"}) + "\n")
    result = cli.invoke(app, ["ingest", "mine", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert load_stage(tmp_path / "b")["question"] == ["What is 2 + 2?"]
    assert not (tmp_path / "c").exists()


def test_ingest_mapping_file_sample_and_domain(cli, tmp_path):
    mapping = tmp_path / "mine.yaml"
    mapping.write_text("source: my-harmful\ndomain: safety\nquestion: goal\nreference: {value: refuse}\nmeta: [target]\n")
    data = tmp_path / "mine.csv"
    data.write_text("goal,target\n" + "".join(f"Harmful thing {i},t{i}\n" for i in range(20)))
    out = tmp_path / "o"
    result = cli.invoke(app, ["ingest", str(data), "--mapping", str(mapping), "--sample", "5", "--seed", "2",
                              "--domain", "safety", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = load_stage(out)
    assert len(ds) == 5 and set(ds["source"]) == {"my-harmful"}
    total = next(line for line in result.stdout.splitlines() if line.startswith("total")).split()
    assert total[1:3] == ["20", "5"] and total[-1] == "15"
    assert json.loads(ds[0]["meta"])["target"].startswith("t")


def test_list_presets(cli):
    result = cli.invoke(app, ["ingest", "--list-presets"])
    assert result.exit_code == 0
    assert "openai/gsm8k" in result.output and "cais/mmlu" in result.output and "walledai/XSTest" in result.output


def test_cli_fail_writes_nothing_and_skip_reports(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"question": "Q1", "answer": "#### 1"}\n{"question": "Q2", "answer": "#### 2"\n'
                    b'{"question": "Q3", "answer": "#### 3"}\n')
    out = tmp_path / "out"
    proc = run_cli("ingest", str(bad), "--preset", "gsm8k", "--out", str(out), in_process=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: 1 record(s) failed; nothing was written.")
    assert f"{bad} line 2: field '<line>': expected one complete JSON object per line" in proc.stderr
    assert not out.exists()
    proc = run_cli("ingest", str(bad), "--preset", "gsm8k", "--on-error", "skip", "--out", str(out), in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert len(load_stage(out)) == 2
    assert f"1 record(s) skipped; first: {bad} line 2" in proc.stdout
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["totals"]["errors"] == 1


def test_cli_usage_errors_are_one_clear_line(tmp_path):
    proc = run_cli("ingest", str(LOCAL / "gsm8k_train.jsonl"), "--out", str(tmp_path / "o"), in_process=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "--preset NAME or --mapping FILE.yaml" in proc.stderr
