"""Which answer kind a row expects, and matching for the non-math kinds (math goes through MathPool)."""

from __future__ import annotations

import re

from metakl.verify.mathcheck import normalize_answer

_YES = {"yes", "true"}
_NO = {"no", "false"}


def answer_kind(domain: str, reference: str | None, choices: list[str] | None) -> str | None:
    """"math" | "choice" | "yesno" | "text" for a row, None for safety rows (judged on behaviour, not an answer)."""
    if domain == "safety":
        return None
    if domain == "math":
        return "choice" if choices else "math"
    if choices:
        return "choice"
    if (reference or "").strip().lower() in _YES | _NO:
        return "yesno"
    return "text"


def answers_match(kind: str, gold: str, pred: str | None) -> bool:
    """Choice letters and yes/no compare exactly (case-insensitive); free text after normalization."""
    if pred is None or not str(pred).strip():
        return False
    g, p = gold.strip(), pred.strip()
    if kind == "choice":
        return g.upper() == p.upper()
    if kind == "yesno":
        gl, pl = g.lower(), p.lower()
        return (gl in _YES and pl in _YES) or (gl in _NO and pl in _NO)
    if kind == "text":
        norm = lambda s: re.sub(r"[^\w]+", " ", normalize_answer(s).casefold()).strip()  # noqa: E731
        return norm(g) == norm(p)
    raise ValueError(f"answers_match handles choice/yesno/text, not {kind!r} (use math_equal / MathPool)")
