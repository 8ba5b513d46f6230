"""benchmarks/eval_overhead.py's H100 estimate for the paper suite (issue 25): the arithmetic by hand, from the
suite's own k and budgets. (The measured part runs SmolLM2 for minutes: benchmarks only, not here.)"""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_eval_overhead", ROOT / "benchmarks" / "eval_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_h100_estimate_by_hand():
    bench = _bench()
    est = bench.h100_estimate()
    rows = {r["task"]: r for r in est["rows"]}
    # the suite's k and budgets: AIME24 and AMC23 8 samples, math and GPQA 8192 new tokens, safety the task's 512
    assert (rows["aime24"]["k"], rows["aime24"]["max_gen_toks"], rows["aime24"]["tokens"]) == (8, 8192, 30 * 8 * 8192)
    assert rows["amc23"]["tokens"] == 40 * 8 * 8192 and rows["gsm8k_test"]["tokens"] == 1319 * 8192
    assert rows["wildjailbreak"]["tokens"] == 2210 * 512 and len(rows) == 13
    # 8192 x (240 + 320 + 500 + 1319 + 674 + 272 + 198) + 512 x (1000 + 1400 + 313 + 2210)
    assert est["generated_tokens"] == 8192 * 3523 + 512 * 4923 == 31_380_992
    assert est["prefill_tokens"] == 14042 * 4 * 150 + 1221 * 5 * 150 == 9_340_950
    assert est["prefill_tokens_per_s"] == pytest.approx(989.4e12 * 0.4 / 16e9)  # 24,735
    hours = list(est["hours"].values())
    assert hours[0] == pytest.approx((31_380_992 / 3400.4 + 9_340_950 / 24_735) / 3600)  # 2.67 h
    assert hours[1] == pytest.approx((31_380_992 / 8088.35 + 9_340_950 / 24_735) / 3600)  # 1.18 h
    half = bench.h100_estimate(0.5)
    assert half["generated_tokens"] == est["generated_tokens"] / 2 and half["prefill_tokens"] == est["prefill_tokens"]
