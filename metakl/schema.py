"""The MetaKL row schema (DESIGN.md section 3): one row per prompt, columns added stage by stage.

Ids are stable content hashes of the normalized question and the source, so re-ingesting gives the same ids.
Every stage records per-row problems in the `errors` column (stage, kind, message) instead of dropping rows.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from datasets import Features, Sequence, Value

DOMAINS = ("math", "general", "safety")
SAFETY_BEHAVIOURS = ("refuse", "comply")

ERROR = {"stage": Value("string"), "kind": Value("string"), "message": Value("string")}

RESPONSE = {
    "text": Value("string"),
    "reasoning": Value("string"),
    "answer": Value("string"),
    "reward": Value("float64"),
    "advantage": Value("float64"),
    "model": Value("string"),
    "finish_reason": Value("string"),
}

KNOWLEDGE = {"skill": Value("string"), "reason": Value("string")}

PROFICIENCY = {"model": Value("string"), "accuracy": Value("float64"), "samples": Value("int64")}

# Columns every ingested row has.
CORE_FEATURES = {
    "id": Value("string"),
    "source": Value("string"),
    "domain": Value("string"),
    "question": Value("string"),
    "reference": Value("string"),
    "choices": Sequence(Value("string")),
    "meta": Value("string"),  # JSON object of source fields kept as metadata
    "errors": [ERROR],
}

# Columns later stages add, by name.
STAGE_FEATURES = {
    "responses": [RESPONSE],
    "knowledge": [KNOWLEDGE],
    "units": Sequence(Value("string")),
    "proficiency": [PROFICIENCY],
    "cluster": Value("int64"),
    "duplicate_of": Value("string"),
    "zero_variance": Value("bool"),  # reward stage: all rewards of the group are equal (no preference)
}


def features(*extra: str) -> Features:
    """Features for the core columns plus the named stage columns."""
    cols = dict(CORE_FEATURES)
    for name in extra:
        cols[name] = STAGE_FEATURES[name]
    return Features(cols)


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the form used for ids and exact-duplicate detection."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def make_id(question: str, source: str) -> str:
    """Stable id: sha256 of the normalized question and the source (first 16 hex digits)."""
    h = hashlib.sha256(f"{source}\x1f{normalize_text(question)}".encode("utf-8"))
    return h.hexdigest()[:16]


def error(stage: str, kind: str, message: str) -> dict[str, str]:
    """One entry of a row's `errors` column."""
    return {"stage": stage, "kind": kind, "message": message}


def choice_letter(index: int) -> str:
    return chr(ord("A") + index)


def validate_row(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Problems with a row as (field, expected, actual); an empty list means the row is valid."""
    problems: list[tuple[str, str, str]] = []
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append(("question", "a non-empty string", repr(question)[:80]))
    domain = row.get("domain")
    if domain not in DOMAINS:
        problems.append(("domain", f"one of {', '.join(DOMAINS)}", repr(domain)[:80]))
        return problems
    ref = row.get("reference")
    choices = row.get("choices") or []
    if domain == "safety":
        if ref not in SAFETY_BEHAVIOURS:
            problems.append(("reference", "'refuse' or 'comply' for a safety prompt", repr(ref)[:80]))
    elif not isinstance(ref, str) or not ref.strip():
        problems.append(("reference", f"a non-empty gold answer for a {domain} prompt", repr(ref)[:80]))
    elif choices:
        letters = [choice_letter(i) for i in range(len(choices))]
        if ref not in letters:
            problems.append(("reference", f"a choice letter in {letters[0]}..{letters[-1]}", repr(ref)[:80]))
    return problems
