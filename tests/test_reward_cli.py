"""`metakl import-responses` and `metakl reward` through Typer's CliRunner; the error path in a real subprocess."""

from __future__ import annotations

import json

from datasets import Dataset

from conftest import run_cli, shared_data
from metakl.cli import app
from metakl.io import load_stage, save_stage
from metakl.schema import features, make_id


def test_import_then_reward_through_the_cli(cli, tmp_path):
    path = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    # Five problems without the file's own flag errors (idx 3 is one: "4:30 p.m." flagged wrong)
    records = [r for r in map(json.loads, path.open()) if r["idx"] in (0, 1, 2, 4, 5)]
    rows = [{"id": make_id(r["question"], "math"), "source": "math", "domain": "math", "question": r["question"],
             "reference": r["answer"], "choices": [], "meta": "{}", "errors": []} for r in records]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "ingest")

    result = cli.invoke(app, ["import-responses", str(tmp_path / "ingest"), str(path), "--preset", "qwen25math",
                              "--out", str(tmp_path / "responses")])
    assert result.exit_code == 0, result.output
    assert ("imported: 100 records, 5 matched (0 by id alone, 0 to several rows of one source), 95 unmatched, "
            "0 ambiguous (not attached)") in result.stdout and "40 responses on 5 of 5 rows" in result.stdout

    config = tmp_path / "reward.yaml"
    config.write_text("reward:\n  correctness_weight: 1.0\n  format_weight: 0.0\n  length_weight: 0.0\n")
    result = cli.invoke(app, ["reward", str(tmp_path / "responses"), "--out", str(tmp_path / "reward"),
                              "--config", str(config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    ds = load_stage(tmp_path / "reward")
    report = json.loads((tmp_path / "reward" / "reward_report.json").read_text())
    assert report["config"]["correctness_weight"] == 1.0 and report["config"]["workers"] == 1
    # correctness only: the rewards are the file's correctness flags
    for row, rec in zip(ds.to_list(), records):
        assert [r["reward"] for r in row["responses"]] == [float(s) for s in rec["score"]]
    assert "zero-variance groups" in result.stdout and result.stdout.splitlines()[0].split()[:3] == ["domain", "mean", "reward"]


def test_reward_config_errors_are_user_errors(cli, tmp_path):
    rows = [{"id": "1", "source": "s", "domain": "math", "question": "q", "reference": "1", "choices": [], "meta": "{}",
             "errors": [], "responses": []}]
    save_stage(Dataset.from_list(rows, features=features("responses")), tmp_path / "in")
    bad = tmp_path / "bad.yaml"
    bad.write_text("correctness_wieght: 1\n")
    proc = run_cli("reward", tmp_path / "in", "--out", tmp_path / "o", "--config", bad, timeout=120, in_process=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown setting(s) 'correctness_wieght'" in proc.stderr
    assert "Traceback" not in proc.stderr
    result = cli.invoke(app, ["reward", str(tmp_path / "no-such-stage"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
