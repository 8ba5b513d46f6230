"""One path for every stage verb: settings → load → run → save → summary.

```python
@verb
@stage_folders("reward", "Stage folder with a `responses` column.")
@llm_options()
def reward(correctness_weight: float = ..., *, input: Path, out: Path, config: Optional[Path], llm: LLMGiven) -> None:
    run_verb("reward", input=input, out=out, config_path=config, options=locals(), llm=llm,
             summary=format_summary)
```

`stage_folders` declares what every stage verb shares: INPUT (the previous stage's folder), `--out` and `--config`.

`options` holds the verb's parameters; those named like a field of the stage's config and set by the user override
the `--config` file, which overrides the defaults. The stage input is read with `load_stage` (a damaged file is one
error line naming it), the result written with `save_result` (atomically), and the summary ends with one closing line
per stage: rows in → out, errors, tokens, seconds.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from metakl.commands._llm_options import LLMGiven, echo_stats, explicit
from metakl.stage import StageResult

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="YAML file of this verb's settings (top level, or under a key named after the verb, "
                           "with an optional `llm:` section for the model options); options given here win.")]


FOLDER_PARAMS = ("input", "out", "config")


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
        param("out", Annotated[path, typer.Option("--out", "-o", help=f"Output stage folder: {files} (written atomically).")]),
        param("config", ConfigOpt, None),
    ]

    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for name, p in sig.parameters.items() if name not in FOLDER_PARAMS]
        fn.__signature__ = sig.replace(parameters=front + own)
        return fn

    return wrap


def given_options(options: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The entries of `options` that are config fields and were set by the user (not defaulted)."""
    out = {}
    for name in names:
        if name in options and explicit(name):
            value = options[name]
            out[name] = str(value) if isinstance(value, Path) else value
    return out


def show_progress() -> bool:
    """Progress bars for a person watching (stderr is a terminal), or when METAKL_PROGRESS=1 asks for them."""
    import os
    import sys

    forced = os.environ.get("METAKL_PROGRESS")
    return forced == "1" if forced in ("0", "1") else sys.stderr.isatty()


def quiet_library_progress() -> None:
    """Hide the progress bars of datasets, transformers and huggingface_hub (caching a split, loading weights):
    during `metakl run` each stage has its own bar and closing line, and theirs would bury them."""
    import sys

    import datasets
    import huggingface_hub.utils

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    # transformers copies huggingface_hub's setting when it is imported; importing it here only for this would add
    # seconds to every run, including runs that never load a model.
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def closing_line(report: dict[str, Any]) -> str:
    """`stage: 24 rows in → 24 out, 2 rows with errors (no_answer 2), 1,234 tokens, 3.2 s`."""
    errors = report.get("errors") or {}
    llm = report.get("llm") or {}
    tokens = (llm.get("prompt_tokens") or 0) + (llm.get("completion_tokens") or 0)
    parts = [f"{report['stage']}: {report.get('rows_in')} rows in → {report.get('rows_out')} out"]
    parts.append(f"errors: {', '.join(f'{k} {v}' for k, v in errors.items())}" if errors else "no errors")
    if llm:
        parts.append(f"{tokens:,} tokens ({llm.get('cache_hits', 0)} cached requests)")
    parts.append(f"{report.get('seconds', 0):.1f} s")
    return ", ".join(parts)


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
    from metakl.io import load_stage, save_result
    from metakl.stages import get_stage

    fn = get_stage(stage_name)
    config, extras = load_config(
        fn.config_cls, config_path, given_options(options, [n for n in fn.config_cls.__dataclass_fields__]),
        section=stage_name, extra_keys=("llm",), defaults=defaults,
    )
    if input is not None:
        data = load_stage(input)
    llm_section = extras.get("llm")
    if llm_section is not None and not isinstance(llm_section, dict):
        from metakl.errors import UserError

        raise UserError(f"{config_path}: 'llm' must be a mapping of model options")
    backend = None
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
    (save or save_result)(result, out)
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
    return result
