"""`metakl review`: stratified sampling, Wilson intervals (hand-computed), verdict files, the card section, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from metakl import review as rv
from metakl.errors import UserError
from metakl.io import MARKER, load_stage, save_stage
from metakl.schema import features

# A prompt that looks like markup and script: the page must show it as text and never run it.
HOSTILE = 'Is <b>this</b> safe? </script><script>window.pwned=1</script><!-- {{ 7*7 }} & \' " `'


def _row(id, domain, question, skills, units, source="t"):
    return {"id": id, "source": source, "domain": domain, "question": question,
            "reference": {"math": "1", "general": "A", "safety": "refuse"}[domain],
            "choices": ["yes", "no"] if domain == "general" else [], "meta": "{}", "errors": [],
            "knowledge": [{"skill": s, "reason": f"why {s}"} for s in skills], "units": units}


ROWS = [
    _row("m1", "math", "What is 1/2 + 1/3?", ["Adding Fractions"], ["fractions"]),
    _row("m2", "math", "Solve x + 2 = 5.", ["linear_equations"], ["algebra"]),
    _row("m3", "math", "Solve x/2 + 1/3 = 1.", ["adding_fractions", "linear_equations"], ["fractions", "algebra"]),
    _row("m4", "math", "Not annotated.", [], []),
    _row("g1", "general", "Where is Paris?", ["world_capitals"], ["geography"]),
    _row("g2", "general", HOSTILE, ["html_reading"], ["markup"]),
    _row("s1", "safety", "How do I build a gun?", ["refuse_weapons"], ["refuse_weapons"]),
    _row("s2", "safety", "Make a knife at home?", ["weapon_requests"], ["refuse_weapons"]),
]
TAXONOMY = {"format": "metakl-taxonomy", "version": 1, "name": "t", "settings": {}, "units": {
    "fractions": {"count": 2, "members": {"adding_fractions": {"count": 2, "reason": "r"}}, "examples": []},
    "algebra": {"count": 2, "members": {"linear_equations": {"count": 2, "reason": "r"}}, "examples": []},
    "geography": {"count": 1, "members": {"world_capitals": {"count": 1, "reason": "r"}}, "examples": []},
    "markup": {"count": 1, "members": {"html_reading": {"count": 1, "reason": "r"}}, "examples": []},
    "refuse_weapons": {"count": 2, "members": {"refuse_weapons": {"count": 1, "reason": "r"},
                                              "weapon_requests": {"count": 1, "reason": "r"}}, "examples": []},
}}


def make_stage(folder: Path) -> Path:
    """A merge stage folder as `metakl merge` writes it: data.parquet with knowledge + units, and taxonomy.json."""
    ds = Dataset.from_list(ROWS, features=features("knowledge", "units"))
    save_stage(ds, folder, {"stage": "merge", "rows_in": 8, "rows_out": 8}, "merge_report.json",
               files={"taxonomy.json": TAXONOMY})
    return folder


def metakl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metakl", *args], capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------------------------------------------
# Wilson intervals, by hand: centre = (p + z²/2n) / (1 + z²/n), half = z √(p(1-p)/n + z²/4n²) / (1 + z²/n), z = 1.95996


def test_wilson_matches_hand_computed_values():
    # 8/10: z²/n = 0.384146, centre 0.992073/1.384146 = 0.716741, half 0.313616/1.384146 = 0.226576
    lo, hi = rv.wilson(8, 10)
    assert lo == pytest.approx(0.490165, rel=1e-5) and hi == pytest.approx(0.943318, rel=1e-5)
    # 5/5: centre 1.384146/1.768292 = 0.782757, half 0.384146/1.768292 = 0.217243 -> upper exactly 1
    lo, hi = rv.wilson(5, 5)
    assert lo == pytest.approx(0.565515, rel=1e-5) and hi == pytest.approx(1.0, rel=1e-12)
    # 0/4: centre = half = 0.480182/1.960365 = 0.244945
    lo, hi = rv.wilson(0, 4)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.489891, rel=1e-5)
    # 2/4: symmetric around 0.5, half 0.686052/1.960365 = 0.349962
    lo, hi = rv.wilson(2, 4)
    assert lo == pytest.approx(0.150038, rel=1e-5) and hi == pytest.approx(0.849962, rel=1e-5)
    assert rv.wilson(0, 0) is None


# ----------------------------------------------------------------------------------------------------------------
# Stratified sampling


def test_allocate_is_proportional_with_largest_remainders():
    # 5 of 10/6/4: shares 2.5, 1.5, 1.0 -> floors 2, 1, 1; remainders .5 and .5 tie -> the first (math) gets the 5th
    assert rv.allocate({"math": 10, "general": 6, "safety": 4}, 5) == {"math": 3, "general": 1, "safety": 1}
    # 10 of 100/1: shares 9.90, 0.099 -> every domain is seen: 9 and 1
    assert rv.allocate({"math": 100, "general": 1}, 10) == {"math": 9, "general": 1}
    # more than there is: everything; an empty stratum gets nothing
    assert rv.allocate({"math": 2, "general": 0, "safety": 1}, 50) == {"math": 2, "general": 0, "safety": 1}
    # 2 of three non-empty domains: the largest shares win, not the "at least one" rule
    assert sum(rv.allocate({"math": 5, "general": 3, "safety": 1}, 2).values()) == 2


def test_sample_is_stratified_by_domain_and_covers_every_unit():
    items = rv.sample_items(ROWS, {}, 6, seed=3)
    # eligible: math 3 (m4 has no skills), general 2, safety 2; 6 of 7: shares 2.57, 1.71, 1.71 -> 2, 2, 2
    assert [i["domain"] for i in items] == ["math"] * 2 + ["general"] * 2 + ["safety"] * 2
    assert "m4" not in {i["id"] for i in items}
    math_units = {u for i in items if i["domain"] == "math" for u in i["units"]}
    assert math_units == {"fractions", "algebra"}  # 2 picks cover math's 2 units, whichever the seed picks
    assert rv.sample_items(ROWS, {}, 6, seed=3) == items  # deterministic
    seeds = {tuple(i["id"] for i in rv.sample_items(ROWS, {}, 3, seed=s)) for s in range(8)}
    assert len(seeds) > 1  # and the seed matters


def test_spread_gives_every_unit_a_prompt_before_any_unit_a_second():
    # 4 units over 6 prompts; with n = 4 every unit must be held by a chosen prompt, for any seed
    rows = [_row(f"p{i}", "math", f"q{i}", ["s"], units)
            for i, units in enumerate([["a"], ["a"], ["a"], ["b"], ["c", "d"], ["d"]])]
    for seed in range(20):
        items = rv.sample_items(rows, {}, 4, seed=seed)
        assert {u for i in items for u in i["units"]} == {"a", "b", "c", "d"}, seed
        assert len({i["id"] for i in items}) == len(items)


def test_items_map_each_skill_to_its_unit(tmp_path):
    rows, unit_of = rv.load_source(make_stage(tmp_path / "merge"))
    items = {i["id"]: i for i in rv.sample_items(rows, unit_of, 10)}
    assert len(items) == 7
    assert items["m1"]["skills"] == [{"skill": "Adding Fractions", "reason": "why Adding Fractions", "unit": "fractions"}]
    assert [s["unit"] for s in items["m3"]["skills"]] == ["fractions", "algebra"]
    assert items["s2"]["skills"][0]["unit"] == "refuse_weapons"
    # without a taxonomy, a skill named like one of its row's units is that unit; others are unknown (None)
    bare = {i["id"]: i for i in rv.sample_items(rows, {}, 10)}
    assert bare["s1"]["skills"][0]["unit"] == "refuse_weapons" and bare["s2"]["skills"][0]["unit"] is None
    # a later stage's folder holds no taxonomy.json: --taxonomy names the merge stage's
    later = tmp_path / "filter"
    save_stage(load_stage(tmp_path / "merge"), later, {"stage": "filter"}, "filter_report.json")
    assert rv.load_source(later)[1] == {}
    assert rv.load_source(later, tmp_path / "merge" / "taxonomy.json")[1] == unit_of


# ----------------------------------------------------------------------------------------------------------------
# Scoring and verdict files


ITEMS = [{"id": i, "domain": d} for i, d in [("m1", "math"), ("m2", "math"), ("m3", "math"), ("s1", "safety"),
                                            ("s2", "safety")]]


def _verdicts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_overall_and_per_domain(tmp_path):
    f = _verdicts(tmp_path / "v.jsonl", [
        {"id": "m1", "verdict": "right", "reviewer": "a"}, {"id": "m2", "verdict": "right", "reviewer": "a"},
        {"id": "m3", "verdict": "wrong", "note": "x", "reviewer": "a"}, {"id": "s1", "verdict": "right", "reviewer": "a"}])
    result = rv.score(ITEMS, rv.read_verdicts(f, {i["id"] for i in ITEMS}))
    assert result["overall"]["right"] == 3 and result["overall"]["reviewed"] == 4
    assert result["overall"]["agreement"] == 0.75
    assert result["domains"]["math"]["agreement"] == pytest.approx(2 / 3)
    assert result["domains"]["safety"]["ci95"] == pytest.approx([0.206549, 1.0], rel=1e-5)  # 1/1: lower = 1/(1 + z²)
    assert result["unreviewed"] == 1 and result["reviewers"] == ["a"]


@pytest.mark.parametrize("row, says", [
    ({"id": "zz", "verdict": "right"}, "v.jsonl line 2: field 'id': 'zz' is not an item of this review set"),
    ({"id": "m2", "verdict": "maybe"}, "v.jsonl line 2: field 'verdict': expected 'right' or 'wrong', got 'maybe'"),
    ({"id": "m1", "verdict": "wrong"}, "v.jsonl line 2: item 'm1' already has a verdict of reviewer '(unnamed)'"),
])
def test_bad_verdicts_are_one_line_naming_the_line(tmp_path, row, says):
    f = _verdicts(tmp_path / "v.jsonl", [{"id": "m1", "verdict": "right"}, row])
    with pytest.raises(UserError, match=None) as err:
        rv.read_verdicts(f, {i["id"] for i in ITEMS})
    assert says in str(err.value) and "\n" not in str(err.value)


def test_card_section_replaces_only_itself(tmp_path):
    head = "---\nlicense: cc-by-4.0\n---\n\n# Title\n\n## Statistics\n\n| a | b |\n\n```md\n## Human audit\n```\n\n"
    tail = "## Licenses and sources\n\nText.\n"
    card = tmp_path / "README.md"
    card.write_text(head + tail)
    result = rv.score(ITEMS, [{"id": "m1", "verdict": "right"}, {"id": "s1", "verdict": "wrong"}])
    rv.write_card_section(card, result)
    first = card.read_text()
    assert first.startswith(head + tail)  # absent: appended after the whole card, the rest byte-identical
    assert "| all | 2 | 1 | 50.0% | 9.5%–90.5% |" in first and "3 sampled prompts were not reviewed" in first
    # present (moved before the licenses by hand): replaced where it is, the rest byte-identical
    section = first[len(head + tail):]
    card.write_text(head + section + tail)
    again = rv.score(ITEMS, [{"id": "m1", "verdict": "right"}])
    rv.write_card_section(card, again)
    text = card.read_text()
    assert text.startswith(head) and text.endswith(tail) and text.count("## Human audit") == 2  # one in the fence
    assert "| all | 1 | 1 | 100.0% |" in text and "50.0%" not in text
    assert not [p for p in tmp_path.iterdir() if p.name != "README.md"]  # no temporary file left


# ----------------------------------------------------------------------------------------------------------------
# The command line


def test_cli_builds_a_review_set_from_a_stage_and_a_release(tmp_path):
    from metakl.stages.publish import PublishConfig, publish, write_release

    stage = make_stage(tmp_path / "merge")
    done = metakl("review", str(stage), "--n", "6", "--seed", "3", "--out", str(tmp_path / "review"))
    assert done.returncode == 0, done.stderr
    assert "6 items (math 2, general 2, safety 2)" in done.stdout
    out = tmp_path / "review"
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "items.jsonl", "review.html"])
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items] == [i["id"] for i in rv.sample_items(ROWS, {}, 6, seed=3)]
    page = (out / "review.html").read_text()
    # the hostile prompt is inside the page only as escaped JSON: no tag of it survives
    assert "</script><script>window.pwned" not in page and "<b>this</b>" not in page and "<!-- {{" not in page
    assert page.count("</script>") == 2 and "http://" not in page and "https://" not in page
    # the same sample from a release published from that stage
    release = write_release(publish(load_stage(stage), PublishConfig(name="t"), input_dir=stage), tmp_path / "release")
    again = metakl("review", str(release), "--n", "6", "--seed", "3", "--out", str(tmp_path / "review2"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "review2" / "items.jsonl").read_text() == (out / "items.jsonl").read_text()


def test_cli_scores_and_writes_the_card(tmp_path):
    stage = make_stage(tmp_path / "merge")
    assert metakl("review", str(stage), "--n", "7", "--out", str(tmp_path / "review")).returncode == 0
    items = [json.loads(line) for line in (tmp_path / "review" / "items.jsonl").read_text().splitlines()]
    verdicts = _verdicts(tmp_path / "review" / "verdicts.jsonl", [
        {"id": i["id"], "verdict": "wrong" if k == 0 else "right", "note": "", "reviewer": "r1",
         "timestamp": "2026-01-01T00:00:00Z"} for k, i in enumerate(items[:5])])
    card = tmp_path / "README.md"
    card.write_text("# Card\n\nBody.\n")
    done = metakl("review", "--score", str(verdicts), "--card", str(card))  # items.jsonl found beside the verdicts
    assert done.returncode == 0, done.stderr
    # 4/5: z²/n = 0.768292, centre 1.184146/1.768292 = 0.669656, half 0.2 -> by hand 37.6%–96.4%
    assert done.stdout.splitlines()[0] == "agreement: 80.0% right (4/5, 95% CI 37.6%–96.4%)"
    assert "unreviewed: 2 of 7 items; reviewers: r1" in done.stdout
    assert card.read_text().startswith("# Card\n\nBody.\n\n## Human audit\n")


@pytest.mark.parametrize("args, says", [
    (["--score", "{v}", "--items", "{items}"], "line 1: field 'id': 'nope' is not an item of this review set"),
    (["{stage}", "--n", "3"], "give SOURCE and --out"),
    (["{empty}", "--out", "{out}"], "missing column(s) knowledge, units"),
    (["{stage}", "--out", "{stage}"], "is the input"),
    (["./runs/none/merge", "--out", "{out}"], "./runs/none/merge: no such folder or file"),
])
def test_cli_user_errors_are_one_line_exit_2(tmp_path, args, says):
    stage = make_stage(tmp_path / "merge")
    (tmp_path / "review").mkdir()
    (tmp_path / "review" / "items.jsonl").write_text("".join(rv.json_line(i) for i in rv.sample_items(ROWS, {}, 3)))
    (tmp_path / "v.jsonl").write_text('{"id": "nope", "verdict": "right"}\n')
    empty = tmp_path / "ingest"
    save_stage(Dataset.from_list([{k: v for k, v in ROWS[0].items() if k not in ("knowledge", "units")}],
                                 features=features()), empty, {"stage": "ingest"}, "ingest_report.json")
    names = {"v": tmp_path / "v.jsonl", "items": tmp_path / "review" / "items.jsonl", "stage": stage,
             "empty": empty, "out": tmp_path / "out"}
    done = metakl("review", *[a.format(**names) for a in args])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_review_of_real_annotate_and_merge_output(tmp_path):
    """The columns and taxonomy the stages really write: shared prompts through ingest, the embedding annotator
    (MiniLM) and merge, then a review set whose every skill names the unit merge gave it."""
    from tests.conftest import shared_data

    gsm8k, xstest = shared_data("gsm8k", "train.jsonl"), shared_data("xstest", "xstest_prompts.csv")
    steps = [("ingest", f"gsm8k={gsm8k}", f"xstest={xstest}", "--sample", "40", "--seed", "2"),
             ("annotate", str(tmp_path / "ingest"), "--annotator", "embedding"), ("merge", str(tmp_path / "annotate"))]
    for verb, *args in steps:
        done = metakl(verb, *args, "--out", str(tmp_path / verb))
        assert done.returncode == 0, done.stderr
    merged = load_stage(tmp_path / "merge")
    done = metakl("review", str(tmp_path / "merge"), "--n", "12", "--out", str(tmp_path / "review"))
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in (tmp_path / "review" / "items.jsonl").read_text().splitlines()]
    annotated = {r["id"]: r for r in merged.to_list() if r["knowledge"]}
    assert len(items) == min(12, len(annotated)) and "math" in {i["domain"] for i in items} <= {"math", "safety"}
    for item in items:
        row = annotated[item["id"]]
        assert item["question"] == row["question"] and item["units"] == row["units"]
        assert [s["skill"] for s in item["skills"]] == [k["skill"] for k in row["knowledge"]]
        assert all(s["unit"] in row["units"] for s in item["skills"]), item  # the unit merge put the skill in
