"""The stage contract: every stage is one function with one result type and one report envelope.

```python
@stage("reward", RewardConfig)
def reward(ds: Dataset, config: RewardConfig, *, backend=None, progress=False) -> StageResult: ...
```

A stage function takes its input dataset (ingest: its list of sources), its config dataclass, and keyword-only
`backend` (a metakl.llm backend, or None when the stage calls no model) and `progress`; tests may pass further
keyword-only resources (an embedder). It returns `StageResult(dataset, report, artifacts)`: `report` holds the
stage's own figures, `artifacts` named JSON objects saved beside the data (merge's `taxonomy.json`).

The `@stage` decorator wraps every call in the same envelope, so each report starts with:

- `stage`, `rows_in`, `rows_out`, `seconds`
- `config`: the config dataclass as a dict
- `templates`: the prompt templates used, as `task/name@version` refs
- `llm`: the model accounting of this call alone (a backend may serve several stages); a stage called without a
  backend that builds its own may report their totals under `llm`
- `errors`: rows with an error entry of this stage, by kind

A stage records per-row problems in the `errors` column with `row_errors` / `replace_stage_errors`: a re-run of a
stage replaces its own earlier entries and keeps those of other stages.

A stage also declares what it reads and writes, so that a whole plan is checked before any model loads:

```python
@stage("filter", FilterConfig, requires={"units": "the knowledge units to fill", ...}, provides=())
```

- `requires`: the input columns it reads, each with what for (a mapping, or a function of the config returning one);
  `check_columns` refuses an input without one, in one message shape, for a verb, a plan and a library call alike
- `provides`: the columns it adds (a tuple, or a function of the config)
- `needs_backend` (a chat model through metakl.llm), `needs_embedder`, `needs_base_models`: per config
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from datasets import Dataset

from metakl.errors import UserError

ENVELOPE = ("stage", "rows_in", "rows_out", "seconds", "config", "templates", "llm", "errors")


@dataclass
class StageResult:
    dataset: Dataset
    report: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)  # file name -> JSON-able object, saved beside the data


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a plain JSON-able dict (enums by value, tuples as lists)."""
    if config is None:
        return {}
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def llm_snapshot(backend: Any) -> dict[str, Any]:
    return backend.stats.as_dict() if backend is not None and hasattr(backend, "stats") else {}


def llm_since(backend: Any, before: dict[str, Any]) -> dict[str, Any]:
    """The backend's accounting since `before` (its running totals minus the snapshot), numbers rounded."""
    now = llm_snapshot(backend)
    if not now:
        return {}
    out: dict[str, Any] = {}
    for key, value in now.items():
        if isinstance(value, dict):
            prev = before.get(key) or {}
            out[key] = {k: _sub(v, prev.get(k, 0)) for k, v in value.items()}
        elif key == "cost_usd" and value is not None:  # money: to the micro-dollar, not the 3 decimals of seconds
            out[key] = round(value - (before.get(key) or 0.0), 6)
        else:
            out[key] = _sub(value, before.get(key, 0))
    return out


