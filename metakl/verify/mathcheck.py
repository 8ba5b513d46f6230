"""Math answer equivalence: cheap string/number fast paths first, then math-verify (sympy) under a timeout.

math-verify's own timeout uses `signal.alarm`, which fails off the main thread and cannot interrupt a stall inside
C code (a huge integer power, say). `check_pair` therefore runs with math-verify's timeouts off and its own
interval timer; `metakl.verify.pool.MathPool` runs it in worker processes and kills a worker that still overruns.
"""

from __future__ import annotations

import re
import signal
import threading
from dataclasses import dataclass
from fractions import Fraction

# Outcome of one comparison.
EQUAL, NOT_EQUAL, TIMEOUT, ERROR = "equal", "not_equal", "timeout", "error"


@dataclass(frozen=True)
class MathCheck:
    equal: bool
    status: str  # equal | not_equal | timeout | error
    detail: str = ""


_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_UNITS = re.compile(
    r"\\?\s*(?:square\s+units?|sq\.?\s*units?|units?|degrees?|cm|meters?|inches|inch|feet|dollars?|cents?|hours?|minutes?|seconds?)\s*$",
    re.IGNORECASE,
)


def normalize_answer(s: str) -> str:
    """A canonical string for cheap equality: spacing, \\left/\\right, \\dfrac, degree marks, text wrappers, units."""
    s = (s or "").strip()
    s = s.strip("$").strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    s = _TEXT_WRAP.sub(r"\1", s)
    for a, b in (
        (",\\!", ""), ("{,}", ""),  # explicit thousands separators: 50,\!625 and 10{,}000
        ("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""), ("\\,", ""),
        ("\\;", ""), ("\\ ", ""), ("{,}", ""), ("^\\circ", ""), ("^{\\circ}", ""), ("\\circ", ""), ("°", ""),
        ("\\%", ""), ("%", ""), ("\\$", ""),
    ):
        s = s.replace(a, b)
    s = _UNITS.sub("", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s


_WORD = re.compile(r"[A-Za-z]+")
_CONSTANT_NAMES = {"pi", "oo", "inf", "infty", "infinity", "nan"}


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_SIMPLE_FRAC = re.compile(r"([-+]?)\\frac\{?(\d+)\}?\{?(\d+)\}?")
_SLASH_FRAC = re.compile(r"([-+]?)(\d+)/(\d+)")


def _as_number(s: str) -> Fraction | None:
    """The exact value of a plain integer, decimal or simple \\frac{a}{b}; None for anything else."""
    if _NUMBER.fullmatch(s):
        return Fraction(s)
    m = _SIMPLE_FRAC.fullmatch(s) or _SLASH_FRAC.fullmatch(s)
    if m and int(m.group(3)) != 0:
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return -v if m.group(1) == "-" else v
    return None


def fast_check(gold: str, pred: str) -> MathCheck | None:
    """A certain verdict without sympy, or None when the pair needs math-verify."""
    if pred is None or not str(pred).strip():
        return MathCheck(False, NOT_EQUAL, "empty prediction")
    g, p = normalize_answer(gold), normalize_answer(pred)
    if g == p:
        return MathCheck(True, EQUAL, "same normalized string")
    gn, pn = _as_number(g), _as_number(p)
    if gn is not None and pn is not None:
        # Both are plain numbers: exact comparison, with math-verify's tolerance for rounded decimals.
        same = gn == pn or abs(float(gn) - float(pn)) <= 1e-6 * max(1.0, abs(float(gn)))
        return MathCheck(same, EQUAL if same else NOT_EQUAL, "numbers")
    # Plain words ("odd", "Sunday") equal only the same word (any case), and never a number. Single letters are
    # left to sympy (x is not X; E and e are constants there), and so are names of constants.
    gw, pw = _is_word(g), _is_word(p)
    if (gw and pw) or (gw and pn is not None) or (pw and gn is not None):
        same = gw and pw and g.casefold() == p.casefold()
        return MathCheck(same, EQUAL if same else NOT_EQUAL, "words")
    return None


def _is_word(s: str) -> bool:
    return len(s) >= 2 and bool(_WORD.fullmatch(s)) and s.casefold() not in _CONSTANT_NAMES


class _Overrun(BaseException):
    """Raised by our timer inside sympy; a BaseException so math-verify's `except Exception` lets it through."""


def _alarm(signum, frame):
    raise _Overrun()


def _wrap(s: str) -> str:
    return s if "\\boxed" in s else "\\boxed{" + s + "}"


def verify_with_math_verify(gold: str, pred: str) -> bool:
    """math-verify on two answer strings, its own (signal) timeouts off: callers bound the time."""
    from math_verify import parse, verify

    g = parse(_wrap(gold), parsing_timeout=None)
    p = parse(_wrap(pred), parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def check_pair(gold: str, pred: str, timeout: float | None = 5.0) -> MathCheck:
    """Compare one pair in this process. With a timeout and on the main thread, an interval timer bounds the time;
    elsewhere the timeout is not enforced here (use MathPool)."""
    fast = fast_check(gold, pred)
    if fast is not None:
        return fast
    use_timer = bool(timeout) and threading.current_thread() is threading.main_thread()
    old = None
    try:
        if use_timer:
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        same = verify_with_math_verify(gold, pred)
        return MathCheck(same, EQUAL if same else NOT_EQUAL, "math-verify")
    except _Overrun:
        return MathCheck(False, TIMEOUT, f"math-verify took over {timeout}s")
    except Exception as exc:  # a parser bug on odd input is a verdict about this item, not a crash
        return MathCheck(False, ERROR, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        if use_timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
