"""Reading a model's knowledge answer: a tolerant JSON parser plus a strict validator.

A model asked for `{"skill_name": "short reason", ...}` may wrap it in a code fence, put prose around it, use single
quotes or trailing commas, stop half-way (max_tokens), or answer with a list of `{"skill": ..., "reason": ...}`
objects. `parse_knowledge` accepts all of those and returns `[{"skill", "reason"}, ...]` with names in lower snake
case, or raises `KnowledgeError` whose `kind` groups failures and whose message is fed back to the model on retry.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from typing import Any

# Failure kinds, in the order a row can hit them.
NO_JSON = "no_json"
INVALID_JSON = "invalid_json"
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
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|$)", re.S)
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


class KnowledgeError(ValueError):
    """An answer that is not valid knowledge; `kind` is one of the constants above."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


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


# ---------------------------------------------------------------- JSON extraction


def _candidates(text: str, limit: int = 20) -> list[str]:
    """Substrings that may hold the JSON value, best first: fenced blocks, then spans from each opening bracket."""
    out: list[str] = []
    for m in _FENCE.finditer(text):
        body = m.group(2).strip()
        if body:
            out.append(body)
    starts = [i for i, ch in enumerate(text) if ch in "{["][:limit]
    out.extend(_balanced_span(text, i) for i in starts)
    return list(dict.fromkeys(out))


def _balanced_span(text: str, start: int) -> str:
    """From `start` to its matching bracket (string-aware); the rest of the text when it never closes."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            # An apostrophe inside a bare word (don't) is not a quote.
            if ch == "'" and i > 0 and text[i - 1].isalnum():
                continue
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return text[start:]


def _repair(s: str) -> str:
    """Rewrite near-JSON as JSON: single-quoted strings, bare keys, trailing commas, Python literals, a cut-off end."""
    s = s.translate(_SMART_QUOTES)
    out: list[str] = []
    stack: list[str] = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch in "\"'" and not (ch == "'" and i > 0 and s[i - 1].isalnum()):
            # Read a string delimited by `ch`; re-emit it as a JSON string.
            j, buf, closed = i + 1, [], False
            while j < n:
                c = s[j]
                if c == "\\" and j + 1 < n:
                    nxt = s[j + 1]
                    buf.append(nxt if nxt in "\"'" else "\\" + nxt)
                    j += 2
                    continue
                if c == ch and not (ch == "'" and buf and buf[-1].isalnum() and j + 1 < n and s[j + 1].isalpha()):
                    closed = True
                    break
                buf.append(c)
                j += 1
            raw = "".join(buf)
            try:
                value = json.loads('"' + raw.replace('"', '\\"') + '"')
            except json.JSONDecodeError:
                value = raw
            out.append(json.dumps(value, ensure_ascii=False))
            if not closed:
                break
            i = j + 1
            continue
        if ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack:
                stack.pop()
            _drop_trailing_comma(out)
        elif ch.isalpha() or ch == "_":
            # A bare word: a Python literal, or an unquoted key (`{adding_fractions: "..."}`).
            j = i
            while j < n and (s[j].isalnum() or s[j] in "_-"):
                j += 1
            word = s[i:j]
            k = j
            while k < n and s[k] in " \t":
                k += 1
            literal = {"True": "true", "False": "false", "None": "null", "true": "true", "false": "false", "null": "null"}
            if k < n and s[k] == ":" and word not in literal:
                out.append(json.dumps(word))
            else:
                out.append(literal.get(word, json.dumps(word)))
            i = j
            continue
        out.append(ch)
        i += 1
    text = "".join(out).rstrip()
    if stack:  # a cut-off answer: drop a dangling comma, colon or key, then close what is open
        while True:
            if text.endswith(","):
                text = text[:-1].rstrip()
            elif text.endswith(":"):
                text = re.sub(_JSON_STRING + r"\s*:$", "", text).rstrip()
            elif stack[-1] == "}" and re.search(r"[{,]\s*" + _JSON_STRING + "$", text):
                text = re.sub(_JSON_STRING + "$", "", text).rstrip()
            else:
                break
    return text + "".join(reversed(stack))


def _drop_trailing_comma(out: list[str]) -> None:
    k = len(out) - 1
    while k >= 0 and out[k].isspace():
        k -= 1
    if k >= 0 and out[k] == ",":
        del out[k]


def _loads(candidate: str) -> Any:
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    try:
        return json.loads(_repair(candidate))
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(candidate)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError("not parseable") from None


def extract_json(text: str) -> list[Any]:
    """Every JSON object or array found in `text` (repaired when needed), best first; raises KnowledgeError."""
    if not isinstance(text, str) or not text.strip():
        raise KnowledgeError(NO_JSON, "the answer is empty; reply with a JSON object")
    candidates = _candidates(text)
    if not candidates:
        raise KnowledgeError(NO_JSON, 'no JSON object found in the answer; reply with a JSON object {"skill_name": "reason"}')
    values = []
    for cand in candidates:
        try:
            value = _loads(cand)
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            values.append(value)
    if not values:
        raise KnowledgeError(INVALID_JSON, f"the JSON is malformed: {candidates[0][:120]!r}")
    return values


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
    for value in extract_json(text):
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
        values = extract_json(prompt)
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
