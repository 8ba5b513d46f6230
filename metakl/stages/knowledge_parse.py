"""Reading a model's knowledge answer: the tolerant JSON parser (metakl.llm.json_repair) plus a strict validator.

A model asked for `{"skill_name": "short reason", ...}` may wrap it in a code fence, put prose around it, use single
quotes or trailing commas, stop half-way (max_tokens), or answer with a list of `{"skill": ..., "reason": ...}`
objects. `parse_knowledge` accepts all of those and returns `[{"skill", "reason"}, ...]` with names in lower snake
case, or raises `KnowledgeError` whose `kind` groups failures and whose message is fed back to the model on retry.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from metakl.llm.json_repair import INVALID_JSON, NO_JSON, JSONRepairError, extract_json  # noqa: F401 (kinds here too)

# Failure kinds, in the order a row can hit them (NO_JSON and INVALID_JSON come from the JSON repair).
WRONG_SHAPE = "wrong_shape"
NO_SKILLS = "no_skills"
TOO_MANY_SKILLS = "too_many_skills"
BAD_NAME = "bad_name"
EMPTY_REASON = "empty_reason"
COPIED_EXAMPLE = "copied_example"

# Wrappers a model sometimes puts around the real object: {"skills": {...}}.
_WRAPPER_KEYS = {"skills", "knowledge", "metacognitive_knowledge", "required_skills", "skill_list", "answer", "output",
                 "units", "knowledge_units"}
_NAME_KEYS = ("skill", "skill_name", "name", "knowledge", "title")
_REASON_KEYS = ("reason", "why", "description", "explanation", "justification", "rationale")
# Names copied from the instructions instead of a real skill.
PLACEHOLDER_NAMES = {"skill", "skill_name", "skillname", "name", "reason", "knowledge", "skill_1", "skill_2", "skill_3", "example_skill"}

# A name made only of these words describes no skill ("why", "from", "to_the").
_FUNCTION_WORDS = frozenset(
    """a an the of to from with without in on at by for into and or but not no is are be it this that these those
    why what how when where which who whom whose yes https http www""".split()
)
_PLACEHOLDER = re.compile(r"^(first|second|third|name_of|your|example|my)?_?(skill|skills|reason)(_name|_\d+|_one|_two)?$")


class KnowledgeError(JSONRepairError):
    """An answer that is not valid knowledge; `kind` is one of the constants above."""


# What a knowledge answer looks like, shown when an answer holds no JSON at all.
_EXAMPLE = '{"skill_name": "reason"}'


def _json_values(text: str) -> list[Any]:
    """The JSON values in a knowledge answer; a failure is a KnowledgeError like every other problem of the answer."""
    try:
        return extract_json(text, example=_EXAMPLE)
    except JSONRepairError as exc:
        raise KnowledgeError(exc.kind, exc.message) from None


# ---------------------------------------------------------------- names


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalize_skill_name(name: str) -> str:
    """Lower snake case: `Adding Fractions`, `addingFractions`, `adding-fractions` -> `adding_fractions`."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    text = text.replace("'", "")  # l'hopital's -> lhopitals, not l_hopital_s
    text = _CAMEL.sub("_", text).lower()
    return _NON_WORD.sub("_", text).strip("_")


def check_skill_name(name: str, max_words: int = 10) -> str | None:
    """Why a normalized name is unusable, or None when it is fine."""
    if not name:
        return "empty skill name"
    if not re.search(r"[a-z]", name):
        return f"skill name '{name}' has no letters"
    if name in PLACEHOLDER_NAMES or _PLACEHOLDER.match(name):
        return f"'{name}' is the placeholder from the instructions, not a skill; name the actual skill"
    words = name.split("_")
    if all(w in _FUNCTION_WORDS or w.isdigit() for w in words):
        return f"'{name}' does not describe a skill; use descriptive words like adding_fractions"
    if len(words) > max_words:
        return f"skill name '{name}' has {len(words)} words; use at most {max_words}"
    return None


# ---------------------------------------------------------------- shape and validation


