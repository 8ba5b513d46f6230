"""The dataset card is rendered from annotations/templates/publish/card.md.j2 with the same text the Python strings
built before (main at bdaa0d8): fixed inputs, the cards that code wrote for them as fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset

from metakl.stages import publish as P

FIXTURES = Path(__file__).parent / "fixtures" / "publish"


def _rows(columns: list[str]) -> Dataset:
    values = {
        "id": ["a", "b"], "domain": ["math", "safety"], "question": ["1+1?", "How to pick a lock?"],
        "reference": ["2", "refuse"], "units": [["arithmetic"], ["refusal"]],
        "responses": [[{"text": "2", "reward": 1.0}], [{"text": "no", "reward": 0.5}]],
        "duplicate_of": ["", ""], "errors": [[], []],
    }
    return Dataset.from_dict({c: values[c] for c in columns})


def _full() -> tuple:
    ds = _rows(["id", "domain", "question", "reference", "units", "responses", "duplicate_of", "errors"])
    configs = {"all": {"train": ds.select([0]), "test": ds.select([1])}, "math": {"train": ds.select([0])},
               "safety": {"train": ds.select([1])},
               "taxonomy": {"train": Dataset.from_dict({"unit": ["arithmetic"], "prompts": [1]})}}
    stats = {
        "rows": 2, "domains": {"safety": 1, "math": 1}, "sources": {"gsm8k": 1, "beavertails": 1, "mine": 3},
        "units_per_prompt": {"1": 2}, "distinct_units": 2, "top_units": [["arithmetic", 1], ["refusal", 1]],
        "mean_reward": {"math": 1.0, "safety": 0.5}, "responses": 2, "responses_per_prompt": {"min": 1, "max": 1},
        "teachers": {"teacher-a": 2}, "base_models": {"base-1": {"prompts": 2, "mean_accuracy": 0.25}},
        "dropped_duplicates": 3,
    }
    run = {
        "from_run": False,
        "manifest": {"versions": {"metakl": "0.1", "datasets": "3.0"}, "started": "2026-01-01T00:00:00",
                     "finished": "2026-01-01T01:00:00"},
        "reports": {
            "generate": {"rows_in": 2, "rows_out": 2, "llm": {"model": "m", "prompt_tokens": 1200,
                                                               "completion_tokens": 34}, "templates": ["math", "x"],
                         "seconds": 1.5},
            "dedup": {"duplicates": 4},
            "decontaminate": {
                "method": {"ngram": 13, "normalize": "words", "max_item_count": 5, "max_prompt_share": 0.01,
                           "semantic": True, "embedding_model": "mini", "threshold": {"math": 0.9, "general": 0.8},
                           "match_numbers": True, "match_answers": True, "answer_leakage": True},
                "rows_matched": 7,
                "benchmarks": {"gsm8k": {"items": 10, "ngram": 1, "semantic": 2, "answer": 0, "rows": 3}},
                "skipped_benchmarks": [{"benchmark": "mmlu"}, {}],
            },
        },
    }
    gap = {"base_model": "base-1", "coverage": {"units": 40, "before": {"prompts": 1000, "mean_proficiency_of_prompts": 0.5},
                                                "after": {"prompts": 12, "units_with_prompts": 3}},
           "lacking": [{"unit": "arithmetic", "proficiency": 0.125, "pool": 3, "target": 2, "selected": 2,
                        "status": "met"}, {"unit": "refusal"}],
           "short_of_target": {"pool_too_small": 2, "other": 0}}
    cfg = P.PublishConfig(name="Full release", description="My own words.", license="cc-by-4.0", repo_id="me/rel")
    sizes = {"all": {"train": 100, "test": 50}, "math": {"train": 100}}
    return cfg, configs, stats, run, ["a.png", "b.png"], gap, sizes


def _bare() -> tuple:
    ds = _rows(["id", "domain", "question"])
    configs = {"all": {"train": ds}, "taxonomy": {"train": Dataset.from_dict({"unit": [], "prompts": []})}}
    stats = {"rows": 2, "domains": {"math": 1, "safety": 1}, "sources": {"x": 2}}
    run = {"from_run": True, "manifest": {}, "reports": {"ingest": {"rows_in": None, "rows_out": 2}}}
    return P.PublishConfig(), configs, stats, run, [], None, None


def _none() -> tuple:
    cfg, configs, stats, _, _, _, _ = _bare()
    return cfg, configs, stats, {"reports": {}}, [], {"base_model": "b"}, None


CASES = {"full": _full, "bare": _bare, "no_reports": _none}


def render(case: str) -> str:
    cfg, configs, stats, run, figures, gap, sizes = CASES[case]()
    return P.card(cfg, configs, stats, run, figures, gap, sizes=sizes)


@pytest.mark.parametrize("case", sorted(CASES))
def test_card_text_is_unchanged(case, monkeypatch):
    monkeypatch.setattr(P, "project_url", lambda: "https://code.example.org/metakl")
    expected = (FIXTURES / f"card_{case}.md").read_text()  # the body (the YAML header is huggingface_hub's)
    header, body = render(case).split("\n---\n\n", 1)
    assert header.startswith("---\n") and "pretty_name:" in header
    # Section by section first, so that a failure names the section; then the whole text, byte for byte.
    for want, have in zip(expected.split("\n## "), body.split("\n## ")):
        assert have == want
    assert body == expected


def test_a_card_template_of_your_own_replaces_the_wording(tmp_path, monkeypatch):
    # The card is data like the prompts: a publish/card.j2 in a $METAKL_ANNOTATIONS folder is used instead.
    folder = tmp_path / "templates" / "publish"
    folder.mkdir(parents=True)
    (folder / "card.j2").write_text("# {{ name }} by us\n\n{{ table(['config', 'splits', 'rows'], contents) }}\n")
    monkeypatch.setenv("METAKL_ANNOTATIONS", str(tmp_path))
    body = render("bare").split("\n---\n\n", 1)[1]
    assert body == "# MetaKL release by us\n\n| config | splits | rows |\n|---|---|---|\n| all | train | 2 |\n| taxonomy | train | 0 |\n"
