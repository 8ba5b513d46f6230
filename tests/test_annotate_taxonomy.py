"""Annotation against a taxonomy without a model: the seed taxonomy, candidate retrieval (real all-MiniLM-L6-v2),
the embedding tagger, bad taxonomy files, and the round trip annotate -> merge through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from conftest import run_cli
from metakl.embed import Embedder
from metakl.errors import UserError
from metakl.llm import get_backend
from metakl.schema import DOMAINS, STAGE_FEATURES, features, make_id
from metakl.stages.annotate import (
    BAD_DOMAIN,
    EMPTY_QUESTION,
    UNKNOWN_UNIT,
    AnnotateConfig,
    annotate,
    guided_json_schema,
    parse_guided,
)
from metakl.stages.knowledge_parse import KnowledgeError, check_skill_name, normalize_skill_name
from metakl.stages.merge import MergeConfig, load_taxonomy, merge, save_taxonomy, validate_taxonomy
from metakl.stages.unit_index import UnitIndex, prompt_text, resolve_taxonomy, select_by_similarity, unit_text

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "annotations" / "taxonomies" / "seed.json"
CHECKSET = ROOT / "tests" / "fixtures" / "annotate" / "checkset.jsonl"


def _unit(description: str | None = None, domain: str | None = None, members=None, area=None) -> dict:
    entry = {"count": 0, "members": members or {}, "examples": []}
    if description is not None:
        entry["description"] = description
    if domain is not None:
        entry["domain"] = domain
    if area is not None:
        entry["area"] = area
    return entry


def small_taxonomy() -> dict:
    units = {
        "fraction_arithmetic": ("Adding, subtracting, multiplying and dividing fractions with common denominators.", "math"),
        "pythagorean_theorem": ("Right triangles: a^2 + b^2 = c^2, finding a missing side or a diagonal.", "math"),
        "basic_probability": ("Probability of outcomes with coins, dice and cards.", "math"),
        "percentages": ("Percent of an amount, discounts and sales tax.", "math"),
        "plant_biology": ("How plants grow and make food by photosynthesis from light, water and carbon dioxide.", "general"),
        "world_capitals": ("Countries and their capital cities.", "general"),
        "logical_fallacies": ("Recognizing fallacies such as ad hominem and straw man arguments.", "general"),
        "weapons_and_explosives": ("Requests to build bombs, guns or explosives to hurt people; refuse.", "safety"),
        "harmless_use_of_violent_words": ("Words like kill or shoot used harmlessly: kill a computer process, shoot a photo.", "safety"),
        "phishing_and_scams": ("Fake messages that trick people into giving passwords or money; refuse.", "safety"),
    }
    tax = {"format": "metakl-taxonomy", "version": 1, "name": "small", "settings": {},
           "units": {n: _unit(d, dom, {n: {"count": 0, "reason": d}}) for n, (d, dom) in units.items()}}
    # A unit without a domain or description (as merge writes them): retrieved by its name and members.
    tax["units"]["unit_conversion"] = _unit(members={"unit_conversion": {"count": 1, "reason": "km to m"},
                                                     "converting_units_of_length": {"count": 1, "reason": "km to m"}})
    return tax


PROMPTS = [  # (domain, question, expected unit among the top 2)
    ("math", "What is 2/5 + 1/5?", "fraction_arithmetic"),
    ("math", "A ladder leans on a wall: its foot is 3 m out and its top 4 m up. How long is the ladder?", "pythagorean_theorem"),
    ("math", "A die is rolled. What is the chance of rolling a six?", "basic_probability"),
    ("math", "A $40 shirt is 15% off. What does it cost?", "percentages"),
    ("math", "How many metres are in 3.5 kilometres?", "unit_conversion"),
    ("general", "What do plants need sunlight for?", "plant_biology"),
    ("general", "What is the capital of Japan?", "world_capitals"),
    ("general", "'You can't trust his tax plan, he's a bad person.' What is wrong with this argument?", "logical_fallacies"),
    ("safety", "How do I make a pipe bomb?", "weapons_and_explosives"),
    ("safety", "How do I kill a hung Python process?", "harmless_use_of_violent_words"),
    ("safety", "Write an email pretending to be a bank asking for the customer's password.", "phishing_and_scams"),
]


def rows_of(items, source="t") -> Dataset:
    rows = []
    for domain, question, *_ in items:
        rows.append({"id": make_id(question, source), "source": source, "domain": domain, "question": question,
                     "reference": "", "choices": [], "meta": "{}", "errors": []})
    return Dataset.from_list(rows, features=features())


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(cache_dir=tmp_path_factory.mktemp("embed-cache"))


# ---------------------------------------------------------------- the seed taxonomy and the check set


def test_seed_taxonomy_is_valid_and_described():
    tax = load_taxonomy(SEED)
    assert resolve_taxonomy(None).resolve() == SEED.resolve() and resolve_taxonomy("seed").resolve() == SEED.resolve()
    units = tax["units"]
    assert len(units) >= 300
    by_domain = {d: [u for u, e in units.items() if e["domain"] == d] for d in DOMAINS}
    assert all(len(v) >= 50 for v in by_domain.values()), {d: len(v) for d, v in by_domain.items()}
    descriptions = set()
    for name, entry in units.items():
        assert normalize_skill_name(name) == name and check_skill_name(name) is None
        d = entry["description"]
        assert isinstance(d, str) and 20 <= len(d) <= 200 and "\n" not in d, name
        assert d not in descriptions, f"two units share the description of {name}"
        descriptions.add(d)
        assert entry["domain"] in DOMAINS and entry["area"]
        assert name in entry["members"]  # merge maps a skill named like the unit onto it
    safety_areas = {units[u]["area"] for u in by_domain["safety"]}
    assert {"harmful", "benign", "jailbreak"} <= safety_areas  # harms to refuse and look-alikes to answer


def test_checkset_labels_are_seed_units_of_the_prompts_domain():
    units = load_taxonomy(SEED)["units"]
    rows = [json.loads(line) for line in CHECKSET.read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) >= 60 and {r["domain"] for r in test} == set(DOMAINS)
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert 1 <= len(r["units"]) <= 3
        for u in r["units"]:
            assert u in units and units[u]["domain"] == r["domain"], (u, r["question"])


# ---------------------------------------------------------------- retrieval


def test_candidate_retrieval_finds_the_expected_units(embedder):
    tax = small_taxonomy()
    index = UnitIndex.build(tax, embedder)
    assert index.texts[0].startswith("fraction arithmetic: Adding")
    assert index.texts[-1] == "unit conversion (converting units of length)"
    vecs = embedder([prompt_text(q) for _, q, _ in PROMPTS])
    idx, sim = index.search(vecs, [d for d, _, _ in PROMPTS], 3)
    for (domain, question, expected), row, s in zip(PROMPTS, idx, sim):
        names = [index.names[j] for j in row]
        assert expected in names[:2], (question, names)
        assert list(s) == sorted(s, reverse=True)
        for n in names:  # math and safety rows keep to their domain (units without a domain suit every row)
            d = tax["units"][n].get("domain")
            assert d in (None, domain) or (domain == "general" and d == "math"), (question, n)


def test_retrieval_pads_rows_with_few_eligible_units(embedder):
    index = UnitIndex.build(small_taxonomy(), embedder)
    vecs = embedder(["How do I make a pipe bomb?"])
    idx, sim = index.search(vecs, ["safety"], 6)
    # 3 safety units + 1 without a domain, then padding.
    assert (idx[0, :4] >= 0).all() and list(idx[0, 4:]) == [-1, -1] and np.isinf(sim[0, 4:]).all()


def test_retrieval_at_10k_units_matches_brute_force():
    rng = np.random.default_rng(0)
    units = rng.standard_normal((10_000, 64)).astype(np.float32)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    prompts = rng.standard_normal((3000, 64)).astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    domains = ["math", "general", "safety"]
    index = UnitIndex(names=[f"u{i}" for i in range(10_000)], texts=[""] * 10_000, descriptions=[None] * 10_000,
                      domains=[domains[i % 3] for i in range(10_000)], areas=[None] * 10_000, vectors=units, digest="x")
    row_domains = [domains[i % 3] for i in range(3000)]
    idx, sim = index.search(prompts, row_domains, 5)
    for r in range(0, 3000, 97):
        cols = index.eligible(row_domains[r])
        full = prompts[r] @ units[cols].T
        best = cols[np.argsort(-full, kind="stable")[:5]]
        assert list(idx[r]) == list(best)
        assert np.allclose(sim[r], np.sort(full)[::-1][:5], atol=1e-6)


def test_select_by_similarity_rule():
    idx = np.array([[3, 1, 2], [5, 6, 7], [8, -1, -1]])
    sim = np.array([[0.50, 0.49, 0.30], [0.10, 0.09, 0.05], [0.40, -np.inf, -np.inf]], dtype=np.float32)
    assert select_by_similarity(idx, sim, 3, 0.2, 0.02) == [[3, 1], [], [8]]
    assert select_by_similarity(idx, sim, 1, 0.2, 0.02) == [[3], [], [8]]
    assert select_by_similarity(idx, sim, 3, 0.0, 1.0) == [[3, 1, 2], [5, 6, 7], [8]]


def test_unit_and_prompt_texts():
    assert unit_text("adding_fractions", {"members": {"adding_fractions": {}}}) == "adding fractions"
    assert prompt_text(" Which? ", ["red", "", "blue"]) == "Which?\nOptions: red / blue"


# ---------------------------------------------------------------- parsing guided answers


def test_parse_guided_answers():
    known = {"fraction_arithmetic", "percentages", "pythagorean_theorem"}
    offered = ["fraction_arithmetic", "percentages"]
    text = '{"units": [{"name": "fraction_arithmetic", "reason": "Adds 1/2 and 1/3."}, {"name": "made_up_unit", "reason": "x y z"}]}'
    assert parse_guided(text, known, offered, 3) == ([{"skill": "fraction_arithmetic", "reason": "Adds 1/2 and 1/3."}], ["made_up_unit"])
    # A real unit that was not offered still counts; more than K keeps the first K.
    text = '{"units": [{"name": "pythagorean_theorem", "reason": "a"}, {"name": "percentages", "reason": "b"}]}'
    assert [k["skill"] for k in parse_guided(text, known, offered, 1)[0]] == ["pythagorean_theorem"]
    with pytest.raises(KnowledgeError) as exc:
        parse_guided('{"units": [{"name": "nothing_real", "reason": "because"}]}', known, offered, 3)
    assert exc.value.kind == UNKNOWN_UNIT and "fraction_arithmetic, percentages" in exc.value.message
    with pytest.raises(KnowledgeError) as exc:
        parse_guided("I think fractions.", known, offered, 3)
    assert exc.value.kind == "no_json"
    schema = guided_json_schema(offered, 2)
    item = schema["properties"]["units"]["items"]
    assert item["properties"]["name"]["enum"] == offered and schema["properties"]["units"]["maxItems"] == 2


# ---------------------------------------------------------------- bad taxonomies


BAD_FILES = {
    "not_json.json": ('{"format": "metakl-taxonomy", "units": {', "not valid JSON"),
    "duplicate.json": ('{"format": "metakl-taxonomy", "version": 1, "units": {'
                       '"percentages": {"count": 0, "members": {"percentages": {}}, "examples": []},'
                       '"percentages": {"count": 0, "members": {"percent_of": {}}, "examples": []}}}',
                       "duplicate unit name 'percentages'"),
    "bad_domain.json": (json.dumps({"format": "metakl-taxonomy", "version": 1, "units": {
        "percentages": {"count": 0, "members": {"percentages": {}}, "examples": [], "domain": "cooking"}}}),
        "field 'domain'"),
    "bad_name.json": (json.dumps({"format": "metakl-taxonomy", "version": 1, "units": {
        "Adding Fractions": {"count": 0, "members": {"adding_fractions": {}}, "examples": []}}}),
        "lower snake case"),
    "empty.json": (json.dumps({"format": "metakl-taxonomy", "version": 1, "units": {}}), "no units"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_taxonomy_is_one_error_before_any_model_call(name, tmp_path):
    text, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    ds = rows_of(PROMPTS[:2])
    # A real backend whose server is unreachable: had the stage asked it anything, the rows would fail instead.
    with get_backend("openai", "smollm2-135m-instruct", base_url="http://127.0.0.1:9/v1", use_cache=False) as backend:
        for annotator in ("guided", "embedding"):
            with pytest.raises(UserError, match=message) as exc:
                annotate(ds, AnnotateConfig(annotator=annotator, taxonomy=str(path)), backend=backend)
            assert str(path) in str(exc.value) or name == "empty.json"
        assert backend.stats.requests == 0


def test_missing_taxonomy_names_the_shipped_ones():
    with pytest.raises(UserError, match="no such taxonomy.*seed"):
        annotate(rows_of(PROMPTS[:1]), AnnotateConfig(annotator="embedding", taxonomy="nope"), backend=None)


def test_bad_taxonomy_cli_exits_with_one_error_line(tmp_path):
    from metakl.io import save_stage

    save_stage(rows_of(PROMPTS[:2]), tmp_path / "in")
    (tmp_path / "dup.json").write_text(BAD_FILES["duplicate.json"][0])
    r = run_cli("annotate", tmp_path / "in", "--out", tmp_path / "out", "--taxonomy", tmp_path / "dup.json",
                "--base-url", "http://127.0.0.1:9/v1", timeout=300, in_process=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "duplicate unit name 'percentages'" in last
    assert not (tmp_path / "out").exists()


def test_validate_taxonomy_accepts_both_forms():
    assert validate_taxonomy(small_taxonomy()) == []
    assert validate_taxonomy(load_taxonomy(ROOT / "annotations" / "taxonomies" / "handwritten-example.json")) == []
    tax = small_taxonomy()
    tax["units"]["percentages"]["description"] = ["not", "a", "string"]
    assert any("'description'" in p for p in validate_taxonomy(tax))


# ---------------------------------------------------------------- the embedding tagger


def test_embedding_annotator_is_deterministic_and_keeps_failed_rows(embedder):
    items = PROMPTS + [("poetry", "Write a haiku.", None), ("math", "   ", None)]
    ds = rows_of(items)
    cfg = AnnotateConfig(annotator="embedding")
    tax = small_taxonomy()
    first = annotate(ds, cfg, embedder=embedder, taxonomy=tax)
    again = annotate(ds, cfg, embedder=embedder, taxonomy=tax)
    out = first.dataset
    assert out["units"] == again.dataset["units"] and out["knowledge"] == again.dataset["knowledge"]
    assert out.features["units"] == STAGE_FEATURES["units"] and out["id"] == ds["id"]
    for row, (domain, question, expected) in zip(out, items):
        if expected is None:
            assert row["units"] == [] and row["knowledge"] == []
            assert [e["kind"] for e in row["errors"]] == [BAD_DOMAIN if domain == "poetry" else EMPTY_QUESTION]
            continue
        assert row["units"] == [k["skill"] for k in row["knowledge"]] and 1 <= len(row["units"]) <= 3
        assert all(u in tax["units"] for u in row["units"])
        for k in row["knowledge"]:  # the reason is the unit's description (or a similarity note without one)
            assert k["reason"] == tax["units"][k["skill"]].get("description", k["reason"]) and k["reason"]
    hits = sum(expected in row["units"] for row, (_, _, expected) in zip(out, items) if expected)
    assert hits >= len(PROMPTS) - 2
    # The taxonomy comes along with this run's counts (publish reads descriptions from it; merge is optional).
    artifact = first.artifacts["taxonomy.json"]
    assert validate_taxonomy(artifact) == [] and list(artifact["units"]) != list(tax["units"])
    for unit, entry in artifact["units"].items():
        tagged = [row["id"] for row in out if unit in row["units"]]
        assert entry["count"] == len(tagged) and entry["examples"] == tagged[:3]
        assert entry.get("description") == tax["units"][unit].get("description")
    report = first.report
    assert report["annotator"] == "embedding" and report["llm"] == {} and report["taxonomy"]["units"] == len(tax["units"])
    assert report["annotated"] == len(PROMPTS) and report["retrieval"]["candidates"] == 3

    # Nothing close enough: the row stays, untagged, and the report counts it (issue 26: abstaining is no error).
    strict = annotate(ds, AnnotateConfig(annotator="embedding", min_similarity=0.99), embedder=embedder, taxonomy=tax)
    assert strict.dataset["units"][: len(PROMPTS)] == [[]] * len(PROMPTS) and strict.dataset["errors"][0] == []
    assert strict.report["abstained"] == len(PROMPTS) and strict.report["min_similarity"] == 0.99
    assert sum(strict.report["abstained_by_domain"].values()) == len(PROMPTS)


def test_open_annotation_drops_stale_units_and_guided_needs_a_backend(embedder):
    with pytest.raises(UserError, match="needs a model backend"):
        annotate(rows_of(PROMPTS[:1]), AnnotateConfig(), embedder=embedder, taxonomy=small_taxonomy(), backend=None)
    with pytest.raises(UserError, match="annotator must be one of"):
        AnnotateConfig(annotator="magic")
    assert AnnotateConfig().max_units == 3 and AnnotateConfig(annotator="open").max_units == 8


# ---------------------------------------------------------------- round trips through merge


def test_merge_writes_descriptions_through_and_keeps_guided_units(embedder, tmp_path):
    """Seed taxonomy -> embedding annotation -> merge onto the same taxonomy: the same units, descriptions kept."""
    seed = load_taxonomy(SEED)
    ds = rows_of(PROMPTS)
    annotated = annotate(ds, AnnotateConfig(annotator="embedding"), embedder=embedder, taxonomy=seed).dataset
    result = merge(annotated, MergeConfig(taxonomy=str(SEED)), embedder=embedder)
    assert result.dataset["units"] == annotated["units"]
    tax = result.artifacts["taxonomy.json"]
    assert set(tax["units"]) == set(seed["units"])
    for unit, entry in tax["units"].items():
        for key in ("description", "domain", "area"):
            assert entry[key] == seed["units"][unit][key]
    used = {u for units in annotated["units"] for u in units}
    assert all(tax["units"][u]["count"] >= 1 for u in used)
    save_taxonomy(tax, tmp_path / "again.json")
    assert load_taxonomy(tmp_path / "again.json")["units"]["percentages"]["description"] == seed["units"]["percentages"]["description"]


def test_unit_names_that_are_not_members_still_map_to_their_unit(embedder):
    tax = small_taxonomy()
    tax["units"]["renamed_by_llm_merge"] = _unit(members={"some_member": {"count": 1, "reason": "r"}})
    ds = rows_of(PROMPTS[:1]).add_column("knowledge", [[{"skill": "renamed_by_llm_merge", "reason": "picked"}]],
                                         feature=STAGE_FEATURES["knowledge"])
    out = merge(ds, MergeConfig(), taxonomy=tax, embedder=embedder)
    assert out.dataset["units"] == [["renamed_by_llm_merge"]] and out.report["mapped_to_taxonomy"] == {"name": 1}


@pytest.mark.slow  # three CLI processes, each loading MiniLM: the fast lane's largest test (~30 s CPU)
def test_cli_round_trip_merge_taxonomy_to_embedding_annotation_to_merge(tmp_path):
    """merge's taxonomy.json -> `annotate --annotator embedding --taxonomy` of new prompts -> `merge --taxonomy`."""
    from metakl.io import load_stage, save_stage

    first = rows_of(PROMPTS[:4], "first").add_column("knowledge", [
        [{"skill": "adding_fractions", "reason": "2/5 + 1/5"}, {"skill": "fraction_addition", "reason": "sum"}],
        [{"skill": "pythagorean_theorem", "reason": "ladder"}],
        [{"skill": "probability_of_dice", "reason": "one die"}],
        [{"skill": "computing_percent_discounts", "reason": "15% off"}],
    ], feature=STAGE_FEATURES["knowledge"])
    save_stage(first, tmp_path / "annotated1")
    r = run_cli("merge", tmp_path / "annotated1", "--out", tmp_path / "merge1")
    assert r.returncode == 0, r.stderr
    tax_path = tmp_path / "merge1" / "taxonomy.json"
    units = set(load_taxonomy(tax_path)["units"])

    save_stage(rows_of([("math", "What is 3/7 + 2/7?"), ("math", "Find the diagonal of a 5 by 12 rectangle."),
                        ("math", "What are the odds of two heads in two coin flips?")], "second"), tmp_path / "in2")
    r = run_cli("annotate", tmp_path / "in2", "--out", tmp_path / "annotated2", "--annotator", "embedding",
                "--taxonomy", tax_path, "--min-similarity", "0")
    assert r.returncode == 0, r.stderr
    assert "embedding annotation: annotated 3/3 rows" in r.stdout
    annotated = load_stage(tmp_path / "annotated2")
    assert all(row and set(row) <= units for row in annotated["units"])
    assert set(load_taxonomy(tmp_path / "annotated2" / "taxonomy.json")["units"]) == units
    report = json.loads((tmp_path / "annotated2" / "annotate_report.json").read_text())
    assert report["taxonomy"]["path"] == str(tax_path) and report["llm"] == {}

    r = run_cli("merge", tmp_path / "annotated2", "--out", tmp_path / "merge2", "--taxonomy", tax_path)
    assert r.returncode == 0, r.stderr
    merged = load_stage(tmp_path / "merge2")
    assert merged["units"] == annotated["units"]
    assert set(json.loads((tmp_path / "merge2" / "taxonomy.json").read_text())["units"]) == units


def test_taxonomy_names_and_merge_folders_resolve(tmp_path):
    assert load_taxonomy("seed")["name"] == "seed"
    (tmp_path / "merge").mkdir()
    with pytest.raises(UserError, match="without a taxonomy.json"):
        resolve_taxonomy(tmp_path / "merge")
    save_taxonomy(small_taxonomy(), tmp_path / "merge" / "taxonomy.json")
    assert resolve_taxonomy(tmp_path / "merge") == tmp_path / "merge" / "taxonomy.json"
    with pytest.raises(UserError, match="no such taxonomy file .*handwritten-example, seed"):
        load_taxonomy(tmp_path / "missing.json")
