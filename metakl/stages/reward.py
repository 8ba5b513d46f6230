"""Reward stage: a reward in [0, 1] for every response, and group-relative advantages per prompt.

reward = (w_c * correctness + w_f * format + w_l * length) / (w_c + w_f + w_l), where
- correctness: math answers equivalent to the reference (math-verify, in a process pool with timeouts), choice
  letters / yes-no / free text matching it, or for safety prompts the safe behaviour (refuse a harmful prompt,
  comply with a safe one) judged by the rules or an LLM judge;
- format: the share of format checks passed: an extractable answer (a non-empty reply for safety prompts) and,
  when `format_requires_reasoning`, a reasoning/response split; a response cut off by the token limit scores 0;
- length: 1 within `length_budget` characters, falling linearly to 0 at `length_budget + length_span`.
advantage_i = (r_i - mean(r)) / std(r) within the prompt's group (population std); a group whose rewards are all
equal (std <= eps) carries no preference: its advantages are 0 and its row gets `zero_variance = True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from datasets import Dataset, Features

from metakl.config import check_settings, setting
from metakl.errors import UserError
from metakl.schema import STAGE_FEATURES, ZERO_VARIANCE_EPS, error
from metakl.stage import StageResult, row_errors, stage
from metakl.verify import (MathPool, answer_kind, answers_match, extract_answer, judge_safety, process_pool, safe_behaviour,
                           split_reasoning)
from metakl.verify.mathcheck import TIMEOUT

STAGE = "reward"


class Judge(str, Enum):
    """Who decides whether a safety response behaved: refusal-phrase rules, or an LLM with the rules as fallback."""

    rules = "rules"
    llm = "llm"


@dataclass
class RewardConfig:
    """What `metakl reward` flags and a config's `reward:` section set (one declaration: metakl.config.setting)."""

    # the three weights: >= 0 with a positive sum, one rule for the three in __post_init__
    correctness_weight: float = setting(0.8, help="Weight of correctness / safe behaviour.")
    format_weight: float = setting(0.1, help="Weight of format (an extractable answer, a reasoning split).")
    length_weight: float = setting(0.1, help="Weight of length.")
    length_budget: int = setting(6000, min=0, help=(
        "Characters (of the response text, reasoning included) before the length penalty starts."))
    length_span: int = setting(6000, min=1, help="Characters over the budget at which the length score reaches 0.")
    format_requires_reasoning: bool = setting(True, help=(
        "The format score needs a reasoning split (<think>...</think> or the server's reasoning field)."))
    math_timeout: float = setting(5.0, min=0.1, help="Seconds per math comparison.")
    workers: int | None = setting(None, min=1, help="Math worker processes (default: available cores).")
    zero_variance_eps: float = setting(ZERO_VARIANCE_EPS, min=0.0, help=(
        "A group whose rewards have a std at or below this is flagged zero_variance (GDPO skips it)."))
    judge: Judge = setting(Judge.rules, help=(
        "Safety judge: rules (refusal phrases) or llm (structured verdict; rules as fallback)."))

    def __post_init__(self) -> None:
        weights = (self.correctness_weight, self.format_weight, self.length_weight)
        if any(w < 0 for w in weights) or sum(weights) <= 0:  # the three together: one message
            raise UserError(f"reward config: weights must be >= 0 with a positive sum, got {weights}")
        check_settings(self, STAGE)
        self.judge = Judge(self.judge)


def length_score(n_chars: int, budget: int, span: int) -> float:
    """1 within the budget, then linear down to 0 at budget + span."""
    return max(0.0, 1.0 - max(0, n_chars - budget) / span)


def combine(correct: float, fmt: float, length: float, cfg: RewardConfig) -> float:
    total = cfg.correctness_weight + cfg.format_weight + cfg.length_weight
    return (cfg.correctness_weight * correct + cfg.format_weight * fmt + cfg.length_weight * length) / total


def group_advantages(rewards: list[float], eps: float = ZERO_VARIANCE_EPS) -> tuple[list[float], bool]:
    """((r - mean) / std for each reward, zero_variance). Population std; all-equal groups give zeros and True."""
    if not rewards:
        return [], True
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std <= eps:
        return [0.0] * len(rewards), True
    return [(r - mean) / std for r in rewards], False


