"""Cost (metakl.llm.cost): prices from the user's settings, cost per stage in the reports and tables, --budget.

Hand-computed expectations for the arithmetic; the real vLLM server for what a run spends and where it stops; the
replayed batch server (tests/batch_server.py) for the batch discount and the provider's cached prompt tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from batch_server import FakeBatchServer
from metakl.config import from_dict
from metakl.errors import UserError
from metakl.llm import ChatRequest
from metakl.llm.cost import BudgetReached, Price, cost_column, parse_prices
from metakl.llm.options import LLMOptions, format_stats
from metakl.llm.scope import stage_scope
from metakl.progress import closing_line

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PRICES = {MODEL: {"input": 1000.0, "output": 4000.0}}  # USD per million tokens: visible amounts for tiny runs


def test_a_price_counts_input_cached_input_output_and_the_batch_discount():
    price = Price(input=0.15, cached_input=0.075, output=0.60, batch_discount=0.5)
    # 600 fresh + 400 cached prompt tokens, 200 completion tokens: (600*0.15 + 400*0.075 + 200*0.6) / 1e6
    assert price.cost(1000, 200, cached_tokens=400) == pytest.approx(240e-6, rel=1e-12)
    assert price.cost(1000, 200, cached_tokens=400, batch=True) == pytest.approx(120e-6, rel=1e-12)
    assert Price(input=2.0, output=8.0).cost(1000, 100, cached_tokens=500) == pytest.approx(2800e-6, rel=1e-12)


@pytest.mark.parametrize("prices, message", [
    ({"m": {"input": 1.0}}, "prices: m: 'output' is missing"),
    ({"m": {"input": -1.0, "output": 1.0}}, "prices: m: 'input': expected a number >= 0, got -1.0"),
    ({"m": {"input": 1.0, "output": 1.0, "outptu": 2}}, "prices: m: unknown field 'outptu'"),
    ({"m": {"input": 1.0, "output": 1.0, "batch_discount": 1.5}}, "'batch_discount': expected a share below 1"),
    ({"m": 3}, "prices: m: expected a mapping with input and output"),
    ([1, 2], "prices: expected a mapping of model name to prices, got list"),
])
def test_a_wrong_price_is_one_clear_error(prices, message):
    with pytest.raises(UserError, match=None) as err:
        parse_prices(prices)
    assert message in str(err.value)
    with pytest.raises(UserError):
        LLMOptions(prices=prices)


def test_reports_and_the_closing_table_show_the_cost_only_when_priced():
    report = {"stage": "generate", "rows_in": 2, "rows_out": 2, "seconds": 1.0,
              "llm": {"prompt_tokens": 10, "completion_tokens": 5, "cache_hits": 0, "cost_usd": 0.0123}}
    assert closing_line(report).endswith("15 tokens (0 cached requests), $0.0123, 1.0 s")
    assert "$" not in closing_line({**report, "llm": {**report["llm"], "cost_usd": None}})
    assert ", $0.0123, " in format_stats(report["llm"])
    lines = ["head", "----", "generate", "annotate", "this run"]
    table = cost_column(lines, [(report, True), ({"llm": {"cost_usd": None}}, True)])
    assert table == ["head  cost USD", "----" + "-" * 10, "generate    0.0123", "annotate         -",
                     "this run    0.0123"]
    assert cost_column(lines, [({}, True), ({"llm": {}}, True)]) == lines


def test_the_dataset_card_lists_the_cost_per_stage():
    from test_publish_card_template import _full

    from metakl.stages import publish as P

    assert P._stage_costs({"generate": {"llm": {"cost_usd": 1.5}}, "reward": {},
                           "score": {"llm": {"cost_usd": 0.25}}}) == \
        [["generate", "$1.50"], ["score", "$0.25"], ["total", "$1.75"]]
    cfg, configs, stats, run, figures, gap, sizes = _full()
    unpriced = P.card(cfg, configs, stats, run, figures, gap, sizes=sizes)
    run["reports"]["generate"]["llm"]["cost_usd"] = 0.125
    priced = P.card(cfg, configs, stats, run, figures, gap, sizes=sizes)
    assert "cost (USD)" not in unpriced and "$" not in unpriced.split("## How it was built")[1]
    section = priced.split("## How it was built")[1]
    assert "| generate | $0.12 |" in section and "| total | $0.12 |" in section
    assert section.index("| stage | rows in |") < section.index("| stage | cost (USD) |")


def test_a_stage_costs_its_fresh_answers_at_the_model_price_against_the_real_server(vllm_server_url, tmp_path):
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"Name a fruit number {i}."}], max_tokens=8)
            for i in range(3)]
    options = from_dict(LLMOptions, {"model": MODEL, "base_url": vllm_server_url, "cache_dir": str(tmp_path / "c"),
                                     "prices": PRICES}, "test")
    with options.build() as backend:
        assert all(r.ok for r in backend.generate_all(reqs, progress=False))
        run = backend.last_run
        assert run.prompt_tokens > 0 and run.completion_tokens > 0
        assert run.cost_usd == pytest.approx((run.prompt_tokens * 1000 + run.completion_tokens * 4000) / 1e6,
                                             rel=1e-9)
        backend.generate_all(reqs, progress=False)  # all from the request cache: nothing spent
        assert backend.last_run.cache_hits == 3 and backend.last_run.cost_usd == 0.0
        assert backend.stats.cost_usd == pytest.approx(run.cost_usd, rel=1e-12)
    unpriced = from_dict(LLMOptions, {"model": MODEL, "base_url": vllm_server_url, "cache_dir": str(tmp_path / "c"),
                                      "prices": {"another-model": {"input": 1, "output": 1}}}, "test")
    with unpriced.build() as backend:
        backend.generate_all(reqs, progress=False)
        assert backend.last_run.cost_usd is None  # no price for this model: no cost, not a guessed one


def test_the_budget_stops_a_stage_and_the_next_run_goes_on_from_the_cache(vllm_server_url, tmp_path):
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=8) for i in range(6)]
    common = {"model": MODEL, "base_url": vllm_server_url, "cache_dir": str(tmp_path / "c"), "prices": PRICES,
              "concurrency": 1}
    with stage_scope(tmp_path / "stage") as scope:
        backend = from_dict(LLMOptions, {**common, "budget": 1e-9}, "test").build()
        with backend, pytest.raises(BudgetReached, match=r"budget of \$0\.00 reached .* larger --budget"):
            backend.generate_all(reqs, progress=False)
        answered = backend.last_run.requests
        assert 1 <= answered < len(reqs) and scope.spent > 0
    with from_dict(LLMOptions, common, "test").build() as backend:
        results = backend.generate_all(reqs, progress=False)
    assert all(r.ok for r in results) and backend.last_run.cache_hits == answered


def test_budget_through_the_cli_is_one_line_and_writes_nothing(vllm_server_url, tmp_path):
    from metakl.io import save_stage
    from metakl.schema import features, make_id

    rows = [{"id": make_id(f"What is {i} + 2?", "hand"), "source": "hand", "domain": "math",
             "question": f"What is {i} + 2?", "reference": str(i + 2), "choices": [], "meta": "{}", "errors": []}
            for i in range(3)]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "ingest")
    (tmp_path / "prices.yaml").write_text(json.dumps(PRICES))
    args = [sys.executable, "-m", "metakl", "generate", str(tmp_path / "ingest"), "--out", str(tmp_path / "gen"),
            "--teacher", MODEL, "-n", "1", "--max-tokens", "16", "--base-url", vllm_server_url, "--concurrency", "1",
            "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METAKL_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
           "METAKL_PRICES": str(tmp_path / "prices.yaml")}
    stopped = subprocess.run([*args, "--budget", "0.000001"], env=env, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 2, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("error: budget of $0.00 reached")
    assert "Traceback" not in stopped.stderr and not (tmp_path / "gen").exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "gen" / "generate_report.json").read_text())
    llm = report["llm"]
    assert llm["cache_hits"] >= 1 and llm["cost_usd"] > 0
    fresh_share = llm["cost_usd"] / ((llm["prompt_tokens"] * 1000 + llm["completion_tokens"] * 4000) / 1e6)
    assert 0 < fresh_share < 1  # the cached answers cost nothing this time
    assert f"${llm['cost_usd']:.4f}" in done.stdout  # the closing line
    cold = [*args[:args.index("--cache-dir")], "--cache-dir", str(tmp_path / "cold"), "--out", str(tmp_path / "gen2")]
    done = subprocess.run(cold, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    llm = json.loads((tmp_path / "gen2" / "generate_report.json").read_text())["llm"]
    assert llm["cache_hits"] == 0  # every answer fresh: the report's cost is the price of all its tokens
    assert llm["cost_usd"] == pytest.approx((llm["prompt_tokens"] * 1000 + llm["completion_tokens"] * 4000) / 1e6,
                                            rel=1e-6)


def test_batch_mode_costs_the_batch_price_with_the_providers_cached_tokens(tmp_path):
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"q {i}"}], max_tokens=8) for i in range(5)]
    prices = {"gpt-4o-mini": {"input": 1.0, "cached_input": 0.5, "output": 2.0, "batch_discount": 0.5}}
    with FakeBatchServer("gpt-4o-mini") as server, stage_scope(tmp_path / "stage"):
        options = LLMOptions(model="gpt-4o-mini", base_url=server.url, cache_dir=str(tmp_path / "c"), batch=True,
                             batch_poll=0.01, prices=prices)
        with options.build() as backend:
            backend.generate_all(reqs, progress=False)
    # each answer (fixture usage): 10 prompt tokens of which 4 cached, 3 completion tokens:
    # (6 * 1.0 + 4 * 0.5 + 3 * 2.0) / 1e6 = 14e-6, half in batch mode; 5 answers
    assert backend.last_run.cached_prompt_tokens == 20
    assert backend.last_run.cost_usd == pytest.approx(5 * 7e-6, rel=1e-12)


def test_dry_run_projects_the_cost_from_a_sample_of_the_plans_prompts(tmp_path):
    """`metakl run --dry-run`: each priced stage whose input is on disk gets a ceiling (completion tokens at
    max_tokens × n; prompt tokens as characters / 4 of the requests the stage builds for a sample of its rows).
    With a zero input price the ceiling is hand-computable: rows × max_tokens × n × output price."""
    import yaml

    from metakl.io import save_stage
    from metakl.pipeline import dry_run_table, fingerprint_stages, load_plan
    from metakl.schema import features, make_id

    rows = [{"id": make_id(f"What is {i} * 3?", "hand"), "source": "hand", "domain": "math",
             "question": f"What is {i} * 3?", "reference": str(i * 3), "choices": [], "meta": "{}", "errors": []}
            for i in range(40)]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "prompts")

    def table(stages: dict, prices: dict) -> list[str]:
        config = {"run_dir": str(tmp_path / "run"), "input": str(tmp_path / "prompts"), **stages,
                  "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "teach", "prices": prices}}
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
        plan = load_plan(tmp_path / "p.yaml")
        fingerprint_stages(plan)
        return dry_run_table(plan)

    free_input = {"teach": {"input": 0, "output": 10.0}, "m1": {"input": 0, "output": 100.0}}
    lines = table({"generate": {"n": 2, "max_tokens": 100}}, free_input)
    assert "est. cost" in lines[0] and lines[1].split()[0] == "generate"
    assert "≤ $0.08" in lines[1]  # 40 rows × 100 tokens × n 2 × $10 / 1e6
    lines = table({"score": {"base_models": ["m1"], "k": 2, "max_tokens": 50}}, free_input)
    assert "≤ $0.40" in lines[1]  # 40 rows × 50 tokens × k 2 × $100 / 1e6
    paid_input = {"teach": {"input": 1000.0, "output": 10.0}}
    cell = table({"generate": {"n": 2, "max_tokens": 100}}, paid_input)[1].split("≤ $")[1].split()[0]
    assert float(cell) > 0.08 + 40 * 5 * 1000 / 1e6  # each prompt is more than 5 tokens: "What is i * 3?" and more
    unpriced = table({"generate": {"n": 2}}, {})
    assert "est. cost" not in unpriced[0]