def _sub(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        return a
    d = a - (b if isinstance(b, (int, float)) else 0)
    return round(d, 3) if isinstance(d, float) else d


def errors_by_kind(ds: Dataset, stage_name: str) -> dict[str, int]:
    """Rows carrying an error entry of `stage_name`, counted by kind (a row counts once per kind)."""
    if "errors" not in ds.column_names:
        return {}
    counts: Counter = Counter()
    # one Arrow read of the column: iterating `ds["errors"]` goes row by row (slow after `select`/`filter`)
    for entries in ds.select_columns(["errors"]).to_dict()["errors"]:
        kinds = {e["kind"] for e in entries or [] if e.get("stage") == stage_name}
        counts.update(kinds)
    return dict(counts.most_common())


def rows_with_errors(ds: Dataset, stage_name: str, ignore: tuple[str, ...] = ()) -> int:
    """Rows carrying at least one error entry of `stage_name` whose kind is not in `ignore`."""
    if "errors" not in ds.column_names:
        return 0
    return sum(any(e.get("stage") == stage_name and e.get("kind") not in ignore for e in entries or [])
               for entries in ds.select_columns(["errors"]).to_dict()["errors"])


# A stage whose share of rows with errors is above this ends the command non-zero (its rows are saved first): a dead
# server leaves every row with `llm_error`, and that must not look like success.
MAX_ERROR_RATE = 0.05


class TooManyErrors(UserError):
    """More rows than --max-error-rate allows carry an error of a stage; everything was saved."""

    exit_code = 3


def check_rate(value: Any, where: str) -> float:
    """A max error rate from a config file: a number in [0, 1] (UserError naming `where` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError(f"{where}: expected a number in [0, 1], got {value!r}")
    return float(value)


def error_share_line(ds: Dataset, stage_name: str, limit: float, verdicts: tuple[str, ...] = ()) -> str | None:
    """`generate: 19 of 20 rows (95.0%) carry errors (llm_error 19), more than --max-error-rate 0.05`, or None when
    the share is within `limit`. Error kinds in `verdicts` (the stage's judgements on content, see `stage`) do not
    count toward the share."""
    n = len(ds)
    bad = rows_with_errors(ds, stage_name, ignore=verdicts)
    if n == 0 or bad / n <= limit:
        return None
    kinds = ", ".join(f"{k} {v}" for k, v in errors_by_kind(ds, stage_name).items() if k not in verdicts)
    return (f"{stage_name}: {bad} of {n} rows ({100 * bad / n:.1f}%) carry errors ({kinds}), more than "
            f"--max-error-rate {limit:g}")


def row_errors(previous: list[dict] | None, stage_name: str) -> list[dict]:
    """A row's error list for a new run of `stage_name`: the other stages' entries, without this stage's old ones."""
    return [dict(e) for e in previous or [] if e.get("stage") != stage_name]


def replace_stage_errors(ds: Dataset, stage_name: str, new: dict[int, list[dict]] | None = None) -> Dataset:
    """`ds` with this stage's earlier error entries dropped and `new` ({row index: [error, ...]}) appended."""
    from metakl.schema import ERROR

    previous = ds["errors"] if "errors" in ds.column_names else [[] for _ in range(len(ds))]
    column = []
    for i, entries in enumerate(previous):
        kept = row_errors(entries, stage_name)
        kept.extend((new or {}).get(i, []))
        column.append(kept)
    if "errors" in ds.column_names:
        ds = ds.remove_columns("errors")
    return ds.add_column("errors", column, feature=[ERROR])


def _rows_in(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


Requires = Mapping[str, str] | Callable[[Any], Mapping[str, str]]  # column -> what the stage reads it for
Provides = tuple[str, ...] | Callable[[Any], tuple[str, ...]]
PerConfig = bool | Callable[[Any], bool]


def _per_config(value: Any) -> Callable[[Any], Any]:
    """A declaration as a function of the config (a constant declaration ignores it)."""
    return value if callable(value) else (lambda cfg: value)


def writers(column: str) -> list[str]:
    """The stages (in pipeline order) that add `column` with their default settings: where to get it from."""
    from metakl.stages import STAGES, get_stage

    out = []
    for name in STAGES:
        fn = get_stage(name)
        if column in fn.provides(fn.config_cls() if fn.config_cls else None):
            out.append(name)
    return out


def check_columns(fn: Callable[..., Any], config: Any, columns: Iterable[str], where: str | Path | None = None) -> None:
    """The one check of a stage's input columns: a UserError `stage S: input has no column 'c' (needed for ...;
    written by: ...)` (after `where: ` when given) for the first column stage `fn` requires under `config` that
    `columns` lacks. Used by the stage call itself, by a verb before any model loads and by a plan for every stage."""
    present = set(columns)
    for column, purpose in fn.requires(config).items():
        if column not in present:
            by = ", ".join(writers(column)) or "no stage"
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}stage {fn.stage_name}: input has no column '{column}' (needed for {purpose}; "
                            f"written by: {by})")


def stage(name: str, config_cls: type | None = None, needs_backend: PerConfig = False,
          finish: Callable[[StageResult, Any, Any], str | None] | None = None, batched: bool = False, *,
          requires: Requires | None = None, provides: Provides = (), needs_embedder: PerConfig = False,
          needs_base_models: PerConfig = False, reads: Callable[[Any], list[Any]] | None = None,
          takes: tuple[str, ...] = (), save: Callable[..., Any] | None = None, verdicts: tuple[str, ...] = (),
          ) -> Callable[[Callable[..., StageResult]], Callable[..., StageResult]]:
    """Wrap a stage function so that its report carries the envelope (see the module docstring).

    `requires`, `provides`, `needs_embedder`, `needs_base_models`: what the stage reads, adds and uses (see the
    module docstring); the call checks its input's columns against `requires` before the stage body runs.
    `reads(config)`: the local files the stage reads beyond its input dataset and the paths in its settings (ingest's
    sources, decontaminate's benchmark and suite data): a run fingerprints them and never writes over them.

    `config_cls`: the stage's config dataclass; a call without a config gets its defaults. `needs_backend`: whether
    (for a given config) the stage calls a model, so that callers build a backend only when one is used.
    `finish(result, folder, config)`: what to do once the result is saved in `folder` (publish uploads), returning a
    line to print or None. `batched`: the stage runs its per-row work through an `executor=` resource
    (metakl.executors: per-batch function + aggregation), so `metakl run --executor ray` can spread it.
    `takes`: where-it-runs keywords the stage accepts from the runner: `run_dir` (the `metakl run` folder, None for a
    verb) and `input_dir` (the folder a verb read its input from, None in a run); publish reads its lineage there.
    `save(result, folder, overwrite=)`: how `metakl VERB` writes its --out when that is not a stage folder (publish:
    the release itself); a run's stage folders always keep the one layout that resuming reads.
    `verdicts`: error kinds that record a judgement on a row's content rather than a failure (generate's
    `reconstruct_mismatch`: the teacher's answer disagreed with the reference). They stay in the errors column and the
    report, but do not count toward --max-error-rate, which is there to stop a run whose server or data is broken.
    """

    def wrap(fn: Callable[..., StageResult]) -> Callable[..., StageResult]:
        @functools.wraps(fn)
        def run(data: Any, config: Any = None, *, backend: Any = None, progress: bool = False, **resources: Any) -> StageResult:
            if config is None and config_cls is not None:
                config = config_cls()
            if isinstance(data, Dataset):
                check_columns(run, config, data.column_names)
            before = llm_snapshot(backend)
            t0 = time.perf_counter()
            result = fn(data, config, backend=backend, progress=progress, **resources)
            if not isinstance(result, StageResult):
                raise TypeError(f"stage {name} returned {type(result).__name__}, expected StageResult")
            seconds = time.perf_counter() - t0
            own = dict(result.report)
            rows_in = own.pop("rows_in", None)
            templates = own.pop("templates", [])
            used_config = own.pop("config", None)
            own_llm = own.pop("llm", None)  # a stage that built its own backends (score: one per model) sums them
            envelope = {
                "stage": name,
                "rows_in": rows_in if rows_in is not None else _rows_in(data),
                "rows_out": len(result.dataset),
                "seconds": round(seconds, 3),
                "config": used_config if used_config is not None else config_dict(config),
                "templates": sorted(templates.values() if isinstance(templates, dict) else templates),
                "llm": llm_since(backend, before) if backend is not None else (own_llm or {}),
                "errors": errors_by_kind(result.dataset, name),
            }
            own = {k: v for k, v in own.items() if k not in ENVELOPE}
            result.report = envelope | own
            return result

        run.stage_name = name  # type: ignore[attr-defined]
        run.config_cls = config_cls  # type: ignore[attr-defined]
        run.needs_backend = _per_config(needs_backend)  # type: ignore[attr-defined]
        run.finish = finish  # type: ignore[attr-defined]
        run.batched = batched  # type: ignore[attr-defined]
        run.requires = lambda cfg: dict(_per_config(requires or {})(cfg))  # type: ignore[attr-defined]
        run.provides = lambda cfg: tuple(_per_config(provides)(cfg))  # type: ignore[attr-defined]
        run.needs_embedder = _per_config(needs_embedder)  # type: ignore[attr-defined]
        run.needs_base_models = _per_config(needs_base_models)  # type: ignore[attr-defined]
        run.reads = (lambda cfg: [Path(p) for p in reads(cfg)]) if reads else (lambda cfg: [])  # type: ignore[attr-defined]
        run.takes = tuple(takes)  # type: ignore[attr-defined]
        run.save = save  # type: ignore[attr-defined]
        run.verdicts = tuple(verdicts)  # type: ignore[attr-defined]
        return run

    return wrap
