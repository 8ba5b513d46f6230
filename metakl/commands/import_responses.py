"""`metakl import-responses`: attach response groups from files to ingested prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.errors import UserError
from metakl.stages.import_responses import ImportConfig


@verb
@stage_folders("import-responses", "Stage folder with the prompts (from `metakl ingest`).", optional=True)
@config_options(ImportConfig)
def import_responses(
    list_presets: bool = typer.Option(False, "--list-presets", help="List the response mapping presets and exit."),
    *,
    input: Optional[Path], out: Optional[Path], config: Optional[Path],  # declared by @stage_folders
    settings: dict,
) -> None:
    """Attach existing responses (several per prompt, or one file per model) to ingested prompts, matched by the
    source's id and by normalized question; a question found in several sources is attached to none (unless the
    mapping names the `source`); unmatched and ambiguous records are counted, never guessed.

    Examples:

      metakl import-responses runs/x/ingest data/qwen25math_rm_maj_example/math_cot_100.jsonl --preset qwen25math --out runs/x/responses

      metakl import-responses runs/x/ingest data/xstest/model_completions --preset xstest --out runs/x/responses

      metakl import-responses runs/x/ingest data/mmlu_pro_math_model_outputs --preset mmlu-pro --out runs/x/responses
    """
    from metakl.stages.import_responses import list_response_presets, load_response_mapping

    if list_presets:
        for name in list_response_presets():
            typer.echo(f"{name:12} {load_response_mapping(name).description}")
        return
    if input is None:
        raise UserError("give the prompts folder and at least one response file, e.g. "
                        "`metakl import-responses runs/x/ingest outputs.jsonl --preset generic --out DIR`")
    if out is None:
        raise UserError("--out DIR is required (the folder that will hold data.parquet and the report)")
    run_verb("import-responses", input=input, out=out, config_path=config, options=settings, summary=summary)


def summary(result) -> list[str]:
    from metakl.commands.score import import_lines

    report = result.report
    per_model = ", ".join(f"{k}: {v}" for k, v in sorted(report["responses_per_model"].items()))
    return import_lines(report) + [f"{report['responses']} responses on {report['rows_with_responses']} of "
                                   f"{report['rows_out']} rows; per model: {per_model or '-'}"]


def register(app: typer.Typer) -> None:
    app.command("import-responses")(import_responses)
