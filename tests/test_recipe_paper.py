"""annotations/recipes/paper.yaml: the paper's MetaKL construction as one `metakl run` config, checked before it spends.

The recipe's numbers are the paper's (an edit that drifts fails here); every value says where the paper gives it or
that it does not; `metakl run --dry-run` prints its plan against the real shared data and a real vLLM server, and
lists every problem at once (unset variables, missing files, endpoints that do not answer, missing columns).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SMOLLM2, run_cli, shared_data
from metakl.errors import UserError
from metakl.pipeline import (check_plan_columns, dry_run_table, expand_env, fingerprint_stages, load_plan,
                             plan_problems)

RECIPE = ROOT / "annotations" / "recipes" / "paper.yaml"
BASE_MODEL_VARS = ("QWEN25_7B", "LLAMA31_8B", "R1_QWEN_7B", "R1_LLAMA_8B", "QWEN3_8B")
DEAD_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there


def recipe() -> dict:
    return yaml.safe_load(RECIPE.read_text())


def local_sources() -> list[str]:
    """The recipe's source files under ${METAKL_SHARED_DATA}, relative to it."""
    return [s.split("${METAKL_SHARED_DATA}/", 1)[1] for s in recipe()["ingest"]["sources"] if "${METAKL_SHARED_DATA}" in s]


def endpoints_env(url: str, prices: Path | None = None) -> dict[str, str]:
    """Every endpoint of the recipe at `url`, every model SmolLM2 (what the shared server serves)."""
    env = {"METAKL_TEACHER_URL": url, "METAKL_TEACHER_MODEL": SMOLLM2, "METAKL_ANNOTATOR_URL": url,
           "METAKL_ANNOTATOR_MODEL": SMOLLM2}
    for name in BASE_MODEL_VARS:
        env[f"METAKL_{name}_URL"] = url
        env[f"METAKL_{name}_MODEL"] = SMOLLM2
    if prices is not None:
        env["METAKL_PRICES"] = str(prices)
    return env


def data_layout(root: Path, leave_out: str | None = None) -> Path:
    """Empty files at the recipe's local source paths (the checks look at existence, not content)."""
    for rel in local_sources():
        if rel == leave_out:
            continue
        path = root / rel
        if Path(rel).suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    return root


# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers (DESIGN.md §1, "Data (MetaKL)" and Algorithm 1)


def test_the_recipe_holds_the_papers_numbers():
    from metakl.stages.ingest import load_preset, split_source

    r = recipe()
    teachers = r["generate"]["llm"].get("teachers") or [{}]  # one teacher (its endpoints), or several
    assert sum(t.get("n", r["generate"]["n"]) for t in teachers) == 10  # G = 10 responses per prompt
    assert r["generate"]["reconstruct_domains"] == ["math"]  # §Data step 3: reasoning reconstruction for math
    assert "reconstruct" not in r["generate"]  # not every domain: general and safety are sampled
    assert r["filter"]["r"] == 6  # Algorithm 1: more than 5 units first
    quotas = r["filter"]["quotas"]
    assert quotas == {"math": 1547, "general": 2993, "safety": 1121}
    assert sum(quotas.values()) == r["filter"]["budget"] == 5661
    assert r["filter"]["base_model"] == "average"  # the paper adopts average proficiency
    assert r["filter"]["max_target"] == 20  # about 20 prompts per unit
    assert len(r["score"]["base_models"]) == 5
    assert r["ingest"]["sample"] == 38800  # ~38.8K prompts collected
    assert r["annotate"]["annotator"] == "open" and r["merge"]["llm_merge"] is True
    assert "gpt-4o" in r["annotate"]["llm"]["model"] and r["merge"]["llm"] == r["annotate"]["llm"]
    # 13 sources: 2 math, 4 general, 7 safety (the domains as the presets declare them)
    domains = [load_preset(split_source(s)[0] or s).domain for s in r["ingest"]["sources"]]
    assert len(domains) == 13
    assert {d: domains.count(d) for d in set(domains)} == {"math": 2, "general": 4, "safety": 7}


def test_every_value_says_whether_the_paper_gives_it():
    """Each line that sets a value carries a comment citing the paper (§... or Algorithm 1) or saying it is not in
    the paper; section headers and the lines of a folded text block are not values."""
    cited = re.compile(r"#.*(paper §|paper Algorithm|not in the paper)")
    uncited, in_block = [], None
    for number, line in enumerate(RECIPE.read_text().splitlines(), 1):
        body = line.split("#", 1)[0].rstrip()
        indent = len(line) - len(line.lstrip())
        if in_block is not None:
            if not line.strip() or indent > in_block:
                continue
            in_block = None
        if not body.strip():
            continue
        value = body.split(":", 1)[1].strip() if ":" in body and not body.lstrip().startswith("- ") else "x"
        if value.endswith(">-"):
            in_block = indent
        if not value or value.startswith("&"):
            continue  # a section header
        if not cited.search(line):
            uncited.append(f"line {number}: {line.strip()}")
    assert not uncited, "values without a citation or 'not in the paper':\n" + "\n".join(uncited)


