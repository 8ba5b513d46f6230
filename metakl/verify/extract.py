"""Answer extraction from free-form model output.

`split_reasoning` separates a reasoning block (`<think>...</think>` and similar) from the final response;
`extract_answer(text, kind)` pulls the final answer out of the response: the last `\\boxed{}` (nested braces
allowed), "the answer is ...", a choice letter, or yes/no. A missing answer is `None`, never a guess.
"""

from __future__ import annotations

import re

ANSWER_KINDS = ("math", "choice", "yesno", "text")

# Reasoning blocks some models emit; the first pair whose closing tag is present wins.
_REASONING_TAGS = ("think", "thinking", "reasoning", "thought")
_OPEN = re.compile(r"<(%s)>" % "|".join(_REASONING_TAGS), re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, response). Without tags: ("", text). An unclosed block means the answer never came: (block, "").

    A closing tag without an opening one counts too (chat templates that pre-fill `<think>`).
    """
    if not text:
        return "", ""
    for tag in _REASONING_TAGS:
        close = re.search(r"</%s>" % tag, text, re.IGNORECASE)
        if close is None:
            continue
        open_ = re.search(r"<%s>" % tag, text[: close.start()], re.IGNORECASE)
        start = open_.end() if open_ else 0
        return text[start : close.start()].strip(), text[close.end() :].strip()
    m = _OPEN.search(text)
    if m:  # opened, never closed: truncated reasoning
        return text[m.end() :].strip(), ""
    return "", text.strip()


# `\boxed` / `\fbox` as a command: not the start of a longer name such as `\fboxsep` or `\boxedminipage`.
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces), or of `\\boxed 5`, stripped; None if absent.

    The one copy for every stage (references at ingest, answers at generate/reward, gdpo's evaluation). Decided cases:
    - The last box decides. When it is cut off (unbalanced braces, no argument) the result is None, not an earlier
      box: a truncated output or a damaged solution has no final answer, and an earlier box is not it (a missing
      answer is None, never a guess).
    - `\\{`, `\\}` and `\\\\` are escapes: `\\boxed{\\}}` is `\\}`, `\\boxed{\\{1,2\\}}` is `\\{1,2\\}`, and in `\\boxed{a \\\\}`
      the final brace closes the box.
    """
    if not text:
        return None
    last = None
    for last in _BOX.finditer(text):
        pass
    return None if last is None else _box_argument(text, last.end())


def _box_argument(text: str, i: int) -> str | None:
    """The argument of a box command whose name ends at `i`."""
    j = i
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        depth, k = 0, j
        while k < len(text):
            c = text[k]
            if c == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
                k += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : k].strip()
            k += 1
        return None  # unbalanced: cut off
    if j > i:  # `\boxed 5`: the token up to the next space or `$`
        m = re.match(r"[^\s$]+", text[j:])
        return m.group(0) if m else None
    return None


def after_hashes(text: str) -> str | None:
    """GSM8K's final answer: what follows the last '####', thousands separators dropped; None when absent or empty."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    answer = text[pos + 4 :].strip().replace(",", "")
    return answer or None


_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*[:\s]*(.+?)(?:\n|$)",
    re.IGNORECASE,
)


def _answer_phrase(text: str) -> str | None:
    """The last "the answer is X" / "Final answer: X" phrase, X cut at the sentence end."""
    found = None
    for m in _ANSWER_IS.finditer(text):
        found = m.group(1)
    if found is None:
        return None
    found = found.strip()
    # Stop at a sentence end ('. ' or a final '.') but keep decimals like 3.5.
    found = re.split(r"(?<!\d)\.(?:\s|$)|\.\s", found, maxsplit=1)[0]
    return _strip_math(found) or None


def _strip_math(s: str) -> str:
    s = s.strip().strip("*").strip()
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b) and len(s) > len(a) + len(b) - 1:
            s = s[len(a) : len(s) - len(b)].strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    elif _BOX.search(s):  # "the answer is \boxed{\frac{7" cut off: no answer rather than the broken text
        return ""
    return s.rstrip(".").strip()


_LETTER_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*[:\s]*\(?\**\s*([A-J])\s*\**\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?[.):]?\s*$", re.MULTILINE),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"(?<![A-Za-z])([A-J])\)"),
    re.compile(r"^\s*([A-J])[.:]", re.MULTILINE),
)


def _choice_letter(text: str, n_choices: int | None) -> str | None:
    letters = "ABCDEFGHIJ"[: n_choices or 10]
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.fullmatch(r"\s*(?:\\text\{)?\(?([A-Ja-j])\)?\}?\s*", boxed)
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
    for pattern in _LETTER_PATTERNS:
        hits = [h.upper() for h in pattern.findall(text) if h.upper() in letters]
        if hits:
            return hits[-1]
    return None


_YESNO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def _yes_no(text: str) -> str | None:
    boxed = last_boxed(text)
    for candidate in (boxed, _answer_phrase(text)):
        if candidate:
            m = _YESNO.search(re.sub(r"\\text\{([^}]*)\}", r"\1", candidate))
            if m:
                return m.group(1).lower()
    m = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)  # a reply that opens with yes/no
    if m:
        return m.group(1).lower()
    hits = _YESNO.findall(text)
    return hits[-1].lower() if hits else None


def extract_answer(text: str, kind: str = "math", *, n_choices: int | None = None) -> str | None:
    """The final answer in `text` (reasoning is skipped when tagged), or None when none can be found.

    kind: "math" (last \\boxed{}, else "the answer is ..."), "choice" (a letter A..J, capitalized), "yesno"
    ("yes"/"no"), "text" (boxed or "the answer is ...", as written).
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(ANSWER_KINDS)}")
    reasoning, response = split_reasoning(text or "")
    if not response:
        return None
    if kind == "choice":
        return _choice_letter(response, n_choices)
    if kind == "yesno":
        return _yes_no(response)
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    return _answer_phrase(response)
