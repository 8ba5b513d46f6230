"""`metakl generate`: G teacher responses per prompt (metakl.stages.generate)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.generate import GenerateConfig


@verb
@stage_folders("generate", "Stage folder (data.parquet) from `metakl ingest` or an earlier stage.")
@llm_options(model_flags=("--teacher", "--model"),
             model_help="Teacher model: embedded name (smollm2-135m-instruct), HF folder, or the name an openai "
                        "server serves.")
@config_options(GenerateConfig)
def generate(*, input: Path, out: Path, config: Optional[Path], llm: LLMGiven, settings: dict) -> None:
    """Sample N responses per prompt from a teacher model; store text, reasoning (<think>...</think>) and answer.

    Prompts use annotations/templates/generate/<domain>.j2 (math, general, safety). Rewards come next
    (`metakl reward`). Failed requests are recorded in the rows' errors.

    Reasoning reconstruction (the paper's §Data step 3): --reconstruct-domain math gives the math rows the
    reference solution from their meta (generate/reconstruct.j2) and keeps only outputs whose boxed answer equals
    the reference, while the other domains are sampled in the same stage; a math row without a solution falls back
    to sampling (counted in the report). --reconstruct reconstructs every row and skips those without a solution.

    Examples:

      metakl generate runs/x/ingest --out runs/x/generate -n 4 --base-url http://127.0.0.1:8000/v1 --teacher smollm2-135m-instruct

      metakl generate runs/x/ingest --out runs/x/generate --reconstruct-domain math -n 10 --base-url http://127.0.0.1:8000/v1

      metakl generate runs/x/ingest --out runs/x/reconstruct --reconstruct --solution-key solution -n 2 --backend transformers
    """
    run_verb("generate", input=input, out=out, config_path=config, options=settings, llm=llm, summary=summary)


def summary(result) -> str:
    r = result.report
    modes = ", ".join(f"{n} {mode.replace('_', ' ')}" for mode, n in r["rows_by_mode"].items() if n)
    modes = f"{modes}; " if r["mode"] != "sample" else ""  # e.g. 3 reconstructed, 4 sampled, 1 fell back
    return (f"{r['responses_stored']} responses stored for {r['rows_out']} rows "
            f"({modes}{r['failed_requests']} failed requests, {r['rows_skipped']} rows skipped, "
            f"{r['reconstruct_rejected']} reconstructions rejected, {r['truncated']} truncated; "
            f"answer extracted: {r['answer_extracted_rate']}); templates {', '.join(r['templates'])}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
