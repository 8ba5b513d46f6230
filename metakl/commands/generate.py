"""`metakl generate`: G teacher responses per prompt (metakl.stages.generate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from metakl.commands._llm_options import (
    DEFAULT_MODEL,
    BackendOpt,
    BaseUrlOpt,
    CacheDirOpt,
    ConcurrencyOpt,
    NoCacheOpt,
    build_backend,
    echo_stats,
)

REPORT_NAME = "generate_report.json"

TeacherOpt = Annotated[str, typer.Option(
    "--teacher", "--model", envvar="METAKL_MODEL", rich_help_panel="Model options",
    help="Teacher model: embedded name (smollm2-135m-instruct), HF folder, or the name an openai server serves.")]


def generate(
    input: Path = typer.Argument(..., help="Stage folder (data.parquet) from `metakl ingest` or an earlier stage."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (data.parquet + generate_report.json)."),
    n: int = typer.Option(4, "-n", "--n", min=1, help="Responses per prompt (G; the paper uses 10)."),
    temperature: float = typer.Option(0.7, min=0.0, max=2.0, help="Sampling temperature."),
    top_p: float = typer.Option(0.95, min=0.0, max=1.0, help="Nucleus sampling top_p."),
    max_tokens: int = typer.Option(1024, min=1, help="Token limit per response (cut responses get finish_reason 'length')."),
    seed: Optional[int] = typer.Option(0, help="Sampling seed (part of the cache key)."),
    reconstruct: bool = typer.Option(False, "--reconstruct", help="Rewrite the reference solution (in meta) as reasoning + boxed answer; keep only outputs whose answer equals the reference."),
    solution_key: Optional[List[str]] = typer.Option(None, "--solution-key", help="Meta key of the reference solution for --reconstruct (repeatable; default: solution, rationale, answer, cot, explanation)."),
    replace: bool = typer.Option(False, "--replace", help="Drop the responses rows already have (default: append)."),
    templates_dir: Optional[Path] = typer.Option(None, help="Your own templates folder (generate/<domain>.j2, generate/reconstruct.j2)."),
    backend: BackendOpt = None,
    teacher: TeacherOpt = DEFAULT_MODEL,
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Sample N responses per prompt from a teacher model; store text, reasoning (<think>...</think>) and answer.

    Prompts use annotations/templates/generate/<domain>.j2 (math, general, safety). Rewards come next
    (`metakl reward`). Failed requests are recorded in the rows' errors.

    Examples:

      metakl generate runs/x/ingest --out runs/x/generate -n 4 --base-url http://127.0.0.1:8000/v1 --teacher smollm2-135m-instruct

      metakl generate runs/x/ingest --out runs/x/reconstruct --reconstruct --solution-key solution -n 2 --backend transformers
    """
    from metakl.io import load_stage, save_stage
    from metakl.stages.generate import SOLUTION_KEYS, GenerateConfig
    from metakl.stages.generate import generate as run_generate

    cfg = GenerateConfig(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, reconstruct=reconstruct,
        solution_keys=tuple(solution_key or SOLUTION_KEYS), replace=replace,
        templates_dir=str(templates_dir) if templates_dir else None,
    )
    ds = load_stage(input)
    with build_backend(backend, teacher, base_url, concurrency, cache_dir, no_cache) as llm:
        out_ds, report = run_generate(ds, llm, cfg, progress=True)
        echo_stats(llm.stats)
    save_stage(out_ds, out, report, REPORT_NAME)
    typer.echo(
        f"{report['responses_stored']} responses stored for {report['rows']} rows "
        f"({report['failed_requests']} failed requests, {report['rows_skipped']} rows skipped, "
        f"{report['reconstruct_rejected']} reconstructions rejected, {report['truncated']} truncated; "
        f"answer extracted: {report['answer_extracted_rate']}); templates {', '.join(report['templates'])}"
    )
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
