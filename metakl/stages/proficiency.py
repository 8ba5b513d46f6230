"""Base-model proficiency arithmetic shared by `score` and `filter`: prompt values, unit means with Wilson
intervals, cross-model Pearson agreement, and the per-unit target counts of knowledge-gap selection.

Everything here reads the dataset's columns (`proficiency`, `units`) only; no model is called.

- A prompt's value for a model is its `accuracy` (correct samples / samples). "average" is the mean over the models
  that scored the prompt (the paper's average proficiency); "strict" is 1 when every model that scored it is right
  on it (accuracy >= 0.5, i.e. a majority of its samples; with one sample per prompt: that sample), else 0.
- A unit's proficiency is the mean of its prompts' values; `n` is the number of prompts behind it.
- Interval: the Wilson score interval with n = prompts and p = that mean. For 0/1 values (strict, or k = 1) it is
  the usual Wilson interval; for fractional values (k > 1) their variance is at most p(1 - p), so the interval is
  conservative. It is deterministic, cheap for thousands of units, and sensible at p = 0, p = 1 and small n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

AVERAGE = "average"
STRICT = "strict"
STRICT_CORRECT = 0.5  # a model is "right" on a prompt when at least half of its samples are correct


def z_value(confidence: float) -> float:
    """Two-sided normal quantile for `confidence` (0.95 -> 1.96)."""
    from statistics import NormalDist

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(p: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` observed over `n` trials; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, p))
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def column(ds: Any, name: str) -> list:
    """A dataset column as a plain list (datasets' lazy Column object indexes row by row: slow in loops)."""
    return ds.select_columns([name]).to_dict()[name]


def models_in(proficiency_column: Iterable[Sequence[dict] | None]) -> list[str]:
    """The model names present in a `proficiency` column, in order of first appearance."""
    seen: dict[str, None] = {}
    for entries in proficiency_column:
        for e in entries or []:
            if e.get("model") is not None and e.get("samples"):
                seen.setdefault(e["model"], None)
    return list(seen)


def prompt_values(entries: Sequence[dict] | None) -> dict[str, float]:
    """{model: accuracy} of one row, plus "average" and "strict" when at least one model scored it."""
    values = {e["model"]: float(e["accuracy"]) for e in entries or []
              if e.get("samples") and e.get("accuracy") is not None}
    if values:
        accs = list(values.values())
        values[AVERAGE] = sum(accs) / len(accs)
        values[STRICT] = float(all(a >= STRICT_CORRECT for a in accs))
    return values


def clean_units(units: Sequence[str] | None) -> list[str]:
    """A row's units without blanks and repeats, in their order."""
    return list(dict.fromkeys(u for u in units or [] if u))


@dataclass
class UnitStat:
    n: int  # prompts with a value behind the mean
    mean: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        r = lambda x: None if x is None else round(x, 6)  # noqa: E731
        return {"proficiency": r(self.mean), "prompts": self.n, "ci": [r(self.low), r(self.high)]}


def unit_stats(units_column: Sequence[Sequence[str] | None], values: Sequence[float | None],
               z: float = 1.959963984540054) -> dict[str, UnitStat]:
    """Per unit: the mean of its prompts' values (None values skipped) with a Wilson interval over the prompts."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for units, v in zip(units_column, values):
        for u in clean_units(units):
            counts.setdefault(u, 0)
            sums.setdefault(u, 0.0)
            if v is not None:
                counts[u] += 1
                sums[u] += v
    out = {}
    for u, n in counts.items():
        if n:
            mean = sums[u] / n
            low, high = wilson(mean, n, z)
            out[u] = UnitStat(n, mean, low, high)
        else:
            out[u] = UnitStat(0, None, None, None)
    return out


def pearson_matrix(stats: dict[str, dict[str, UnitStat]], min_support: int) -> dict[str, Any]:
    """Pearson correlation of unit proficiency between every pair of `stats` ({model: {unit: UnitStat}}), over
    the units with at least `min_support` prompts for both; None where fewer than 3 such units or a constant side."""
    import numpy as np

    names = list(stats)
    matrix: list[list[float | None]] = []
    support: list[list[int]] = []
    for a in names:
        row, srow = [], []
        for b in names:
            common = [u for u, s in stats[a].items()
                      if s.n >= min_support and u in stats[b] and stats[b][u].n >= min_support]
            srow.append(len(common))
            if len(common) < 3:
                row.append(None)
                continue
            x = np.array([stats[a][u].mean for u in common], dtype=float)
            y = np.array([stats[b][u].mean for u in common], dtype=float)
            if x.std() == 0 or y.std() == 0:
                row.append(None)
                continue
            row.append(round(float(np.corrcoef(x, y)[0, 1]), 6))
        matrix.append(row)
        support.append(srow)
    return {"models": names, "min_support": min_support, "pearson": matrix, "units_compared": support}


@dataclass(frozen=True)
class TargetRule:
    """Target prompts per unit as a function of the base model's proficiency p on it:
    target(p) = round(reminders + (max_target - reminders) * (1 - p)), with p shrunk toward the mean over all
    units by `prior_strength` pseudo-prompts: p~ = (n * p + m * mean) / (n + m). A unit with no scored prompt
    gets the overall mean."""

    reminders: int = 2
    max_target: int = 20
    prior_strength: float = 2.0

    def shrink(self, stat: UnitStat | None, overall: float) -> float:
        n = stat.n if stat is not None else 0
        mean = stat.mean if stat is not None and stat.mean is not None else overall
        m = self.prior_strength
        return (n * mean + m * overall) / (n + m) if n + m > 0 else overall

    def target(self, p: float) -> int:
        p = min(1.0, max(0.0, p))
        return int(math.floor(self.reminders + (self.max_target - self.reminders) * (1 - p) + 0.5))


def overall_mean(values: Sequence[float | None]) -> float:
    """Mean of the prompt values that exist (0.5 when none do: nothing known)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else 0.5
