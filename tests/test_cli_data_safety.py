"""What happens to your data, through the real `metakl` command (issue 20, items 1, 3 and 6): --out never deletes
what metakl did not write nor an input of the same command, and a stage whose rows mostly failed exits non-zero with
every row kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from datasets import Dataset

from conftest import run_cli, shared_data
from metakl.io import load_stage, save_stage
from metakl.schema import features

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_out_keeps_what_metakl_did_not_write(tmp_path):
    gsm8k = f"gsm8k={shared_data('gsm8k', 'train.jsonl')}"
    p = tmp_path / "P"
    p.mkdir()
    (p / "notes.txt").write_text("keep")
    line = _one_error_line(run_cli("ingest", gsm8k, "--limit", "3", "--out", str(p), in_process=True))
    assert "holds files metakl did not write (notes.txt)" in line and "--overwrite" in line
    assert (p / "notes.txt").read_text() == "keep"
    # Its own output is replaced without asking; a folder with someone's files only with --overwrite.
    proc = run_cli("ingest", gsm8k, "--limit", "3", "--out", str(p), "--overwrite", in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert len(load_stage(p)) == 3 and not (p / "notes.txt").exists()
    assert run_cli("ingest", gsm8k, "--limit", "4", "--out", str(p), in_process=True).returncode == 0
    assert len(load_stage(p)) == 4 and sorted(x.name for x in tmp_path.iterdir()) == ["P"]

    # Never an input of the same command, whatever --overwrite says.
    q = tmp_path / "Q"
    save_stage(Dataset.from_list([{"id": "a", "domain": "math", "question": "What is 2 + 2?"}]), q / "in")
    for extra in ([], ["--overwrite"]):
        line = _one_error_line(run_cli("dedup", str(q / "in"), "--out", str(q), *extra, in_process=True))
        assert f"--out {q}: holds the input {q / 'in'}" in line
    assert len(load_stage(q / "in")) == 1
    line = _one_error_line(run_cli("ingest", f"gsm8k={p / 'data.parquet'}", "--out", str(p), in_process=True))
    assert "holds the input" in line and len(load_stage(p)) == 4

    # A file named as --out is refused and stays as it was, with nothing beside it.
    f = tmp_path / "F"
    f.write_text("precious")
    line = _one_error_line(run_cli("reward", str(p), "--out", str(f), "--overwrite", in_process=True))
    assert f"--out {f}: is a file, not a folder" in line
    assert f.read_text() == "precious" and sorted(x.name for x in tmp_path.iterdir()) == ["F", "P", "Q"]


def test_a_zero_row_input_names_the_stage_that_emptied_it(tmp_path):
    gsm8k = f"gsm8k={shared_data('gsm8k', 'train.jsonl')}"
    ingest = tmp_path / "ingest"
    assert run_cli("ingest", gsm8k, "--limit", "3", "--domain", "safety", "--out", str(ingest),
                   in_process=True).returncode == 0
    line = _one_error_line(run_cli("reward", str(ingest), "--out", str(tmp_path / "reward"), in_process=True))
    read = json.loads((ingest / "ingest_report.json").read_text())["rows_in"]  # records read (all math)
    assert read > 0 and line == (f"error: {ingest / 'data.parquet'}: the stage output has 0 rows (emptied by ingest: "
                                 f"{read} rows in → 0 out, see ingest_report.json); nothing to work on")
    assert not (tmp_path / "reward").exists()


def test_generate_whose_server_dies_exits_non_zero_and_keeps_every_row(fault_proxy, tmp_path):
    """The server goes away after a few answers: the failed rows carry `llm_error`, every row is saved, and the
    command exits 3 with the count and the command to run again (it exited 0 before)."""
    proxy = fault_proxy()
    n_rows = 8
    rows = [{"id": f"q{i}", "source": "s", "domain": "math", "question": f"What is {i} + {i}?", "reference": str(2 * i),
             "choices": [], "meta": "{}", "errors": []} for i in range(n_rows)]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "in")
    out = tmp_path / "out"
    args = ["generate", str(tmp_path / "in"), "--out", str(out), "-n", "1", "--max-tokens", "16",
            "--base-url", proxy.url, "--concurrency", "2", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METAKL_PROGRESS": "0"}
    child = subprocess.Popen([sys.executable, "-m", "metakl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    deadline = time.monotonic() + 240
    while len(proxy.posts(200)) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    proxy.stop()  # the server is gone: every later request fails after its retries (~16 s each)
    proxy.stop = lambda: None  # stopped once: the fixture's teardown has nothing left to stop
    stdout, stderr = child.communicate(timeout=300)
    answered = len(proxy.posts(200))
    assert 0 < answered < n_rows, "the server must die during generate"
    last = stderr.strip().splitlines()[-1]
    assert child.returncode == 3, stderr
    assert last.startswith(f"error: generate: {n_rows - answered} of {n_rows} rows") and "(llm_error" in last, last
    assert f"saved in {out}" in last and f"re-run: metakl generate {tmp_path / 'in'} --out {out}" in last
    kept = load_stage(out)
    assert len(kept) == n_rows
    failed = [r for r in kept if any(e["kind"] == "llm_error" for e in r["errors"])]
    assert len(failed) == n_rows - answered and all(not r["responses"] for r in failed)
    report = json.loads((out / "generate_report.json").read_text())
    assert report["errors"]["llm_error"] == n_rows - answered


def test_max_error_rate_from_the_flag_or_the_config_file(tmp_path):
    """reward marks a row without responses `no_responses`: 2 of 3 such rows are over any limit below 2/3."""
    rows = [{"id": f"q{i}", "source": "s", "domain": "math", "question": f"What is {i} + {i}?", "reference": str(2 * i),
             "choices": [], "meta": "{}", "errors": [],
             "responses": [] if i else [{"text": "\\boxed{0}", "reasoning": "", "answer": None, "reward": None,
                                         "advantage": None, "model": "m", "finish_reason": "stop"}]} for i in range(3)]
    save_stage(Dataset.from_list(rows, features=features("responses")), tmp_path / "in")
    out = tmp_path / "out"
    proc = run_cli("reward", str(tmp_path / "in"), "--out", str(out), in_process=True)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 3 and last.startswith("error: reward: 2 of 3 rows (66.7%) carry errors (no_responses 2), "
                                                    "more than --max-error-rate 0.05"), proc.stderr
    assert f"re-run: metakl reward {tmp_path / 'in'} --out {out}" in last
    assert len(load_stage(out)) == 3  # saved before the exit
    assert run_cli("reward", str(tmp_path / "in"), "--out", str(out), "--max-error-rate", "0.7",
                   in_process=True).returncode == 0
    cfg = tmp_path / "reward.yaml"
    cfg.write_text("max_error_rate: 0.5\n")
    assert run_cli("reward", str(tmp_path / "in"), "--out", str(out), "--config", str(cfg),
                   in_process=True).returncode == 3
    assert run_cli("reward", str(tmp_path / "in"), "--out", str(out), "--config", str(cfg),
                   "--max-error-rate", "1", in_process=True).returncode == 0  # the command line wins
    cfg.write_text("reward: {max_error_rate: 1.5}\n")
    line = _one_error_line(run_cli("reward", str(tmp_path / "in"), "--out", str(out), "--config", str(cfg),
                                   in_process=True))
    assert f"{cfg}: 'max_error_rate': expected a number in [0, 1], got 1.5" in line
