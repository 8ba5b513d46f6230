"""Answer extraction and checking, shared by the reward stage and gdpo's evaluation.

- `extract_answer(text, kind)`, `split_reasoning(text)`: the final answer and the reasoning/response split;
  `last_boxed(text)` and `after_hashes(text)` (GSM8K `#### n`), also used for references at ingest.
- `math_equal(gold, pred)`, `check_math_batch(pairs)`, `MathPool`: math equivalence (math-verify) with timeouts.
- `answers_match(kind, gold, pred)`: choices, yes/no, free text, math.
- `detect_refusal(text)`, `judge_safety(...)`: rule-based refusal detector and the LLM safety judge.
"""

from metakl.verify.answers import answer_kind, answers_match
from metakl.verify.extract import ANSWER_KINDS, after_hashes, extract_answer, last_boxed, split_reasoning
from metakl.verify.mathcheck import MathCheck, normalize_answer
from metakl.verify.pool import MathPool, check_math_batch, math_equal, process_pool
from metakl.verify.safety import SafetyVerdict, detect_refusal, judge_safety, safe_behaviour

__all__ = [
    "ANSWER_KINDS",
    "MathCheck",
    "MathPool",
    "SafetyVerdict",
    "after_hashes",
    "answer_kind",
    "answers_match",
    "detect_refusal",
    "judge_safety",
    "safe_behaviour",
    "check_math_batch",
    "extract_answer",
    "last_boxed",
    "math_equal",
    "normalize_answer",
    "process_pool",
    "split_reasoning",
]
