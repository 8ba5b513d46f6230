"""Every stage verb: settings → a one-stage plan → `metakl.pipeline.run_stage` (the code that runs each stage of
`metakl run`) → the verb's summary.

```python
@verb
@stage_folders("generate", "Stage folder with prompts.")
@llm_options()
@config_options(GenerateConfig)
def generate(*, input: Path, out: Path, config: Optional[Path], llm: LLMGiven, settings: dict) -> None:
    run_verb("generate", input=input, out=out, config_path=config, options=settings, llm=llm, summary=summary)
```

`stage_folders` declares what every stage verb shares: INPUT (the previous stage's folder), `--out` and `--config`,
and (through `output_options`) `--overwrite` and `--max-error-rate`. `config_options` makes one flag per field of
the stage's config declared with `metakl.config.setting` (verbs not converted yet declare their flags by hand).

`options` holds the verb's parameters; those named like a field of the stage's config and set by the user override
the `--config` file, which overrides the defaults. The stage input is read with `load_stage` (a damaged file is one
error line naming it), the result written atomically, and the summary ends with one closing line per stage: rows
in → out, errors, tokens, seconds.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from metakl.commands._llm_options import LLMGiven, echo_stats, explicit
from metakl.progress import closing_line, show_progress
from metakl.stage import StageResult

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="YAML file of this verb's settings (top level, or under a key named after the verb, "
                           "with an optional `llm:` section for the model options); options given here win.")]


FOLDER_PARAMS = ("input", "out", "config")

# The current verb's --overwrite and --max-error-rate (set by `output_options`, read by `run_verb`).
_output: contextvars.ContextVar = contextvars.ContextVar("metakl_output_options", default={})


def output_options(errors: bool = True):
    """Add `--overwrite` (and with `errors`, `--max-error-rate`) to a verb that writes `--out`; `run_verb` reads them.
    `stage_folders` adds them itself; a verb that declares its own `--out` puts this below `@verb`."""
    from metakl.stage import MAX_ERROR_RATE

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("overwrite", kw, default=False, annotation=Annotated[bool, typer.Option(
        "--overwrite", help="Replace --out even when it holds files metakl did not write (never an input).")])]
    if errors:
        params.append(inspect.Parameter("max_error_rate", kw, default=None, annotation=Annotated[Optional[float], typer.Option(
            "--max-error-rate", min=0.0, max=1.0, show_default=False,
            help=f"Exit non-zero (3) when more than this share of rows carries an error of this stage (default "
                 f"{MAX_ERROR_RATE}; also a key of the --config file); the rows and errors are saved either way.")]))

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in params}
            token = _output.set(values)
            try:
                return fn(*args, **kwargs)
            finally:
                _output.reset(token)

        command.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *params])
        return command

    return wrap


def stage_folders(stage_name: str, input_help: str | None = None, *, optional: bool = False,
                  artifacts: tuple[str, ...] = ()):
    """Declare INPUT (the previous stage's folder, the first argument; none when `input_help` is None), `--out` and
    `--config` for a verb, with one wording for all. The verb takes them as keyword-only `input`, `out` and `config`.
    `optional`: INPUT and --out may be left out (the verb checks them itself, e.g. when --list-presets needs neither).
    Put it below `@verb`, above `@llm_options`."""
    from metakl.io import report_file

    files = ", ".join(("data.parquet", report_file(stage_name), *artifacts))
    path = Optional[Path] if optional else Path
    default = None if optional else inspect.Parameter.empty

    def param(name: str, annotation: Any, default: Any = default) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)

    front = [param("input", Annotated[path, typer.Argument(help=input_help)])] if input_help is not None else []
    front += [
        param("out", Annotated[path, typer.Option("--out", "-o", help=f"Output stage folder: {files} (written atomically; replaces only a folder metakl wrote, see --overwrite).")]),
        param("config", ConfigOpt, None),
    ]

    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for name, p in sig.parameters.items() if name not in FOLDER_PARAMS]
        fn.__signature__ = sig.replace(parameters=front + own)
        return output_options()(fn)

    return wrap


def config_options(config_cls: type):
    """Add one command-line option per field of `config_cls` declared with `metakl.config.setting` (its flag names,
    help and bounds come from there; a list field is a repeatable option); the verb receives their values as
    `settings` (a dict), to pass to `run_verb` in `options`. Put it below `@llm_options`."""
    import typing
    from enum import Enum
    from typing import List

    from metakl.config import settings_of

    hints = typing.get_type_hints(config_cls)
    params = []
    for f, meta in settings_of(config_cls):
        tp, default = hints[f.name], f.default
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = type(None) in typing.get_args(tp)
        inner = args[0] if optional and len(args) == 1 else tp
        if typing.get_origin(inner) is dict:  # repeatable KEY=VALUE items, turned into the mapping by `parse`
            kind, default = Optional[List[str]], None
        elif typing.get_origin(inner) in (tuple, list):  # repeatable; unset means the config's default
            kind, default = Optional[List[typing.get_args(inner)[0]]], None
        elif meta["path"]:
            kind = Optional[Path]
        else:
            kind = Optional[inner] if optional else inner
        dashed = f.name.replace("_", "-")
        flags = meta["flags"] or ((f"--{dashed}/--no-{dashed}",) if inner is bool else (f"--{dashed}",))
        low = meta["min"] if meta["min"] is not None else meta["above"]
        extra: dict[str, Any] = {"case_sensitive": False} if isinstance(inner, type) and issubclass(inner, Enum) else {}
        if inner in (int, float):
            extra.update(min=low, max=meta["max"] if meta["max"] is not None else meta["below"])
        option = typer.Option(*flags, help=meta["help"], show_default=default is not None, **extra, **meta["option"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[kind, option]))

    parsers = {f.name: meta["parse"] for f, meta in settings_of(config_cls) if meta["parse"] is not None}

    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for name, p in sig.parameters.items() if name != "settings"]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            settings = {p.name: kwargs.pop(p.name) for p in params}
            for name, parse in parsers.items():
                if settings[name] is not None:
                    settings[name] = parse(settings[name])
            return fn(*args, settings=settings, **kwargs)

        command.__signature__ = sig.replace(parameters=own + params)
        return command

    return wrap


def given_options(options: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The entries of `options` that are config fields and were set by the user (not defaulted)."""
    out = {}
    for name in names:
        if name in options and explicit(name):
            value = options[name]
            out[name] = str(value) if isinstance(value, Path) else value
    return out


def run_verb(
    stage_name: str,
    *,
    out: Path,
    config_path: Path | None,
    options: dict[str, Any],
    input: Path | None = None,
    llm: LLMGiven | None = None,
    summary: Callable[[StageResult], str | list[str]] | None = None,
    defaults: dict[str, Any] | None = None,
) -> StageResult:
    """Run one stage as a verb: its settings (defaults, then the --config file, then the flags), a one-stage plan
    (metakl.pipeline.one_stage_plan), the same `run_stage` as each stage of `metakl run`, then the verb's report.
    `input` None: a stage that reads no dataset (ingest reads its sources); `defaults` replace the config
    dataclass's defaults where the file and the command line are silent."""
    import contextlib

    from metakl.config import load_config
    from metakl.errors import UserError
    from metakl.pipeline import lazy_executor, one_stage_plan, run_stage, uses_one_backend
    from metakl.stage import TooManyErrors
    from metakl.stages import get_stage

    fn = get_stage(stage_name)
    config, extras = load_config(
        fn.config_cls, config_path, given_options(options, [n for n in fn.config_cls.__dataclass_fields__]),
        section=stage_name, extra_keys=("llm", "max_error_rate"), defaults=defaults,
    )
    given = _output.get()
    limit = _error_limit(given.get("max_error_rate"), extras.get("max_error_rate"), config_path)
    llm_section = extras.get("llm")
    if llm_section is not None and not isinstance(llm_section, dict):
        raise UserError(f"{config_path}: 'llm' must be a mapping of model options")
    if fn.needs_base_models(config) and llm_section and "model" in llm_section:
        raise UserError(f"{config_path}: llm.model: name the models to score with `base_models` (or --base-model); "
                        "per-model served names go in model_options.NAME.model")
    # the file's `llm:` section names itself, but a stage's base models share it as a whole (`model_options.NAME`)
    where = (str(config_path) if fn.needs_base_models(config) else f"{config_path}: llm") if config_path else "model options"
    options_llm = llm.resolve(llm_section, where=where) if llm is not None and fn.needs_backend(config) else None
    plan = one_stage_plan(stage_name, config, options_llm, input=input, out=out, config_path=config_path,
                          overwrite=bool(given.get("overwrite")), max_error_rate=limit, llm_where=where)
    with contextlib.ExitStack() as stack:
        result, too_many, finished = run_stage(plan, plan.stages[0], input, executor=lazy_executor(plan, stack),
                                               progress=show_progress())
    if uses_one_backend(fn, plan.stages[0]):
        echo_stats(result.report["llm"])
    if finished:
        typer.echo(finished)
    if summary is not None:
        lines = summary(result)
        for line in [lines] if isinstance(lines, str) else lines:
            typer.echo(line)
    typer.echo(closing_line(result.report))
    typer.echo(f"wrote {len(result.dataset)} rows to {out}")
    if too_many:
        raise TooManyErrors(f"{too_many}; they are saved in {out}; fix the cause and re-run: "
                            f"{resume_command(stage_name)}")
    return result


def _error_limit(flag: float | None, in_file: Any, config_path: Path | None) -> float:
    """--max-error-rate, else the --config file's `max_error_rate`, else the default."""
    from metakl.stage import MAX_ERROR_RATE, check_rate

    if flag is not None:
        return flag
    if in_file is not None:
        return check_rate(in_file, f"{config_path}: 'max_error_rate'")
    return MAX_ERROR_RATE


def resume_command(verb_name: str) -> str:
    """The command line that ran this verb, to run again (the same words when run as `metakl ...`)."""
    import shlex
    import sys

    args = sys.argv[1:]
    if args[:1] == [verb_name]:
        return "metakl " + shlex.join(args)
    return f"the same `metakl {verb_name}` command"
