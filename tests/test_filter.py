"""`filter` stage and verb: a hand-worked selection from proficiency, the gap report, budgets/quotas, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
from datasets import Dataset

from conftest import run_cli
from metakl.cli import app
from metakl.errors import UserError
from metakl.io import load_stage, save_stage
from metakl.schema import features
from metakl.stages.filter import FilterConfig, filter_prompts


# Model m (4 samples per prompt) and model n; units per prompt.
PROMPTS = [  # id, domain, units, accuracy of m, accuracy of n
    ("p0", "math", ["algebra"], 0.0, 1.0),
    ("p1", "math", ["algebra"], 0.25, 1.0),
    ("p2", "math", ["algebra", "geometry"], 1.0, 1.0),
    ("p3", "math", ["geometry"], 1.0, 1.0),
    ("p4", "math", ["algebra"], 0.5, 1.0),
    ("p5", "safety", ["refusal"], 1.0, 0.0),
]
# m on algebra: (0 + 0.25 + 1 + 0.5) / 4 = 0.4375 -> target round(1 + 2 * 0.5625) = 2 (reminders 1, max_target 3,
# no shrinkage); geometry and refusal 1.0 -> target 1.
HAND = FilterConfig(base_model="m", r=0, reminders=1, max_target=3, prior_strength=0, min_support=1, plots=False)


def dataset(prompts=PROMPTS) -> Dataset:
    rows = []
    for pid, domain, units, acc_m, acc_n in prompts:
        rows.append({"id": pid, "source": "t", "domain": domain, "question": f"question {pid}",
                     "reference": "refuse" if domain == "safety" else "1", "choices": [], "meta": "{}", "errors": [],
                     "units": units, "proficiency": [{"model": "m", "accuracy": acc_m, "samples": 4},
                                                     {"model": "n", "accuracy": acc_n, "samples": 4}]})
    return Dataset.from_list(rows, features=features("units", "proficiency"))


def test_hand_worked_selection_and_gap_report():
    # Step 1: p2 fills algebra and geometry (gain 2); geometry is done, so p3 adds nothing any more.
    # Step 2: p0, p1, p4 (algebra) and p5 (refusal) add one unit each: p0 is the hardest for m (0.0) and wins;
    #         algebra has its 2 prompts now, so p1 and p4 add nothing.
    # Step 3: p5 fills refusal. Nothing adds a gap: stop.
    result = filter_prompts(dataset(), HAND)
    assert result.dataset["id"] == ["p0", "p2", "p5"]  # input order
    selection = result.artifacts["selection.json"]
    assert selection == {"ids": ["p2", "p0", "p5"], "phase": ["gap"] * 3, "gain": [2, 1, 1]}
    report = result.report
    assert report["stopped"] == "no_gap" and report["selected"] == 3
    assert [u["unit"] for u in report["knowledge_gap"]["lacking"]] == ["algebra", "geometry", "refusal"]
    assert report["selected_per_domain"] == {"math": 2, "safety": 1}
    gap = result.artifacts["gap_report.json"]
    units = gap["units"]
    assert units["algebra"] | {"ci": None} == {"proficiency": 0.4375, "prompts": 4, "ci": None, "proficiency_used": 0.4375,
                                               "target": 2, "r_k": 0.5, "pool": 4, "selected": 2, "status": "met"}
    assert units["refusal"]["target"] == 1 and units["refusal"]["selected"] == 1
    m = gap["models"]["m"]
    assert [u["unit"] for u in m["lacking"]] == ["algebra", "geometry", "refusal"]  # weakest first, then more prompts
    assert m["coverage"]["before"]["units_at_target"] == 3 and m["coverage"]["after"]["units_at_target"] == 3
    assert m["coverage"]["before"]["mean_proficiency_of_prompts"] == pytest.approx(3.75 / 6, abs=1e-6)
    assert m["coverage"]["after"]["mean_proficiency_of_prompts"] == pytest.approx(2 / 3, abs=1e-6)
    # n fails every refusal prompt: it would want 3 of them, and there is only 1 -> not enough prompts.
    n = gap["models"]["n"]
    assert n["selecting"] is False and n["short_of_target"]["not_enough_prompts"] == 1
    assert next(u for u in n["lacking"] if u["unit"] == "refusal")["target"] == 3
    assert set(gap["models"]) == {"m", "n", "average"}


def test_rows_marked_as_near_duplicates_are_never_picked():
    # p2 is marked a near-duplicate of p3 (metakl dedup): step 1 can no longer take p2 (gain 2); p0 (hardest, algebra)
    # and p3 (geometry) and p5 (refusal) fill one unit each; algebra's second prompt is p1 (0.25, next hardest).
    ds = dataset().add_column("duplicate_of", ["", "", "p3", "", "", ""])
    result = filter_prompts(ds, HAND)
    assert "p2" not in result.dataset["id"]
    assert result.dataset["id"] == ["p0", "p1", "p3", "p5"]
    assert result.report["duplicates_skipped"] == 1
    assert filter_prompts(dataset(), HAND).report["duplicates_skipped"] == 0


def test_budget_and_quota_shortfalls_are_explained():
    budget = filter_prompts(dataset(), dataclasses.replace(HAND, budget=1))
    assert budget.dataset["id"] == ["p2"] and budget.report["stopped"] == "budget"
    assert budget.report["knowledge_gap"]["short_of_target"] == {"not_enough_prompts": 0, "budget": 2, "quota": 0}
    quota = filter_prompts(dataset(), dataclasses.replace(HAND, quotas={"safety": 0}))
    assert quota.dataset["id"] == ["p0", "p2"] and quota.report["stopped"] == "no_gap"
    units = quota.artifacts["gap_report.json"]["units"]
    assert units["refusal"]["status"] == "quota" and quota.report["quota_skipped"] == {"safety": 1}


def test_first_phase_and_average_base_model():
    # r = 2 keeps p2 (two units) first; with base "average", n's zero on p5 makes refusal the weakest unit.
    result = filter_prompts(dataset(), dataclasses.replace(HAND, base_model="average", r=2))
    assert result.artifacts["selection.json"]["phase"][0] == "r" and result.artifacts["selection.json"]["ids"][0] == "p2"
    gap = result.artifacts["gap_report.json"]
    assert gap["base_model"] == "average" and gap["models"]["average"]["lacking"][0]["unit"] == "refusal"
    assert list(gap["models"])[0] == "average"


def test_seed_changes_only_ties_and_is_reproducible():
    prompts = [(f"p{i}", "math", ["a"], 0.5, 0.5) for i in range(30)]
    cfg = dataclasses.replace(HAND, reminders=3, max_target=3)
    picks = {s: filter_prompts(dataset(prompts), dataclasses.replace(cfg, seed=s)).dataset["id"] for s in (0, 1)}
    assert len(picks[0]) == len(picks[1]) == 3 and picks[0] != picks[1]
    assert filter_prompts(dataset(prompts), cfg).dataset["id"] == picks[0]


def test_user_errors():
    ds = dataset()
    with pytest.raises(UserError, match=r"base model 'x' was not scored in this input; scored: m, n \(or 'average'\)"):
        filter_prompts(ds, FilterConfig(base_model="x"))
    with pytest.raises(UserError, match=r"stage filter: input has no column 'units' \(needed for the knowledge units to fill; written by: annotate, merge\)"):
        filter_prompts(ds.remove_columns("units"), FilterConfig())
    with pytest.raises(UserError, match="none of the 6 rows has knowledge units"):
        filter_prompts(ds.map(lambda r: {"units": []}), FilterConfig(base_model="m"))
    with pytest.raises(UserError, match="no row has a proficiency entry"):
        filter_prompts(ds.map(lambda r: {"proficiency": []}), FilterConfig())
    with pytest.raises(UserError, match="filter: quotas: unknown domain 'maths'; expected one of math, general, safety"):
        FilterConfig(quotas={"maths": 3})
    with pytest.raises(UserError, match="reminders <= max_target"):
        FilterConfig(reminders=5, max_target=2)


def test_filter_verb_writes_reports_and_prints_the_gap_table(cli, tmp_path):
    save_stage(dataset(), tmp_path / "score")
    result = cli.invoke(app, ["filter", str(tmp_path / "score"), "--out", str(tmp_path / "filter"), "--base-model", "m",
                              "--r", "0", "--reminders", "1", "--max-target", "3", "--prior-strength", "0",
                              "--min-support", "1", "--quota", "math=5"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "knowledge gaps of m" in out and out.count("\nalgebra ") == 1
    assert "coverage: prompts 6 → 3" in out and "stopped: no prompt adds a gap" in out
    assert "filter: 6 rows in → 3 out" in out
    folder = tmp_path / "filter"
    assert load_stage(folder)["id"] == ["p0", "p2", "p5"]
    assert (folder / "gap_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((folder / "filter_report.json").read_text())
    assert report["config"]["quotas"] == {"math": 5} and report["stage"] == "filter"
    assert json.loads((folder / "selection.json").read_text())["ids"] == ["p2", "p0", "p5"]


def test_filter_verb_errors_are_one_line(cli, tmp_path):
    save_stage(dataset(), tmp_path / "score")
    for args, message in (
        (["--quota", "math:5"], "--quota: expected DOMAIN=COUNT (e.g. math=1500), got 'math:5'"),
        (["--base-model", "llama"], "base model 'llama' was not scored in this input"),
    ):
        proc = run_cli("filter", tmp_path / "score", "--out", tmp_path / "out", *args, timeout=120, in_process=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()


def test_verb_defaults_are_the_config_defaults(cli):
    """`--help` must show what runs: each option's default equals its stage config's default."""
    import typer.main

    from metakl.stages import get_stage

    for name in ("score", "filter"):
        command = typer.main.get_command(app).commands[name]
        cls = get_stage(name).config_cls
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        checked = 0
        for param in command.params:
            if param.name in defaults and param.default is not None:
                value = param.default.value if hasattr(param.default, "value") else param.default
                assert value == defaults[param.name], f"{name} --{param.name}"
                checked += 1
        assert checked >= 8, name
    score_params = {p.name for p in typer.main.get_command(app).commands["score"].params}
    assert "model" not in score_params and {"base_models", "base_url", "backend"} <= score_params  # --base-model only


def test_filter_config_file_and_command_line(cli, tmp_path):
    """Settings from --config (quotas as a mapping); an option given on the command line wins over the file."""
    save_stage(dataset(), tmp_path / "score")
    config = tmp_path / "filter.yaml"
    config.write_text("filter:\n  base_model: m\n  r: 0\n  reminders: 1\n  max_target: 3\n  prior_strength: 0\n"
                      "  quotas: {safety: 0}\n  plots: false\n")
    result = cli.invoke(app, ["filter", str(tmp_path / "score"), "--out", str(tmp_path / "a"), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert load_stage(tmp_path / "a")["id"] == ["p0", "p2"] and not (tmp_path / "a" / "gap_report.png").exists()
    result = cli.invoke(app, ["filter", str(tmp_path / "score"), "--out", str(tmp_path / "b"), "--config", str(config),
                              "--quota", "safety=1", "--budget", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b" / "filter_report.json").read_text())
    assert report["config"]["quotas"] == {"safety": 1} and report["config"]["budget"] == 2 and report["selected"] == 2