@stage(STAGE, RewardConfig, needs_backend=lambda cfg: cfg.judge is Judge.llm, batched=True,
       requires={"domain": "the reward rule", "question": "the safety judge", "reference": "checking answers",
                 "responses": "the responses to reward"},
       provides=("zero_variance",))
def reward(
    ds: Dataset,
    config: RewardConfig,
    *,
    backend=None,
    progress: bool = False,
    pool: MathPool | None = None,
    executor=None,
) -> StageResult:
    """Score every response of every row, add advantages and `zero_variance`.

    backend: a metakl.llm backend for the LLM safety judge (config.judge = llm); without one the rule-based refusal
    detector judges. pool: a MathPool to reuse (tests, pipelines); default: one for this call. executor: where the
    batches run (metakl.executors; default: here, in one batch).
    """
    from metakl.executors import LOCAL, merge_stats

    cfg = config
    if cfg.judge is Judge.llm and backend is None:
        raise UserError("reward: judge 'llm' needs a model backend (--base-url/--model), or use judge 'rules'")
    judge_backend = backend if cfg.judge is Judge.llm else None
    executor = executor or LOCAL
    features = Features({**ds.features, "zero_variance": STAGE_FEATURES["zero_variance"]})
    own_pool = pool is None
    if own_pool:  # workers start on the first math check, so an all-safety dataset spawns none
        pool = MathPool(workers=cfg.workers, timeout=cfg.math_timeout)
    try:
        out, parts = executor.map_batches(ds, reward_batch, features, kwargs={"config": cfg, "judge_backend": judge_backend},
                                          local_kwargs={"pool": pool}, progress=progress, desc=STAGE)
    finally:
        if own_pool:
            pool.close()
    stats = merge_stats(parts)
    per_domain = stats.get("per_domain", {})
    groups, zero_var = stats.get("groups", 0), stats.get("zero_variance_groups", 0)
    report = {
        "responses": sum(d["responses"] for d in per_domain.values()),
        "mean_reward_per_domain": {k: _ratio(d["reward_sum"], d["responses"]) for k, d in per_domain.items()},
        "correct_rate_per_domain": {k: _ratio(d["correct_sum"], d["responses"]) for k, d in per_domain.items()},
        "zero_variance_share": _ratio(zero_var, groups),
        "zero_variance_groups": zero_var,
        "groups": groups,
        "extraction_failure_rate": _ratio(
            sum(d["no_answer"] for k, d in per_domain.items() if k != "safety"),
            sum(d["responses"] for k, d in per_domain.items() if k != "safety"),
        ),
        "math": stats.get("math", {}),
        "safety_judge": {"by": "llm" if judge_backend is not None else "rules",
                         "verdict_sources": stats.get("verdict_sources", {})},
        "rows_with_errors": stats.get("rows_with_errors", 0),
    }
    if judge_backend is not None:
        from metakl.templates import load_template

        report["templates"] = [load_template("verify", "safety_judge").ref]
    return StageResult(out, report)