def _reason_text(value: Any) -> str | None:
    """A reason as text, or None when the value cannot be one."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, dict):
        for key in _REASON_KEYS:
            if key in value:
                return _reason_text(value[key])
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(v.strip() for v in value if v.strip())
    return None


def _pairs(value: Any, depth: int = 0) -> list[tuple[str, Any]]:
    """(name, reason) pairs from a dict, a list of records or pairs, or a wrapper around either."""
    if depth > 3:
        raise KnowledgeError(WRONG_SHAPE, "the JSON is nested too deeply; reply with a flat object {\"skill_name\": \"reason\"}")
    if isinstance(value, dict):
        keys = {normalize_skill_name(k) for k in value}
        if len(value) == 1 and keys <= _WRAPPER_KEYS and isinstance(next(iter(value.values())), (dict, list)):
            return _pairs(next(iter(value.values())), depth + 1)
        record = _record(value)
        if record is not None:
            return [record]
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list):
        out: list[tuple[str, Any]] = []
        for item in value:
            if isinstance(item, dict):
                record = _record(item)
                if record is not None:
                    out.append(record)
                else:
                    out.extend((str(k), v) for k, v in item.items())
            elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
                out.append((item[0], item[1]))
            elif isinstance(item, str):
                out.append((item, ""))
            else:
                raise KnowledgeError(WRONG_SHAPE, f"unexpected list item {str(item)[:60]!r}; reply with an object {{\"skill_name\": \"reason\"}}")
        return out
    raise KnowledgeError(WRONG_SHAPE, f"expected a JSON object, got {type(value).__name__}")


def _record(d: dict) -> tuple[str, Any] | None:
    """A {"skill": ..., "reason": ...} record (with common synonyms), or None."""
    name_key = next((k for k in _NAME_KEYS if k in d and isinstance(d[k], str)), None)
    reason_key = next((k for k in _REASON_KEYS if k in d), None)
    if name_key and reason_key:
        return d[name_key], d[reason_key]
    return None


def validate_knowledge(value: Any, *, max_skills: int = 8, min_skills: int = 1, max_name_words: int = 10) -> list[dict[str, str]]:
    """A parsed JSON value -> [{"skill", "reason"}], names normalized; raises KnowledgeError on the first problem."""
    pairs = _pairs(value)
    knowledge: list[dict[str, str]] = []
    seen: set[str] = set()
    for raw_name, raw_reason in pairs:
        name = normalize_skill_name(raw_name)
        problem = check_skill_name(name, max_name_words)
        if problem:
            raise KnowledgeError(BAD_NAME, problem)
        reason = _reason_text(raw_reason)
        if reason is None:
            raise KnowledgeError(WRONG_SHAPE, f"the reason for '{name}' must be a short sentence, not {type(raw_reason).__name__}")
        if not reason:
            raise KnowledgeError(EMPTY_REASON, f"the reason for '{name}' is empty; give one short sentence for each skill")
        if name in seen:  # the same skill twice after normalization: keep the first
            continue
        seen.add(name)
        knowledge.append({"skill": name, "reason": reason})
    if len(knowledge) < min_skills:
        raise KnowledgeError(NO_SKILLS, f"no skills given; list at least {min_skills} skill(s) as {{\"skill_name\": \"reason\"}}")
    if len(knowledge) > max_skills:
        raise KnowledgeError(TOO_MANY_SKILLS, f"{len(knowledge)} skills given; list at most {max_skills}, the most important ones")
    return knowledge


def parse_knowledge(text: str, *, max_skills: int = 8, min_skills: int = 1, max_name_words: int = 10) -> list[dict[str, str]]:
    """A model's raw answer -> validated knowledge; raises KnowledgeError (kind + message for the retry prompt).

    The first JSON value in the text that validates wins; when none does, the first one's problem is reported.
    """
    first_error: KnowledgeError | None = None
    for value in _json_values(text):
        try:
            return validate_knowledge(value, max_skills=max_skills, min_skills=min_skills, max_name_words=max_name_words)
        except KnowledgeError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def example_pairs(prompt: str) -> set[tuple[str, str]]:
    """(skill, reason) pairs of the example answers shown in a prompt, to recognize an answer that copies them."""
    pairs: set[tuple[str, str]] = set()
    try:
        values = _json_values(prompt)
    except KnowledgeError:
        return pairs
    for value in values:
        try:
            pairs.update((k["skill"], k["reason"]) for k in validate_knowledge(value, max_skills=10**6))
        except KnowledgeError:
            continue
    return pairs


def check_not_copied(knowledge: list[dict[str, str]], examples: set[tuple[str, str]]) -> None:
    """Raise when the answer repeats a skill of the example with the example's very reason."""
    if any((k["skill"], k["reason"]) in examples for k in knowledge):
        raise KnowledgeError(
            COPIED_EXAMPLE, "the answer repeats the example instead of naming the skills this question needs"
        )


def knowledge_json_schema(max_skills: int = 8, min_skills: int = 1) -> dict[str, Any]:
    """JSON schema for structured output: an object of 1..K lower-snake-case names to non-empty reasons.

    vLLM's grammar backends accept `patternProperties` but not `propertyNames`, hence this form.
    """
    return {
        "type": "object",
        "patternProperties": {
            r"^[a-z][a-z0-9]*(_[a-z0-9]+){0,9}$": {"type": "string", "minLength": 3, "maxLength": 200},
        },
        "additionalProperties": False,
        "minProperties": min_skills,
        "maxProperties": max_skills,
    }
