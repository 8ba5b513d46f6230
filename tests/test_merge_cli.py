"""`metakl merge` end to end through the CLI: stage folders, taxonomy files, and one-line user errors."""

from __future__ import annotations

import json

from datasets import Dataset

from conftest import run_cli
from metakl.io import load_stage, save_stage
from metakl.schema import features, make_id


def _stage(path, items):
    rows = []
    for i, skills in enumerate(items):
        q = f"question {i}"
        rows.append({"id": make_id(q, "cli"), "source": "cli", "domain": "math", "question": q, "reference": "1",
                     "choices": [], "meta": "{}", "errors": [],
                     "knowledge": [{"skill": s, "reason": f"Needed for question {i}."} for s in skills]})
    save_stage(Dataset.from_list(rows, features=features("knowledge")), path)
    return path


def test_merge_cli_round_trip(tmp_path):
    src = _stage(tmp_path / "annotated", [["adding_fractions", "pythagorean_theorem"], ["fraction_addition"],
                                          ["add_fractions", "refusal_of_weapon_instructions"], ["pythagoras_theorem"],
                                          ["adding_fractions", "pythagorean_theorem"]])
    tax_file = tmp_path / "taxonomies" / "demo.json"
    r = run_cli("merge", src, "--out", tmp_path / "merged", "--taxonomy-out", tax_file, in_process=True)
    assert r.returncode == 0, r.stderr
    assert "-> 3 units" in r.stdout
    out = load_stage(tmp_path / "merged")
    assert out["units"] == [["adding_fractions", "pythagorean_theorem"], ["adding_fractions"],
                            ["adding_fractions", "refusal_of_weapon_instructions"], ["pythagorean_theorem"],
                            ["adding_fractions", "pythagorean_theorem"]]
    tax = json.loads(tax_file.read_text())
    assert tax == json.loads((tmp_path / "merged" / "taxonomy.json").read_text())
    assert tax["name"] == "merged" and tax["units"]["adding_fractions"]["count"] == 4
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["units"] == 3 and report["mentions"] == 8

    new = _stage(tmp_path / "annotated2", [["fractions_adding", "ohms_law"]])
    r = run_cli("merge", new, "--out", tmp_path / "merged2", "--taxonomy", tax_file, in_process=True)
    assert r.returncode == 0, r.stderr
    assert load_stage(tmp_path / "merged2")["units"] == [["adding_fractions", "ohms_law"]]


def test_merge_cli_user_errors(tmp_path):
    src = _stage(tmp_path / "annotated", [["adding_fractions"]])
    r = run_cli("merge", src, "--out", tmp_path / "o", "--taxonomy", tmp_path / "missing.json", in_process=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and "missing.json" in r.stderr
    assert "Traceback" not in r.stderr
