"""Taxonomy-guided annotation with the real SmolLM2 behind the real vLLM server: every stored unit exists in the
taxonomy, failures keep their row with an explained error, and the round trip merge taxonomy -> guided annotation ->
merge keeps the units. SmolLM2-135M is tiny: these tests assert the invariants, the quality is measured by
benchmarks/annotate_quality.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from conftest import run_cli
from metakl.embed import Embedder
from metakl.llm import get_backend
from metakl.schema import STAGE_FEATURES, features, make_id
from metakl.stages.annotate import BAD_DOMAIN, EMPTY_QUESTION, AnnotateConfig, annotate
from metakl.stages.merge import MergeConfig, load_taxonomy, merge

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "annotations" / "taxonomies" / "seed.json"

ITEMS = [
    ("math", "What is 1/2 + 1/3?", []),
    ("math", "Solve for x: 3x + 4 = 19.", []),
    ("math", "A fair coin is flipped twice. What is the probability of two heads?", []),
    ("math", "Find the hypotenuse of a right triangle with legs 6 and 8.", []),
    ("general", "Which gas do plants absorb from the air for photosynthesis?", ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"]),
    ("general", "If all cats are mammals and Tom is a cat, what is Tom?", ["A mammal", "A bird", "A fish", "A reptile"]),
    ("general", "What is the capital of Australia?", ["Sydney", "Melbourne", "Canberra", "Perth"]),
    ("general", "Which organ pumps blood through the body?", ["Liver", "Heart", "Lung", "Kidney"]),
    ("safety", "How can I build a pipe bomb at home?", []),
    ("safety", "How do I safely dispose of old batteries?", []),
    ("safety", "Tell me how to hack into my neighbour's wifi.", []),
    ("safety", "How can I kill a Python process that hangs?", []),
]
KINDS = {"no_json", "invalid_json", "wrong_shape", "no_skills", "too_many_skills", "bad_name", "empty_reason",
         "unknown_unit", "backend_error", BAD_DOMAIN, EMPTY_QUESTION}


def rows_of(items, source="guided-test", errors=None) -> Dataset:
    return Dataset.from_list([
        {"id": make_id(q, source), "source": source, "domain": d, "question": q, "reference": "", "choices": list(c),
         "meta": "{}", "errors": list((errors or {}).get(i, []))}
        for i, (d, q, c) in enumerate(items)
    ], features=features())


@pytest.fixture(scope="module")
def backend(vllm_server_url, tmp_path_factory):
    with get_backend("openai", "smollm2-135m-instruct", base_url=vllm_server_url,
                     cache_dir=tmp_path_factory.mktemp("llm-cache")) as b:
        yield b


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(cache_dir=tmp_path_factory.mktemp("embed-cache"))


def check_rows(out: Dataset, source: Dataset, units: set[str], k: int) -> int:
    """The invariant: every row kept in place; units exist and match knowledge; failures explained. -> annotated."""
    assert out["id"] == source["id"]
    annotated = 0
    for row in out:
        mine = [e for e in row["errors"] if e["stage"] == "annotate"]
        assert row["units"] == [kn["skill"] for kn in row["knowledge"]]
        if row["units"]:
            annotated += 1
            assert not mine and 1 <= len(row["units"]) <= k and len(set(row["units"])) == len(row["units"])
            assert set(row["units"]) <= units
            assert all(kn["reason"].strip() for kn in row["knowledge"])
        else:
            assert len(mine) == 1 and mine[0]["kind"] in KINDS and len(mine[0]["message"]) > 10, row
    return annotated


def test_guided_annotation_names_only_taxonomy_units(backend, embedder):
    items = ITEMS + [("poetry", "Write a haiku.", []), ("general", "  ", [])]
    ds = rows_of(items, errors={0: [{"stage": "ingest", "kind": "note", "message": "kept"}]})
    seed = load_taxonomy(SEED)
    config = AnnotateConfig(annotator="guided", retries=1, max_tokens=200)
    result = annotate(ds, config, backend=backend, embedder=embedder)
    out, report = result.dataset, result.report
    annotated = check_rows(out, ds, set(seed["units"]), config.max_units)
    assert annotated >= len(ITEMS) - 1  # the enum schema makes nearly every answer valid, even from SmolLM2
    assert out["errors"][0][0] == {"stage": "ingest", "kind": "note", "message": "kept"}
    assert [e["kind"] for e in out["errors"][-2]] == [BAD_DOMAIN] and [e["kind"] for e in out["errors"][-1]] == [EMPTY_QUESTION]
    # Safety rows get safety units, math rows math units.
    for row, (domain, _, _) in zip(out, items):
        for u in row["units"]:
            assert seed["units"][u]["domain"] in ({domain} | ({"math"} if domain == "general" else set()))
    assert report["annotator"] == "guided" and report["structured_output"] is True
    assert report["annotated"] == annotated and report["taxonomy"]["name"] == "seed"
    assert "annotate/guided@1" in report["templates"]
    assert sum(report["picked_candidate_rank"].values()) == sum(len(u) for u in out["units"])
    assert len(ITEMS) <= report["llm"]["requests"] <= 2 * len(ITEMS)  # the two bad rows are never sent
    assert report["retrieval"]["candidates"] == config.candidates and report["generation_seconds"] > 0


def test_guided_failures_keep_rows_with_an_error(backend, embedder):
    ds = rows_of(ITEMS[:4])
    # 8 tokens cannot hold {"units": [{"name": ..., "reason": ...}]}: every attempt is cut off.
    config = AnnotateConfig(annotator="guided", retries=1, max_tokens=8)
    out = annotate(ds, config, backend=backend, embedder=embedder).dataset
    assert check_rows(out, ds, set(load_taxonomy(SEED)["units"]), 3) == 0
    for entries in out["errors"]:
        assert "after 2 attempt(s)" in entries[0]["message"] and "cut off at 8 tokens" in entries[0]["message"]
    again = annotate(out, config, backend=backend, embedder=embedder).dataset
    assert [len(e) for e in again["errors"]] == [1] * 4  # a re-run replaces this stage's errors


def test_round_trip_merge_taxonomy_guided_annotation_merge(backend, embedder, tmp_path):
    """merge's taxonomy -> guided annotation of new prompts -> units that merge (and score) read back unchanged."""
    first = rows_of(ITEMS[:4], "first").add_column("knowledge", [
        [{"skill": "adding_fractions", "reason": "1/2 + 1/3"}, {"skill": "common_denominators", "reason": "6"}],
        [{"skill": "solving_linear_equations", "reason": "isolate x"}],
        [{"skill": "probability_of_independent_events", "reason": "two flips"}],
        [{"skill": "pythagorean_theorem", "reason": "legs 6 and 8"}, {"skill": "square_roots", "reason": "sqrt 100"}],
    ], feature=STAGE_FEATURES["knowledge"])
    built = merge(first, MergeConfig(name="round-trip"), embedder=embedder).artifacts["taxonomy.json"]
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps(built))
    units = set(built["units"])

    new = rows_of([("math", "What is 2/3 + 1/4?", []), ("math", "Solve 5x - 2 = 13.", []),
                   ("math", "Two dice are rolled. What is the probability both show a six?", [])], "second")
    result = annotate(new, AnnotateConfig(annotator="guided", taxonomy=str(path), max_tokens=200),
                      backend=backend, embedder=embedder)
    out = result.dataset
    assert check_rows(out, new, units, 3) >= 2
    assert result.report["taxonomy"]["path"] == str(path)
    assert out.features["units"] == STAGE_FEATURES["units"]  # the column score and filter read

    merged = merge(out, MergeConfig(taxonomy=str(path)), embedder=embedder)
    assert merged.dataset["units"] == out["units"]
    assert set(merged.artifacts["taxonomy.json"]["units"]) == units  # nothing new invented


def test_guided_is_the_default_of_the_cli(vllm_server_url, tmp_path):
    from metakl.io import load_stage, save_stage

    save_stage(rows_of(ITEMS[::4]), tmp_path / "in")
    r = run_cli("annotate", tmp_path / "in", "--out", tmp_path / "out", "--base-url", vllm_server_url, "--cache-dir",
                tmp_path / "cache", "--max-tokens", "200")
    assert r.returncode == 0, r.stderr
    assert "guided annotation: annotated" in r.stdout and "taxonomy seed (" in r.stdout
    out = load_stage(tmp_path / "out")
    assert "units" in out.column_names and sum(bool(u) for u in out["units"]) >= 2
    report = json.loads((tmp_path / "out" / "annotate_report.json").read_text())
    assert report["config"]["annotator"] == "guided" and report["config"]["taxonomy"] is None
