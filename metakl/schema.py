"""The MetaKL row schema (DESIGN.md section 3): one row per prompt, columns added stage by stage.

Ids are stable content hashes of the normalized question and the source, so re-ingesting gives the same ids.
Every stage records per-row problems in the `errors` column (stage, kind, message) instead of dropping rows.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence as Seq
from typing import Any

from datasets import Features, Sequence, Value

from metakl.errors import UserError

DOMAINS = ("math", "general", "safety")
SAFETY_BEHAVIOURS = ("refuse", "comply")

# A group whose rewards have a (population) std at or below this carries no preference: the reward stage flags it
# `zero_variance` and GDPO skips it. One definition for both.
ZERO_VARIANCE_EPS = 1e-6


def domain_mapping(mapping: Any, what: str) -> dict[str, Any]:
    """A per-domain setting (`{safety: 0.12}`) checked: every key a domain. One message for every verb and config."""
    if not isinstance(mapping, dict):
        raise UserError(f"{what}: expected a mapping of domain to value, got {mapping!r}")
    unknown = [k for k in mapping if k not in DOMAINS]
    if unknown:
        raise UserError(f"{what}: unknown domain {', '.join(map(repr, unknown))}; expected one of {', '.join(DOMAINS)}")
    return dict(mapping)


def for_domain(domain: str, own: dict[str, Any], everywhere: Any, defaults: dict[str, Any], other: Any) -> Any:
    """A per-domain setting's value for `domain`: its own entry, else the one set for every domain, else the default
    for that domain (`other` for a domain without one)."""
    if domain in own:
        return own[domain]
    return everywhere if everywhere is not None else defaults.get(domain, other)


def key_values(items: list[str], option: str, metavar: str, example: str, convert: Any) -> dict[str, Any]:
    """A repeatable `KEY=VALUE` command-line option (`["safety=0.12"]` -> {"safety": 0.12}); a malformed item or a
    value `convert` refuses (ValueError) is a UserError naming the option. Check the keys with `domain_mapping`."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip() or not value.strip():
                raise ValueError
            out[key.strip()] = convert(value.strip())
        except ValueError:
            raise UserError(f"{option}: expected {metavar} (e.g. {example}), got {item!r}") from None
    return out


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


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the form used for ids and exact-duplicate detection."""
    # str.split() splits on exactly the characters re's \s matches; ASCII text is already NFKC-normal.
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split()).casefold()


def _choices_key(choices) -> str:
    return "\x1e".join(normalize_text(c) for c in choices) if choices else ""


def id_from_normalized(normalized_question: str, source: str, normalized_choices: str = "") -> str:
    """`make_id` for a question (and choices key) already passed through `normalize_text` (saves a second pass)."""
    key = f"{source}\x1f{normalized_question}"
    if normalized_choices:
        key += f"\x1f{normalized_choices}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def make_id(question: str, source: str, choices: Seq[str] | None = None) -> str:
    """Stable id: sha256 of the source, the normalized question and (when given) the normalized choices.

    The first 16 hex digits. Choices take part because multiple-choice sources (MMLU) repeat stems such as
    "Which of the following is true?" with different options; without choices the id is the same as before.
    """
    return id_from_normalized(normalize_text(question), source, _choices_key(choices))


def dedup_key(question: str, choices: Seq[str] | None = None) -> str:
    """The text compared for exact duplicates within and across sources: normalized question and choices."""
    return normalize_text(question) + ("\x1f" + _choices_key(choices) if choices else "")


def error(stage: str, kind: str, message: str) -> dict[str, str]:
    """One entry of a row's `errors` column."""
    return {"stage": stage, "kind": kind, "message": message}


def choice_letter(index: int) -> str:
    """0 -> "A", 1 -> "B", ..."""
    return chr(ord("A") + index)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_row(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Problems with a row as (field, expected, actual); an empty list means the row is valid.

    Checks the core columns: a non-empty question, a known domain, choices as a list of non-empty strings, and a
    reference that fits the domain (a choice letter when there are choices, "refuse"/"comply" for safety).
    """
    problems: list[tuple[str, str, str]] = []
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append(("question", "a non-empty string", _short(question)))
    domain = row.get("domain")
    if domain not in DOMAINS:
        problems.append(("domain", f"one of {', '.join(DOMAINS)}", _short(domain)))
        return problems
    choices = row.get("choices") or []
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) and c.strip() for c in choices):
        problems.append(("choices", "a list of non-empty strings", _short(choices)))
        choices = []
    elif len(choices) == 1 or len(choices) > 26:
        problems.append(("choices", "between 2 and 26 options", f"{len(choices)} options"))
    ref = row.get("reference")
    if domain == "safety":
        if ref not in SAFETY_BEHAVIOURS:
            problems.append(("reference", "'refuse' or 'comply' for a safety prompt", _short(ref)))
    elif not isinstance(ref, str) or not ref.strip():
        problems.append(("reference", f"a non-empty gold answer for a {domain} prompt", _short(ref)))
    elif choices:
        letters = [choice_letter(i) for i in range(len(choices))]
        if ref not in letters:
            problems.append(("reference", f"a choice letter in {letters[0]}..{letters[-1]}", _short(ref)))
    return problems


def describe_problem(location: str, field: str, expected: str, actual: str) -> str:
    """The one-line form of a problem used by every stage: where, which field, expected, actual."""
    return f"{location}: field '{field}': expected {expected}, got {actual}"
