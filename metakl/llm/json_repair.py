"""Tolerant JSON extraction from a model's answer: the JSON object or array it holds, repaired when needed.

A model asked for JSON may wrap it in a code fence, put prose around it, use single quotes, smart quotes, bare keys or
trailing commas, write Python literals (True, None), or stop half-way (max_tokens). `extract_json` returns every JSON
object or array it can read in the text, best first, or raises `JSONRepairError` whose `kind` (no_json, invalid_json)
groups failures and whose message can be fed back to the model. What the value must look like is the caller's to check
(metakl.stages.knowledge_parse for knowledge, metakl.stages.merge.llm_merge for merge answers).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

# Failure kinds.
NO_JSON = "no_json"
INVALID_JSON = "invalid_json"

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|$)", re.S)
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


class JSONRepairError(ValueError):
    """No usable JSON in an answer; `kind` is NO_JSON or INVALID_JSON, `message` says so to the model."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


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


def extract_json(text: str, example: str | None = None) -> list[Any]:
    """Every JSON object or array found in `text` (repaired when needed), best first; raises JSONRepairError.

    `example` (e.g. '{"skill_name": "reason"}') is shown in the message when the answer holds no JSON at all.
    """
    if not isinstance(text, str) or not text.strip():
        raise JSONRepairError(NO_JSON, "the answer is empty; reply with a JSON object")
    candidates = _candidates(text)
    if not candidates:
        raise JSONRepairError(NO_JSON, "no JSON object found in the answer; reply with a JSON object"
                                       + (f" {example}" if example else ""))
    values = []
    for cand in candidates:
        try:
            value = _loads(cand)
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            values.append(value)
    if not values:
        raise JSONRepairError(INVALID_JSON, f"the JSON is malformed: {candidates[0][:120]!r}")
    return values
