"""Cost: token prices per model from the user's settings, money spent per stage, and a budget that stops a stage.

No prices ship with metakl (they change, and differ between providers): the `llm:` settings give them per model,
in USD per million tokens,

    llm:
      prices:
        gpt-4o-mini: {input: 0.15, cached_input: 0.075, output: 0.60, batch_discount: 0.5}
      budget: 20        # USD for this stage; --budget on the command line

`cached_input` is the price of the prompt tokens the provider reports as cached (usage.prompt_tokens_details.
cached_tokens; default: the input price); `batch_discount` the share taken off in batch mode (0.5: half price).
A model without an entry has no cost (None in reports, "-" in tables), never a guessed one. Answers from the
request cache cost nothing: only fresh answers are counted.

The budget: every backend of one stage adds what it spends to the stage's scope (metakl.llm.scope, opened by the
runner around a stage); when the sum reaches the budget the stage stops with one line (BudgetReached, exit 2).
Every answer received so far is in the request cache, so the same command with a larger budget goes on from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from metakl.errors import UserError
from metakl.llm.scope import StageScope, current_scope

PRICE_FIELDS = ("input", "cached_input", "output", "batch_discount")


class BudgetReached(UserError):
    """A stage spent its budget: stopped before sending more; the answers so far are in the request cache."""


@dataclass(frozen=True)
class Price:
    """USD per million tokens; `batch_discount` in [0, 1)."""

    input: float
    output: float
    cached_input: float | None = None
    batch_discount: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, batch: bool = False) -> float:
        cached = min(cached_tokens, prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        usd = ((prompt_tokens - cached) * self.input + cached * cached_price + completion_tokens * self.output) / 1e6
        return usd * (1.0 - self.batch_discount) if batch else usd


def parse_prices(prices: Any, where: str = "prices") -> dict[str, Price]:
    """The `prices` mapping ({model: {input, output, cached_input?, batch_discount?}}) checked: one clear error
    naming `where` (the setting, or the file) and the model."""
    if prices is None:
        return {}
    if not isinstance(prices, dict):
        raise UserError(f"{where}: expected a mapping of model name to prices, got {type(prices).__name__}")
    out = {}
    for model, entry in prices.items():
        at = f"{where}: {model}"
        if not isinstance(entry, dict):
            raise UserError(f"{at}: expected a mapping with input and output (USD per million tokens)")
        unknown = sorted(set(entry) - set(PRICE_FIELDS))
        if unknown:
            raise UserError(f"{at}: unknown field '{unknown[0]}'; expected: {', '.join(PRICE_FIELDS)}")
        for name in ("input", "output"):
            if name not in entry:
                raise UserError(f"{at}: '{name}' is missing (USD per million tokens)")
        values = {}
        for name, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"{at}: '{name}': expected a number >= 0, got {value!r}")
            values[name] = float(value)
        if values.get("batch_discount", 0.0) >= 1:
            raise UserError(f"{at}: 'batch_discount': expected a share below 1 (0.5: half price), got "
                            f"{values['batch_discount']}")
        out[str(model)] = Price(**values)
    return out


def check_budget(budget: Any, where: str = "budget") -> float | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise UserError(f"{where}: expected an amount in USD > 0, got {budget!r}")
    return float(budget)


class Meter:
    """A backend's price and budget: `charge(completion)` → this answer's cost (None without a price); raises
    BudgetReached from `check()` once the stage's spending reached the budget."""

    def __init__(self, model: str, price: Price | None, budget: float | None, batch: bool = False) -> None:
        self.model = model
        self.price = price
        self.budget = budget
        self.batch = batch
        self.scope = current_scope() or StageScope(None)

    def charge(self, completion: Any) -> float | None:
        if self.price is None:
            return None
        usd = self.price.cost(completion.prompt_tokens, completion.completion_tokens,
                              getattr(completion, "cached_prompt_tokens", 0), self.batch)
        self.scope.spend(usd)
        return usd

    def check(self) -> None:
        if self.budget is not None and self.scope.spent >= self.budget:
            raise BudgetReached(
                f"budget of ${self.budget:.2f} reached (${self.scope.spent:.4f} spent in this stage, model "
                f"'{self.model}'); stopped before sending more requests. The answers so far are in the request cache: "
                f"run the same command with a larger --budget to go on")


