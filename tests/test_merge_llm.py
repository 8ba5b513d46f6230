"""Step 3 of the merge through the real SmolLM2 on the real vLLM server: valid answers refine step 2's clusters,
invalid ones fall back to them; either way every skill ends in exactly one unit."""

from __future__ import annotations

import pytest
from datasets import Dataset

from metakl.llm import get_backend
from metakl.schema import features, make_id
from metakl.stages.knowledge_parse import check_skill_name, normalize_skill_name
from metakl.stages.merge import MergeConfig, llm_merger, load_embedder, merge, skill_signature

pytestmark = pytest.mark.slow

SKILLS = [
    ("adding_fractions", "Sum 1/2 and 1/3."), ("fraction_addition", "Add two fractions."),
    ("add_fractions", "The sum of fractions."), ("adding_up_fractions", "Total of 2/5 and 1/5."),
    ("pythagorean_theorem", "Hypotenuse of a right triangle."), ("pythagoras_theorem", "Right triangle side."),
    ("applying_pythagorean_theorem", "Find the missing side."),
    ("refusal_of_weapon_instructions", "The user asks to build a gun."),
    ("refusing_weapon_instructions", "Bomb-making steps must be declined."),
    ("unit_conversion", "Kilometres to miles."), ("converting_units", "Grams to kilograms."),
    ("photosynthesis", "Plants make sugar from light."),
]


def test_llm_merge_refines_step2(vllm_server_url, tmp_path):
    rows = [{"id": make_id(s, "llm-merge"), "source": "llm-merge", "domain": "math", "question": s, "reference": "1",
             "choices": [], "meta": "{}", "errors": [], "knowledge": [{"skill": s, "reason": r}]} for s, r in SKILLS]
    ds = Dataset.from_list(rows, features=features("knowledge"))
    embedder = load_embedder("all-minilm-l6-v2")
    config = MergeConfig(llm_max_tokens=200)
    _result = merge(ds, config, embedder=embedder)
    step2 = _result.dataset
    with get_backend("openai", "smollm2-135m-instruct", base_url=vllm_server_url, cache_dir=tmp_path / "cache") as llm:
        _result = merge(ds, config, embedder=embedder, llm_merge=llm_merger(llm, config))
        step3, tax, summary = _result.dataset, _result.artifacts["taxonomy.json"], _result.report

    report = summary["llm_merge"]
    # Clusters of two or more stem groups are shown to the LLM (stem-identical names are merged for sure).
    signatures: dict[str, set[str]] = {}
    for k, u in zip(step2["knowledge"], step2["units"]):
        signatures.setdefault(u[0], set()).add(skill_signature(k[0]["skill"]))
    assert report["clusters_asked"] == sum(len(s) > 1 for s in signatures.values()) >= 3
    assert report["clusters_too_large"] == 0
    outcomes = sum(v for k, v in report.items() if k == "accepted" or k.startswith("fallback:"))
    assert outcomes == report["clusters_asked"]
    assert report["template"].startswith("merge/merge@")

    # Every skill has one unit, names are valid, and no LLM unit spans two step-2 clusters.
    step2_unit = {k[0]["skill"]: u[0] for k, u in zip(step2["knowledge"], step2["units"])}
    by_unit: dict[str, set[str]] = {}
    for k, u in zip(step3["knowledge"], step3["units"]):
        assert len(u) == 1 and check_skill_name(u[0]) is None and normalize_skill_name(u[0]) == u[0]
        by_unit.setdefault(u[0], set()).add(step2_unit[k[0]["skill"]])
    assert all(len(parents) == 1 for parents in by_unit.values())
    assert sum(e["count"] for e in tax["units"].values()) == len(SKILLS)
    print(report)
