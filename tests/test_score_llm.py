"""`metakl score` with a real base model: SmolLM2 through a real vLLM server on 20 GSM8K prompts (k = 2), then
`metakl filter` on its output; an unreachable base model is one error line and writes nothing."""

from __future__ import annotations

import json

import pytest

from conftest import SMOLLM2, run_cli, shared_data
from metakl.cli import app
from metakl.io import load_stage, save_stage


def units_for(question: str) -> list[str]:
    """Hand-made knowledge units for a GSM8K question (a stand-in for merge's output)."""
    q = question.lower()
    units = ["arithmetic_word_problems"]
    if "%" in q or "percent" in q:
        units.append("percentages")
    if "$" in q or "dollar" in q:
        units.append("money_calculations")
    if any(w in q for w in ("hour", "minute", "day", "week")):
        units.append("time_and_rates")
    if any(w in q for w in ("half", "third", "quarter", "fraction")):
        units.append("fractions")
    return units


@pytest.fixture(scope="module")
def gsm8k_with_units(cli, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gsm8k")
    source = shared_data("gsm8k", "train.jsonl")
    result = cli.invoke(app, ["ingest", f"gsm8k={source}", "--limit", "20", "--out", str(tmp / "ingest")])
    assert result.exit_code == 0, result.output
    ds = load_stage(tmp / "ingest")
    ds = ds.add_column("units", [units_for(q) for q in ds["question"]])
    save_stage(ds, tmp / "units")
    return tmp / "units"


@pytest.mark.slow
def test_smollm2_scores_gsm8k_then_filter(cli, vllm_server_url, gsm8k_with_units, tmp_path):
    out = tmp_path / "score"
    result = cli.invoke(app, ["score", str(gsm8k_with_units), "--out", str(out), "--base-model", SMOLLM2, "-k", "2",
                              "--max-tokens", "200", "--base-url", vllm_server_url, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    ds = load_stage(out)
    assert len(ds) == 20
    for entries in ds["proficiency"]:
        (entry,) = entries
        assert entry["model"] == SMOLLM2 and entry["samples"] == 2 and entry["accuracy"] in (0.0, 0.5, 1.0)
    report = json.loads((out / "score_report.json").read_text())
    model = report["models"][SMOLLM2]
    assert model["source"] == "run" and model["prompts"] == 20 and model["samples"] == 40
    assert report["llm"]["requests"] == 20 and report["llm"]["completion_tokens"] > 0
    assert report["templates"] == ["score/math@1"]
    table = json.loads((out / "proficiency.json").read_text())["units"]
    assert table["arithmetic_word_problems"]["prompts"] == 20
    assert table["arithmetic_word_problems"][SMOLLM2]["prompts"] == 20
    mean = sum(e[0]["accuracy"] for e in ds["proficiency"]) / 20
    assert table["arithmetic_word_problems"][SMOLLM2]["proficiency"] == pytest.approx(mean)
    assert (out / "agreement.png").read_bytes()[:4] == b"\x89PNG"
    n_units = len({u for us in ds["units"] for u in us})
    assert f"{SMOLLM2[:30]:30} run" in result.stdout and f"units: {n_units} (" in result.stdout
    print("\nsmollm2 on 20 GSM8K prompts:", model["accuracy"], model["llm"]["completion_tokens"], "tokens")

    # Two names in a config file, both served by the same server under SmolLM2's name: the second is answered
    # from the request cache, so both get the same accuracies and agree perfectly on every unit.
    config = tmp_path / "score.yaml"
    config.write_text(f"score:\n  base_models: [smol-a, smol-b]\n  k: 2\n  max_tokens: 200\n"
                      f"  model_options:\n    smol-a: {{model: {SMOLLM2}}}\n    smol-b: {{model: {SMOLLM2}}}\n"
                      f"  llm:\n    base_url: {vllm_server_url}\n    cache_dir: {tmp_path / 'cache'}\n")
    result = cli.invoke(app, ["score", str(out), "--out", str(tmp_path / "score2"), "--config", str(config)])
    assert result.exit_code == 0, result.output
    report2 = json.loads((tmp_path / "score2" / "score_report.json").read_text())
    assert report2["llm"]["cache_hits"] == 40 and set(report2["models"]) == {"smol-a", "smol-b"}
    ds2 = load_stage(tmp_path / "score2")
    assert [len(e) for e in ds2["proficiency"]] == [3] * 20  # SmolLM2's entry from the first run is kept
    agreement = json.loads((tmp_path / "score2" / "agreement.json").read_text())
    i, j = agreement["models"].index("smol-a"), agreement["models"].index("smol-b")
    assert agreement["pearson"][i][j] in (None, pytest.approx(1.0))

    result = cli.invoke(app, ["filter", str(out), "--out", str(tmp_path / "filter"), "--base-model", SMOLLM2,
                              "--max-target", "5", "--reminders", "1"])
    assert result.exit_code == 0, result.output
    selected = load_stage(tmp_path / "filter")
    assert 0 < len(selected) <= 20 and "knowledge gaps of " + SMOLLM2 in result.stdout

    # The same two stages through `metakl run`: the pipeline's shared `llm:` (whose model is a teacher's) gives the
    # server; the base model comes from `base_models`. Every request is in the cache by now.
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"run_dir: {tmp_path / 'run'}\ninput: {gsm8k_with_units}\n"
                        f"llm: {{base_url: '{vllm_server_url}', model: a-teacher, cache_dir: '{tmp_path / 'cache'}'}}\n"
                        f"score: {{base_models: [{SMOLLM2}], k: 2, max_tokens: 200}}\n"
                        f"filter: {{base_model: {SMOLLM2}, max_target: 5, reminders: 1}}\n")
    result = cli.invoke(app, ["run", str(pipeline)])
    assert result.exit_code == 0, result.output
    run_report = json.loads((next((tmp_path / "run").glob("*-score")) / "score_report.json").read_text())
    assert run_report["llm"]["cache_hits"] == 20 and list(run_report["models"]) == [SMOLLM2]
    assert load_stage(next((tmp_path / "run").glob("*-filter")))["id"] == selected["id"]


def test_unreachable_base_model_is_one_error_line_and_writes_nothing(gsm8k_with_units, tmp_path):
    out = tmp_path / "score"
    proc = run_cli("score", gsm8k_with_units, "--out", out, "--base-model", SMOLLM2, "--base-url",
                   "http://127.0.0.1:9/v1", "--no-cache", timeout=180)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the OpenAI-compatible server at "
                                                   "http://127.0.0.1:9/v1"), proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".score.tmp-*"))
