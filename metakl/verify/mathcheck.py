"""Math answer equivalence: cheap string/number fast paths first, then math-verify (sympy) under a timeout.

math-verify's own timeout uses `signal.alarm`, which fails off the main thread and cannot interrupt a stall inside
C code (a huge integer power, say). `check_pair` therefore runs with math-verify's timeouts off and its own
interval timer; `metakl.verify.pool.MathPool` runs it in worker processes and kills a worker that still overruns.
"""

from __future__ import annotations

import math
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
_MIXED = re.compile(r"([-+]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")  # 1\frac{1}{2} = 3/2, as math-verify reads it
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # 1,000 = 1000, as math-verify reads it


def _as_number(s: str) -> Fraction | None:
    """The exact value of a plain integer, decimal or simple \\frac{a}{b}; None for anything else."""
    if _NUMBER.fullmatch(s):
        return Fraction(s)
    if _THOUSANDS.fullmatch(s):
        return Fraction(s.replace(",", ""))
    m = _MIXED.fullmatch(s)
    if m and int(m.group(4)) != 0:
        v = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return -v if m.group(1) == "-" else v
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
        # Both are plain numbers: exact comparison, or equal after rounding to 6 decimals as math-verify does.
        same = gn == pn or _close(float(gn), float(pn))
        return MathCheck(same, EQUAL if same else NOT_EQUAL, "numbers")
    # Single letters are symbols; math-verify compares them ignoring case (a = A, E = e).
    if len(g) == 1 and len(p) == 1 and g.isalpha() and p.isalpha() and g.isascii() and p.isascii():
        same = g.casefold() == p.casefold()
        return MathCheck(same, EQUAL if same else NOT_EQUAL, "letters")
    # Plain words ("odd", "Sunday") equal only the same word (any case), and never a number. Single letters are
    # left to sympy (x is not X; E and e are constants there), and so are names of constants.
    gw, pw = _is_word(g), _is_word(p)
    if (gw and pw) or (gw and pn is not None) or (pw and gn is not None):
        same = gw and pw and g.casefold() == p.casefold()
        return MathCheck(same, EQUAL if same else NOT_EQUAL, "words")
    # Constant expressions (2\sqrt{3}, \frac{\pi}{4}): compare values with the tolerance used for numbers above.
    gv, pv = numeric_value(g), numeric_value(p)
    if gv is not None and pv is not None:
        same = _close(gv, pv)
        return MathCheck(same, EQUAL if same else NOT_EQUAL, "constant expressions")
    return None


def _close(a: float, b: float) -> bool:
    """math-verify's numeric rule (float_rounding=6), plus float noise on large values."""
    return round(a, 6) == round(b, 6) or math.isclose(a, b, rel_tol=1e-12)


def _is_word(s: str) -> bool:
    return len(s) >= 2 and bool(_WORD.fullmatch(s)) and s.casefold() not in _CONSTANT_NAMES


class _Overrun(BaseException):
    """Raised by our timer inside sympy; a BaseException so math-verify's `except Exception` lets it through."""


def _alarm(signum, _frame):
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


def timer_available() -> bool:
    """Our interval timer works on the main thread, and must not clobber one already running (pytest-timeout)."""
    return threading.current_thread() is threading.main_thread() and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def check_pair(gold: str, pred: str, timeout: float | None = 5.0) -> MathCheck:
    """Compare one pair in this process. With a timeout and on the main thread, an interval timer bounds the time;
    elsewhere the timeout is not enforced here (use MathPool)."""
    fast = fast_check(gold, pred)
    if fast is not None:
        return fast
    use_timer = bool(timeout) and timer_available()
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


class _NotNumeric(Exception):
    pass