def test_the_recipe_loads_and_its_columns_fit(tmp_path, monkeypatch):
    for key, value in endpoints_env(DEAD_URL, None).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("METAKL_PRICES", str(write_prices(tmp_path)))
    monkeypatch.setenv("METAKL_SHARED_DATA", str(data_layout(tmp_path / "data")))
    plan = load_plan(RECIPE, run_dir=tmp_path / "run")
    assert [s.name for s in plan.stages] == ["ingest", "generate", "reward", "annotate", "merge", "score", "dedup",
                                             "decontaminate", "filter", "publish"]
    check_plan_columns(plan)  # raises on a stage whose input columns nothing upstream provides
    generate = next(s for s in plan.stages if s.name == "generate")
    assert (generate.llm.base_url, generate.llm.model) == (DEAD_URL, SMOLLM2)  # the variables, filled in
    assert "${" in yaml.safe_dump(plan.raw)  # the manifest keeps the config as written, not the values
    assert generate.config.reconstruct_domains == ("math",)
    assert {s.max_error_rate for s in plan.stages} == {0.05}  # rejected reconstructions are verdicts, not errors
    fingerprint_stages(plan)
    line = next(line for line in dry_run_table(plan) if line.startswith("generate "))
    assert line.endswith("(reconstruct: math; sample: the rest)")  # the plan shows which rows carry a solution