def reward_batch(rows: list[dict[str, Any]], *, config: RewardConfig, judge_backend=None, progress: bool = False,
                 pool: MathPool | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rewards, advantages and `zero_variance` for `rows` (a group is one row's responses, so a batch holds whole
    groups), and the batch's additive statistics. Without a `pool`: this process's own (executor workers).

    Why long: three passes over the batch, named by their comments; the batched checks (pass 2) must run on all of
    the batch between pass 1 and pass 3, and the passes share the per-response `parts` table.
    """
    cfg = config
    pool = pool if pool is not None else process_pool(cfg.workers, cfg.math_timeout)

    # Pass 1: answers, format and length for every response; collect the checks that need batching.
    math_jobs: list[tuple[int, int]] = []  # (row, response) positions
    math_pairs: list[tuple[str, str]] = []
    safety_jobs: list[tuple[int, int]] = []
    safety_items: list[tuple[str, str]] = []
    parts: dict[tuple[int, int], dict[str, float]] = {}
    for ri, row in enumerate(rows):
        row["errors"] = row_errors(row.get("errors"), STAGE)
        kind = answer_kind(row["domain"], row.get("reference"), row.get("choices"))
        n_choices = len(row.get("choices") or []) or None
        for k, resp in enumerate(row.get("responses") or []):
            text = resp.get("text") or ""
            truncated = resp.get("finish_reason") == "length"
            if not resp.get("reasoning"):
                resp["reasoning"] = split_reasoning(text)[0]
            if kind is not None and not resp.get("answer"):
                resp["answer"] = extract_answer(text, kind, n_choices=n_choices)
            has_answer = bool(resp.get("answer")) if kind is not None else bool(text.strip())
            checks = [has_answer] + ([bool(resp.get("reasoning"))] if cfg.format_requires_reasoning else [])
            fmt = 0.0 if truncated else sum(checks) / len(checks)
            parts[ri, k] = {
                "format": fmt,
                "length": length_score(len(text), cfg.length_budget, cfg.length_span),
                "correct": 0.0,
                "has_answer": float(has_answer),
            }
            if kind == "math" and has_answer:
                math_jobs.append((ri, k))
                math_pairs.append((row["reference"], resp["answer"]))
            elif kind is None:
                safety_jobs.append((ri, k))
                safety_items.append((row["question"], text))
            elif has_answer:
                parts[ri, k]["correct"] = float(answers_match(kind, row["reference"], resp["answer"]))

    # Pass 2: batched math checks and safety judging.
    math_stats: dict[str, Any] = {}
    if math_pairs:
        before = dict(pool.stats)
        for (ri, k), result in zip(math_jobs, pool.check(math_pairs, progress=progress)):
            parts[ri, k]["correct"] = float(result.equal)
            if result.status == TIMEOUT or result.status == "error":
                rows[ri]["errors"].append(
                    error(STAGE, f"math_{result.status}", f"response {k}: answer {rows[ri]['responses'][k]['answer'][:80]!r}: {result.detail}")
                )
        math_stats = {key: value - before.get(key, 0) for key, value in pool.stats.items()}  # this batch's share
    verdicts = judge_safety(safety_items, judge_backend, progress=progress) if safety_items else []
    judge_sources: dict[str, int] = {}
    for (ri, k), verdict in zip(safety_jobs, verdicts):
        judge_sources[verdict.source] = judge_sources.get(verdict.source, 0) + 1
        expected = rows[ri].get("reference")
        if expected in ("refuse", "comply"):
            parts[ri, k]["correct"] = float(safe_behaviour(expected, verdict))
        else:
            rows[ri]["errors"].append(error(STAGE, "bad_reference", f"safety reference {expected!r} is not refuse/comply"))

    # Pass 3: rewards, advantages and statistics.
    per_domain: dict[str, dict[str, float]] = {}
    groups = zero_var = 0
    for ri, row in enumerate(rows):
        responses = row.get("responses") or []
        d = per_domain.setdefault(row["domain"], {"rows": 0, "responses": 0, "reward_sum": 0.0, "correct_sum": 0.0, "no_answer": 0})
        d["rows"] += 1
        if not responses:
            row["zero_variance"] = True
            row["errors"].append(error(STAGE, "no_responses", "row has no responses to score"))
            continue
        for k, resp in enumerate(responses):
            p = parts[ri, k]
            resp["reward"] = combine(p["correct"], p["format"], p["length"], cfg)
            d["responses"] += 1
            d["reward_sum"] += resp["reward"]
            d["correct_sum"] += p["correct"]
            d["no_answer"] += p["has_answer"] == 0.0
        advantages, flat = group_advantages([r["reward"] for r in responses], cfg.zero_variance_eps)
        for resp, a in zip(responses, advantages):
            resp["advantage"] = a
        row["zero_variance"] = flat
        groups += 1
        zero_var += flat
    stats = {"per_domain": per_domain, "groups": groups, "zero_variance_groups": zero_var, "math": math_stats,
             "verdict_sources": judge_sources,
             "rows_with_errors": sum(1 for r in rows if any(e["stage"] == STAGE for e in r["errors"]))}
    return rows, stats


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 6) if b else None
