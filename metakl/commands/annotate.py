"""`metakl annotate`: tag every prompt with the knowledge (skills + reasons) needed to solve it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import run_verb, stage_folders
from metakl.stages.annotate import AnnotateConfig as D


@verb
@stage_folders("annotate", "Stage folder (or parquet file) with id, domain, question, choices.")
@llm_options()
def annotate(
    max_skills: int = typer.Option(D.max_skills, min=1, help="At most this many skills per prompt (K)."),
    retries: int = typer.Option(D.retries, min=0, help="Extra attempts for an invalid answer, with the error fed back."),
    max_tokens: int = typer.Option(D.max_tokens, min=16, help="Token limit of each answer."),
    temperature: float = typer.Option(D.temperature, min=0.0, help="Sampling temperature of the first attempt."),
    seed: int = typer.Option(D.seed, help="Sampling seed (recorded; with the request cache a re-run is identical)."),
    structured: bool = typer.Option(D.structured, "--structured/--no-structured", help="Ask for JSON-schema structured output."),
    templates_dir: Optional[Path] = typer.Option(None, help="Your own templates folder: <dir>/annotate/{math,general,safety,retry}.j2."),
    *,
    input: Path, out: Path, config: Optional[Path],  # declared by @stage_folders
    llm: LLMGiven,
) -> None:
    """Ask a model which skills each prompt needs, as {skill_name: reason}, and add a `knowledge` column.

    The template depends on the row's domain (math, general, safety) and its name and version are recorded in
    the report. Invalid answers are retried with the validation error; rows that still fail keep their place
    with an empty `knowledge` and an `errors` entry. The summary gives skills per prompt, the most frequent
    skills and the failure rate by kind.

    Example:

        metakl annotate runs/ingest --out runs/annotate --base-url http://127.0.0.1:8011/v1 \\
            --model smollm2-135m-instruct --max-skills 4
    """
    run_verb("annotate", input=input, out=out, config_path=config, options=locals(), llm=llm, summary=summary)


def summary(result) -> list[str]:
    s = result.report
    return [
        f"annotated {s['annotated']}/{s['rows_out']} rows; failure rate {s['failure_rate']:.1%}"
        + "".join(f"; {kind}: {v['rows']}" for kind, v in s["failures_by_kind"].items()),
        "skills per prompt: " + ", ".join(f"{k}: {v}" for k, v in s["skills_per_prompt"].items()),
        "most frequent skills: " + ", ".join(f"{sk} ({c})" for sk, c in s["top_skills"][:10]),
    ]


def register(app: typer.Typer) -> None:
    app.command("annotate")(annotate)
