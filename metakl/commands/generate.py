"""`metakl generate`: G teacher responses per prompt (metakl.stages.generate)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import run_verb, stage_folders
from metakl.stages.generate import GenerateConfig as D


@verb
@stage_folders("generate", "Stage folder (data.parquet) from `metakl ingest` or an earlier stage.")
@llm_options(model_flags=("--teacher", "--model"),
             model_help="Teacher model: embedded name (smollm2-135m-instruct), HF folder, or the name an openai "
                        "server serves.")
def generate(
    n: int = typer.Option(D.n, "-n", "--n", min=1, help="Responses per prompt (G; the paper uses 10)."),
    temperature: float = typer.Option(D.temperature, min=0.0, max=2.0, help="Sampling temperature."),
    top_p: float = typer.Option(D.top_p, min=0.0, max=1.0, help="Nucleus sampling top_p."),
    max_tokens: int = typer.Option(D.max_tokens, min=1, help="Token limit per response (cut responses get finish_reason 'length')."),
    seed: Optional[int] = typer.Option(D.seed, help="Sampling seed (part of the cache key)."),
    reconstruct: bool = typer.Option(D.reconstruct, "--reconstruct", help="Rewrite the reference solution (in meta) as reasoning + boxed answer; keep only outputs whose answer equals the reference."),
    solution_keys: Optional[List[str]] = typer.Option(None, "--solution-key", help="Meta key of the reference solution for --reconstruct (repeatable; default: solution, rationale, answer, cot, explanation)."),
    replace: bool = typer.Option(D.replace, "--replace", help="Drop the responses rows already have (default: append)."),
    templates_dir: Optional[Path] = typer.Option(None, help="Your own templates folder (generate/<domain>.j2, generate/reconstruct.j2)."),
    *,
    input: Path, out: Path, config: Optional[Path],  # declared by @stage_folders
    llm: LLMGiven,
) -> None:
    """Sample N responses per prompt from a teacher model; store text, reasoning (<think>...</think>) and answer.

    Prompts use annotations/templates/generate/<domain>.j2 (math, general, safety). Rewards come next
    (`metakl reward`). Failed requests are recorded in the rows' errors.

    Examples:

      metakl generate runs/x/ingest --out runs/x/generate -n 4 --base-url http://127.0.0.1:8000/v1 --teacher smollm2-135m-instruct

      metakl generate runs/x/ingest --out runs/x/reconstruct --reconstruct --solution-key solution -n 2 --backend transformers
    """
    run_verb("generate", input=input, out=out, config_path=config, options=locals(), llm=llm, summary=summary)


def summary(result) -> str:
    r = result.report
    return (f"{r['responses_stored']} responses stored for {r['rows_out']} rows "
            f"({r['failed_requests']} failed requests, {r['rows_skipped']} rows skipped, "
            f"{r['reconstruct_rejected']} reconstructions rejected, {r['truncated']} truncated; "
            f"answer extracted: {r['answer_extracted_rate']}); templates {', '.join(r['templates'])}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
