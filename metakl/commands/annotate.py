"""`metakl annotate`: tag every prompt with the knowledge (skills + reasons) needed to solve it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import (
    DEFAULT_MODEL,
    BackendOpt,
    BaseUrlOpt,
    CacheDirOpt,
    ConcurrencyOpt,
    ModelOpt,
    NoCacheOpt,
    build_backend,
    echo_stats,
)


def annotate(
    input: Path = typer.Argument(..., help="Stage folder (or parquet file) with id, domain, question, choices."),
    out: Path = typer.Option(..., "--out", "-o", help="Output stage folder (data.parquet + annotate_report.json)."),
    max_skills: int = typer.Option(8, min=1, help="At most this many skills per prompt (K)."),
    retries: int = typer.Option(2, min=0, help="Extra attempts for an invalid answer, with the error fed back."),
    max_tokens: int = typer.Option(256, min=16, help="Token limit of each answer."),
    temperature: float = typer.Option(0.0, min=0.0, help="Sampling temperature of the first attempt."),
    seed: int = typer.Option(0, help="Sampling seed (recorded; with the request cache a re-run is identical)."),
    structured: bool = typer.Option(True, "--structured/--no-structured", help="Ask for JSON-schema structured output."),
    templates_dir: Optional[Path] = typer.Option(None, help="Your own templates folder: <dir>/annotate/{math,general,safety,retry}.j2."),
    backend: BackendOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
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
    from metakl.io import load_stage, save_stage
    from metakl.stages.annotate import AnnotateConfig
    from metakl.stages.annotate import annotate as run_annotate

    ds = load_stage(input)
    config = AnnotateConfig(
        max_skills=max_skills,
        retries=retries,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        structured=structured,
        templates_dir=str(templates_dir) if templates_dir else None,
    )
    with build_backend(backend, model, base_url, concurrency, cache_dir, no_cache) as llm:
        ds, summary = run_annotate(ds, llm, config, progress=True)
        summary["model"] = model
        save_stage(ds, out, summary, "annotate_report.json")
        echo_stats(llm.stats)
    typer.echo(f"annotated {summary['annotated']}/{summary['rows']} rows -> {out}")
    typer.echo(f"failure rate {summary['failure_rate']:.1%}" + "".join(
        f"; {kind}: {v['rows']}" for kind, v in summary["failures_by_kind"].items()))
    typer.echo("skills per prompt: " + ", ".join(f"{k}: {v}" for k, v in summary["skills_per_prompt"].items()))
    typer.echo("most frequent skills: " + ", ".join(f"{s} ({c})" for s, c in summary["top_skills"][:10]))


def register(app: typer.Typer) -> None:
    app.command("annotate")(annotate)