def write_prices(folder: Path) -> Path:
    path = folder / "prices.yaml"
    path.write_text(f"{SMOLLM2}: {{input: 2.5, output: 10}}\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# ${NAME} placeholders (hand-written expectations)


def test_expand_env_fills_defaults_and_names_every_unset_variable(monkeypatch):
    monkeypatch.setenv("I26_URL", "http://h:1/v1")
    monkeypatch.delenv("I26_MISSING", raising=False)
    monkeypatch.delenv("I26_ALSO_MISSING", raising=False)
    raw = {"llm": {"base_url": "${I26_URL}", "model": "${I26_MODEL_UNSET:-gpt-4o}"},
           "ingest": {"sources": ["a=${I26_MISSING}/x.jsonl", "b"]},
           "generate": {"llm": {"teachers": [{"model": "${I26_ALSO_MISSING}", "n": 10}]}}}
    monkeypatch.delenv("I26_MODEL_UNSET", raising=False)
    filled, unset = expand_env(raw, "cfg.yaml")
    assert filled["llm"] == {"base_url": "http://h:1/v1", "model": "gpt-4o"}
    assert filled["ingest"]["sources"] == ["a=${I26_MISSING}/x.jsonl", "b"]  # left as written
    assert filled["generate"]["llm"]["teachers"][0] == {"model": "${I26_ALSO_MISSING}", "n": 10}
    assert len(unset) == 2
    assert "'ingest.sources[0]'" in unset[0] and "I26_MISSING is not set" in unset[0]
    assert "'generate.llm.teachers[0].model'" in unset[1] and "I26_ALSO_MISSING" in unset[1]
    assert raw["llm"]["base_url"] == "${I26_URL}"  # the input is not changed


def test_a_real_run_refuses_an_unset_variable_before_anything(tmp_path, monkeypatch):
    monkeypatch.delenv("I26_DATA", raising=False)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("ingest: {sources: ['gsm8k=${I26_DATA}/train.jsonl']}\n")
    with pytest.raises(UserError, match=r"'ingest.sources\[0\]': environment variable I26_DATA is not set"):
        load_plan(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# Every problem at once


def test_plan_problems_lists_files_and_columns_together(tmp_path):
    """Two missing sources and a filter with nothing upstream that adds `units` or `proficiency`: all named."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("ingest: {sources: ['gsm8k=nowhere/a.jsonl', 'csqa2=nowhere/b.json']}\n"
                   "filter: {budget: 10}\n")
    plan, problems = plan_problems(cfg, run_dir=tmp_path / "run")
    assert plan is not None
    text = "\n".join(problems)
    assert "no such file or folder" in text and "a.jsonl" in text and "b.json" in text
    assert "stage filter" in text and "'units'" in text
    assert len(problems) == 3, problems
    assert not (tmp_path / "run").exists()


def test_dry_run_of_the_recipe_prints_the_plan(tmp_path, vllm_server_url):
    """The sources at ../shared/data, every endpoint at the real vLLM server, prices given: the plan is printed."""
    data = shared_data()
    for rel in local_sources():
        shared_data(rel)  # skips when a file the recipe reads is held back or absent
    env = {**endpoints_env(vllm_server_url, write_prices(tmp_path)), "METAKL_SHARED_DATA": str(data)}
    out = tmp_path / "run"
    proc = run_cli("run", RECIPE, "--dry-run", "--out", out, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["stage", "status", "rows"] and "est. cost" in lines[0]
    stages = [line.split()[0] for line in lines[1:]]
    assert stages == ["ingest", "generate", "reward", "annotate", "merge", "score", "dedup", "decontaminate",
                      "filter", "publish"]
    assert all(" run " in line for line in lines[1:])
    assert lines[2].endswith("(reconstruct: math; sample: the rest)")
    assert not out.exists()  # a dry run writes nothing


def test_dry_run_names_a_missing_file_an_unset_endpoint_and_a_dead_one_together(tmp_path, vllm_server_url):
    data = data_layout(tmp_path / "data", leave_out="csqa2/CSQA2_train.json")
    env = {**endpoints_env(vllm_server_url, write_prices(tmp_path)), "METAKL_SHARED_DATA": str(data),
           "METAKL_TEACHER_URL": None, "METAKL_QWEN3_8B_URL": DEAD_URL}
    out = tmp_path / "run"
    proc = run_cli("run", RECIPE, "--dry-run", "--out", out, env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.startswith("stage ")  # the plan as far as it reads, then the problems
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "3 problems before anything runs" in lines[0]
    problems = lines[1:]
    assert len(problems) == 3, problems
    assert any("METAKL_TEACHER_URL is not set" in p and "'generate.llm.base_url'" in p for p in problems)
    assert any("no such file or folder" in p and p.endswith("csqa2/CSQA2_train.json") for p in problems)
    assert any("base model qwen3-8b" in p and DEAD_URL in p and "does not answer" in p for p in problems)
    assert not out.exists()


def test_dry_run_names_an_endpoint_that_does_not_serve_the_model(tmp_path, vllm_server_url):
    data = data_layout(tmp_path / "data")
    env = {**endpoints_env(vllm_server_url, write_prices(tmp_path)), "METAKL_SHARED_DATA": str(data),
           "METAKL_ANNOTATOR_MODEL": None}  # the default, gpt-4o, at a server that serves SmolLM2
    proc = run_cli("run", RECIPE, "--dry-run", "--out", tmp_path / "run", env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    problems = proc.stderr.strip().splitlines()[1:]
    assert len(problems) == 2, problems  # annotate and merge share the annotator
    assert all("does not serve model 'gpt-4o'" in p and SMOLLM2 in p for p in problems)


# ---------------------------------------------------------------------------------------------------------------
# The projection: reconstructed rows carry their solution, and the sample spreads over the sources


def test_the_projected_cost_counts_the_solutions_reconstructed_prompts_carry(tmp_path, monkeypatch):
    """Ingest keeps its sources in order: 20 math rows with a 2,000-character solution, then 20 short general rows.
    At an input-only price the projection is the prompt characters / 4; reconstructing math adds at least
    20 × 2,000 / 4 tokens ($10 at $1,000 per million), and the 16-row sample (spread over both sources) lands
    within 10% of the prompts of all 40 rows."""
    from datasets import Dataset

    import metakl.llm.cost as cost
    from metakl.io import save_stage
    from metakl.schema import features, make_id

    solution = "We add the numbers step by step. " * 61 + "\\boxed{7}"
    assert len(solution) >= 2000
    rows = [{"id": make_id(f"What is {i} + 7 - {i}?", "m"), "source": "m", "domain": "math",
             "question": f"What is {i} + 7 - {i}?", "reference": "7", "choices": [],
             "meta": json.dumps({"solution": solution}), "errors": []} for i in range(20)]
    rows += [{"id": make_id(f"Is {i} even?", "g"), "source": "g", "domain": "general", "question": f"Is {i} even?",
              "reference": "yes" if i % 2 == 0 else "no", "choices": [], "meta": "{}", "errors": []} for i in range(20)]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "prompts")

    def projected(generate: dict) -> float:
        config = {"run_dir": str(tmp_path / "run"), "input": str(tmp_path / "prompts"), "generate": generate,
                  "llm": {"base_url": DEAD_URL, "model": "teach", "prices": {"teach": {"input": 1000, "output": 0}}}}
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
        plan = load_plan(tmp_path / "p.yaml")
        fingerprint_stages(plan)
        return float(dry_run_table(plan)[1].split("≤ $")[1].split()[0])

    sampled = projected({"n": 1, "max_tokens": 8})
    mixed = projected({"n": 1, "max_tokens": 8, "reconstruct_domains": ["math"]})
    assert mixed - sampled >= 20 * 2000 / 4 * 1000 / 1e6
    monkeypatch.setattr(cost, "SAMPLE_ROWS", len(rows))  # every row: the prompts as they will be sent
    every_row = projected({"n": 1, "max_tokens": 8, "reconstruct_domains": ["math"]})
    assert abs(mixed - every_row) <= 0.1 * every_row, (mixed, every_row)