def cost_column(lines: list[str], stages: list[tuple[dict[str, Any], bool]]) -> list[str]:
    """The closing table (head, rule, one line per stage, the total) with a `cost USD` column when a stage has a
    cost; `stages`: (report, ran in this run) in table order. Unchanged when no model had a price."""
    costs = [(r.get("llm") or {}).get("cost_usd") for r, _ in stages]
    if all(c is None for c in costs):
        return lines
    total = sum(c for c, (_, ran) in zip(costs, stages) if ran and c is not None)
    cells = ["cost USD", "-" * 9, *("-" if c is None else f"{c:.4f}" for c in costs), f"{total:.4f}"]
    return [f"{line} {cell:>9}" if i != 1 else line + "-" * 10 for i, (line, cell) in enumerate(zip(lines, cells))]


# --- before any money is spent: `metakl run --dry-run` ---------------------------------------------------------------
SAMPLE_ROWS = 16
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text; a projection, not the model's tokenizer


class _Recorder:
    """A backend that sends nothing: it keeps the requests of the stage's first model call and answers each with an
    error value (a stage goes on past failed requests), so a stage run on a sample shows what it would ask."""

    kind = "dry-run"

    def __init__(self, model: str) -> None:
        from metakl.llm.types import RunStats

        self.model = model
        self.requests: list[Any] | None = None
        self.stats = RunStats()

    def generate_all(self, requests: Any, progress: bool = False) -> list[Any]:
        from metakl.llm.types import Result

        requests = list(requests)
        if self.requests is None:  # later calls are retries of failed answers: not what a run normally sends
            self.requests = requests
        return [Result(index=i, request=r, error="dry run: not sent") for i, r in enumerate(requests)]

    def generate(self, requests: Any, progress: bool = False) -> Any:
        yield from self.generate_all(requests, progress)

    def close(self) -> None:
        pass


def estimate_cost(fn: Any, config: Any, llm: Any, data: Any) -> str:
    """The cost of running stage `fn` on `data` (a Dataset) with model options `llm`, projected from the requests it
    builds for SAMPLE_ROWS rows spread over `data`: prompt tokens as characters / CHARS_PER_TOKEN, completion tokens
    at their ceiling (max_tokens × n), at the model's price (with the batch discount under batch mode). "-" without a
    price, "?" when it cannot be projected (several teachers, a stage that fails on the sample)."""
    prices = llm.price_table()
    if not prices or llm.teachers:
        return "-" if not prices else "?"
    # Rows spread evenly over the data, not its first ones: ingest keeps its sources in order, and prompts differ in
    # length by source and domain (generate's reconstructed math rows carry their solution, the others do not).
    k = min(SAMPLE_ROWS, len(data))
    sample = data.select(sorted({i * len(data) // k for i in range(k)}))
    recorders: dict[str, _Recorder] = {}

    def recorder(name: str, *_: Any) -> _Recorder:
        return recorders.setdefault(name, _Recorder(name))

    resources = {"backend_factory": recorder} if fn.needs_base_models(config) else {}
    try:
        fn(sample, config, backend=None if resources else recorder(llm.model), progress=False, **resources)
    except Exception:  # noqa: BLE001 (a projection must not stop the dry run; it says "?" instead)
        return "?"
    if not len(sample):
        return "$0.00"
    usd, priced = 0.0, False
    for name, rec in recorders.items():
        price = prices.get(name)
        if price is None or not rec.requests:
            continue
        priced = True
        chars = sum(len(str(m.get("content") or "")) for r in rec.requests for m in r.messages)
        ceiling = sum(r.max_tokens * r.n for r in rec.requests)
        usd += price.cost(round(chars / CHARS_PER_TOKEN), ceiling, 0, bool(llm.batch))
    return f"≤ ${usd * len(data) / len(sample):.2f}" if priced else "-"


def estimate_column(lines: list[str], stages: list[tuple[Any, Any, bool]], at: int) -> list[str]:
    """The dry-run table (head, then one line per stage) with an `est. cost` column inserted at character `at` when a
    stage's model has a price; `stages`: (PlannedStage, its input folder when on disk, whether it would run)."""
    if not any(s.llm is not None and s.llm.price_table() for s, _, _ in stages):
        return lines
    from metakl.io import load_stage
    from metakl.stages import get_stage

    cells = []
    for s, source, runs in stages:
        if s.llm is None or not runs:
            cells.append("-")
        elif source is None:  # its input is made by an earlier stage of this run
            cells.append("?")
        else:
            cells.append(estimate_cost(get_stage(s.name), s.config, s.llm, load_stage(source)))
    return [line[:at] + f"  {cell:>10}" + line[at:] for line, cell in zip(lines, ["est. cost", *cells])]
