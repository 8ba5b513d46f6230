"""One path for every stage verb: settings → load → run → save → summary.

```python
@verb
@stage_folders("reward", "Stage folder with a `responses` column.")
@llm_options()
def reward(correctness_weight: float = ..., *, input: Path, out: Path, config: Optional[Path], llm: LLMGiven) -> None:
    run_verb("reward", input=input, out=out, config_path=config, options=locals(), llm=llm,
             summary=format_summary)
```

`stage_folders` declares what every stage verb shares: INPUT (the previous stage's folder), `--out` and `--config`,
and (through `output_options`) `--overwrite` and `--max-error-rate`.

`options` holds the verb's parameters; those named like a field of the stage's config and set by the user override
the `--config` file, which overrides the defaults. The stage input is read with `load_stage` (a damaged file is one
error line naming it), the result written with `save_result` (atomically), and the summary ends with one closing line
per stage: rows in → out, errors, tokens, seconds.
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
    data: Any = None,
    llm: LLMGiven | None = None,
    uses_llm: Callable[[Any], bool] | None = None,
    summary: Callable[[StageResult], str | list[str]] | None = None,
    resources: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    save: Callable[[StageResult, Path], Any] | None = None,
) -> StageResult:
    """Run one stage as a verb. `data` replaces loading `input` (ingest reads its sources itself); `defaults`
    replace the config dataclass's defaults where the file and the command line are silent."""
    from metakl.config import load_config
    from metakl.io import check_out, load_stage, save_result
    from metakl.pipeline import stage_inputs
    from metakl.stage import check_columns
    from metakl.stages import get_stage

    fn = get_stage(stage_name)
    config, extras = load_config(
        fn.config_cls, config_path, given_options(options, [n for n in fn.config_cls.__dataclass_fields__]),
        section=stage_name, extra_keys=("llm", "max_error_rate"), defaults=defaults,
    )
    given = _output.get()
    overwrite = bool(given.get("overwrite"))
    limit = _error_limit(given.get("max_error_rate"), extras.get("max_error_rate"), config_path)
    # Before any work: an --out that would lose data (an input, someone's folder, a file) is refused now, not after
    # an hour of generation.
    check_out(out, inputs=[input, config_path, *stage_inputs(stage_name, config)], overwrite=overwrite)
    if input is not None:
        data = load_stage(input)
        check_columns(fn, config, data.column_names, where=input)  # before any model loads
    llm_section = extras.get("llm")
    if llm_section is not None and not isinstance(llm_section, dict):
        from metakl.errors import UserError

        raise UserError(f"{config_path}: 'llm' must be a mapping of model options")
    backend = None
    from metakl.llm.scope import stage_scope

    with stage_scope(out):  # what its backends share: the folder (--batch's ids), the spending (--budget)
        if llm is not None and (uses_llm or fn.needs_backend)(config):
            options_llm = llm.resolve(llm_section, where=f"{config_path}: llm" if config_path else "model options")
            backend = options_llm.build()
        try:
            result = fn(data, config, backend=backend, progress=show_progress(), **(resources or {}))
            if backend is not None:
                result.report["llm"]["model"] = options_llm.identity
        finally:
            if backend is not None:
                backend.close()
    (save or save_result)(result, out, overwrite=overwrite)  # `save` takes `overwrite` too (publish's release)
    if backend is not None:
        echo_stats(result.report["llm"])
    if fn.finish is not None:
        line = fn.finish(result, out, config)
        if line:
            typer.echo(line)
    if summary is not None:
        lines = summary(result)
        for line in [lines] if isinstance(lines, str) else lines:
            typer.echo(line)
    typer.echo(closing_line(result.report))
    typer.echo(f"wrote {len(result.dataset)} rows to {out}")
    check_error_rate(result, limit, f"they are saved in {out}; fix the cause and re-run: {resume_command(stage_name)}")
    return result


def _error_limit(flag: float | None, in_file: Any, config_path: Path | None) -> float:
    """--max-error-rate, else the --config file's `max_error_rate`, else the default."""
    from metakl.stage import MAX_ERROR_RATE, check_rate

    if flag is not None:
        return flag
    if in_file is not None:
        return check_rate(in_file, f"{config_path}: 'max_error_rate'")
    return MAX_ERROR_RATE


def check_error_rate(result: StageResult, limit: float, then: str) -> None:
    """Raise TooManyErrors when more than `limit` of the result's rows carry an error of its stage."""
    from metakl.stage import TooManyErrors, error_share_line

    line = error_share_line(result.dataset, result.report["stage"], limit)
    if line:
        raise TooManyErrors(f"{line}; {then}")


def resume_command(verb_name: str) -> str:
    """The command line that ran this verb, to run again (the same words when run as `metakl ...`)."""
    import shlex
    import sys

    args = sys.argv[1:]
    if args[:1] == [verb_name]:
        return "metakl " + shlex.join(args)
    return f"the same `metakl {verb_name}` command"
