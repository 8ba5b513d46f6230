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
the stage's config, each declared once with `metakl.config.setting`; a verb adds by hand only what is no setting of
its stage (`--list-presets`, merge's `--taxonomy-out`).

`options` holds the settings the user gave on the command line (by field name); they override the `--config` file,
which overrides the defaults. The stage input is read with `load_stage` (a damaged file is one
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
    help, bounds and choices come from there; a list field is a repeatable option, a mapping field a repeatable
    KEY=VALUE option, an `argument` field a positional argument, a `no_flag` field none); the verb receives the
    values the user gave (not the defaults) as `settings`, keyed by field name, to pass to `run_verb` in `options`.
    Bounds are shown in the help and checked by the config alone (one message, exit 2). Put it below `@llm_options`."""
    from metakl.config import settings_of

    declared = [(f, meta, _option_for(f, meta, config_cls)) for f, meta in settings_of(config_cls)
                if not meta["no_flag"]]

    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for name, p in sig.parameters.items() if name != "settings"]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            settings = {}
            for f, meta, param in declared:
                value = kwargs.pop(param.name)
                if explicit(param.name):  # a default left alone lets the --config file speak
                    settings[f.name] = None if value is None else _parse_items(value, f, meta, config_cls)
            return fn(*args, settings=settings, **kwargs)

        command.__signature__ = sig.replace(parameters=own + [param for _, _, param in declared])
        return command

    return wrap


def _option_for(f: Any, meta: dict[str, Any], config_cls: type) -> inspect.Parameter:
    """The typer parameter of one `setting` field (named like the field unless a model option has that name)."""
    import typing
    from enum import Enum
    from typing import List

    from metakl.commands._llm_options import OPTION_NAMES
    from metakl.config import bounds_text

    tp, default = typing.get_type_hints(config_cls)[f.name], f.default
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = type(None) in typing.get_args(tp)
    inner = args[0] if optional and len(args) == 1 else tp
    if typing.get_origin(inner) is dict:  # repeatable KEY=VALUE items, turned into the mapping by `_parse_items`
        kind, default = Optional[List[str]], None
    elif typing.get_origin(inner) in (tuple, list):  # repeatable; unset means the config's default
        kind, default = Optional[List[Path if meta["path"] else typing.get_args(inner)[0]]], None
    elif meta["path"]:
        kind = Optional[Path]
    else:
        kind = Optional[inner] if optional else inner
    bounds = bounds_text(meta)
    help_text = meta["help"] + (f" [{bounds}]" if bounds else "")
    name = f.name if f.name not in OPTION_NAMES else f"{f.name}_setting"  # merge's batch_size vs --batch-size
    if meta["argument"]:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[
            kind, typer.Argument(help=help_text, show_default=False, **meta["option"])])
    dashed = f.name.replace("_", "-")
    flags = meta["flags"] or ((f"--{dashed}/--no-{dashed}",) if inner is bool else (f"--{dashed}",))
    extra: dict[str, Any] = {"show_default": default is not None}
    if isinstance(inner, type) and issubclass(inner, Enum):
        extra["case_sensitive"] = False
    if meta["choices"]:
        extra["metavar"] = "[" + "|".join(meta["choices"]) + "]"
    option = typer.Option(*flags, help=help_text, **{**extra, **meta["option"]})
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option])


def _parse_items(value: Any, f: Any, meta: dict[str, Any], config_cls: type) -> Any:
    """A repeatable flag's items as the field's value: `parse` when declared; for a mapping (a per-domain setting),
    DOMAIN=VALUE items with values of the mapping's type, each domain checked; else the value as given. A bad item
    is a UserError naming the flag."""
    import typing

    from metakl.schema import domain_mapping, key_values

    if meta["parse"] is not None:
        return meta["parse"](value)
    tp = typing.get_type_hints(config_cls)[f.name]
    mapping = next((t for t in (tp, *typing.get_args(tp)) if typing.get_origin(t) is dict), None)
    if mapping is None:
        return value
    flag = meta["flags"][0] if meta["flags"] else "--" + f.name.replace("_", "-")
    convert = typing.get_args(mapping)[1]
    example = "safety=" + {float: "0.1", int: "3"}.get(convert, "NAME")
    return domain_mapping(key_values(value, flag, meta["option"].get("metavar", "DOMAIN=VALUE"), example, convert),
                          flag)


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
        fn.config_cls, config_path, {k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
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