class _Numeric:
    """A tiny evaluator for constant LaTeX: numbers, + - * / ^, \\cdot, \\times, \\frac, \\sqrt, \\pi, groups.

    Anything else (variables, functions, commas, mixed numbers like 1\\frac{1}{2}) raises _NotNumeric, and the
    pair goes to sympy. It exists because sympy costs ~20 ms per pair while most answers are constants.
    """

    _TOKEN = re.compile(r"\d+\.?\d*|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]]")

    def __init__(self, s: str):
        self.tokens = self._TOKEN.findall(s)
        if "".join(self.tokens) != s:
            raise _NotNumeric(s)
        self.i = 0

    def value(self) -> float:
        v = self.expr()
        if self.i != len(self.tokens):
            raise _NotNumeric("trailing tokens")
        if not math.isfinite(v):
            raise _NotNumeric("not finite")
        return v

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        t = self.peek()
        if t is None or (expected is not None and t != expected):
            raise _NotNumeric(f"expected {expected}")
        self.i += 1
        return t

    def expr(self) -> float:
        v = self.term()
        while self.peek() in ("+", "-"):
            v = v + self.term() if self.take() == "+" else v - self.term()
        return v

    def term(self) -> float:
        v = self.unary()
        while True:
            t = self.peek()
            if t in ("*", "\\cdot", "\\times"):
                self.take()
                v *= self.unary()
            elif t == "/":
                self.take()
                d = self.unary()
                if d == 0:
                    raise _NotNumeric("division by zero")
                v /= d
            elif t in ("\\sqrt", "\\pi") or (t == "\\frac" and not _is_number_token(self.tokens[self.i - 1])):
                # implicit product: 2\pi, 4\sqrt{2}; not 3(4) (math-verify does not read it as 12) nor 1\frac{1}{2}
                v *= self.power()
            else:
                return v

    def unary(self) -> float:
        if self.peek() in ("-", "+"):
            return -self.unary() if self.take() == "-" else self.unary()
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exp = self.unary() if self.peek() != "{" else self.group()
            if abs(exp) > 64 or abs(base) > 1e12:
                raise _NotNumeric("large power")
            try:
                result = base**exp
            except (OverflowError, ZeroDivisionError):
                raise _NotNumeric("power") from None
            if isinstance(result, complex):
                raise _NotNumeric("complex")
            return result
        return base

    def group(self) -> float:
        close = {"{": "}", "(": ")", "[": "]"}[self.take()]
        v = self.expr()
        self.take(close)
        return v

    def arg(self) -> float:
        """A braced argument or a single digit (\\frac12)."""
        t = self.peek()
        if t == "{":
            return self.group()
        if t is not None and t.isdigit():
            self.take()
            if len(t) > 1:  # \frac123 is \frac{1}{2}3: split the digits
                self.tokens[self.i:self.i] = [t[1:]]
            return float(t[0])
        raise _NotNumeric("argument")

    def atom(self) -> float:
        t = self.peek()
        if t is None:
            raise _NotNumeric("end")
        if t in ("{", "("):
            return self.group()
        if t == "\\pi":
            self.take()
            return math.pi
        if t == "\\frac":
            self.take()
            num, den = self.arg(), self.arg()
            if den == 0:
                raise _NotNumeric("division by zero")
            return num / den
        if t == "\\sqrt":
            self.take()
            root = 2.0
            if self.peek() == "[":
                root = self.group()
            v = self.arg()
            if v < 0 or root <= 0:
                raise _NotNumeric("sqrt domain")
            return v ** (1.0 / root)
        if _is_number_token(t):
            self.take()
            return float(t)
        raise _NotNumeric(t)


def _is_number_token(t: str) -> bool:
    return bool(t) and (t[0].isdigit() or t[0] == ".")


def numeric_value(normalized: str) -> float | None:
    """The value of a constant LaTeX expression (normalized), or None when it is not one we can evaluate."""
    if not normalized or len(normalized) > 200:
        return None
    try:
        return _Numeric(normalized).value()
    except (_NotNumeric, RecursionError, ValueError):
        return None
