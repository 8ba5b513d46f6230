"""`metakl decontaminate`: mark (and by default drop) prompts that carry benchmark items (metakl.stages.decontaminate)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.decontaminate import DecontaminateConfig


@verb
@stage_folders("decontaminate", "Stage folder (or parquet file) with `id`, `domain` and `question` columns.")
@config_options(DecontaminateConfig)
def decontaminate(*, input: Path, out: Path, config: Optional[Path], settings: dict) -> None:
    """Find prompts that carry benchmark items (word n-grams, rewordings, the same short problem with its answer)
    and drop them, so that no release carries what it will be judged on.

    Benchmarks: every task of the `gdpo eval` suite (--suite, default paper) whose data is present, plus each
    --benchmark. `contamination` lists each row's matches (benchmark, item id, kind ngram|semantic|answer, score);
    decontaminate_report.json counts them per benchmark and kind, with example pairs.

    Examples:

      metakl decontaminate runs/x/dedup --out runs/x/decontaminate

      metakl decontaminate runs/x/ingest --out runs/x/decon --suite none --benchmark gsm8k=data/gsm8k/test.jsonl --mark-only
    """
    run_verb("decontaminate", input=input, out=out, config_path=config, options=settings, summary=format_summary)


def format_summary(result) -> list[str]:
    r = result.report
    lines = [f"{'benchmark':24}  {'items':>6}  {'ngram':>6}  {'semantic':>8}  {'answer':>6}  {'rows':>5}"]
    for name, b in r["benchmarks"].items():
        lines.append(f"{name[:24]:24}  {b['items']:>6}  {b['ngram']:>6}  {b['semantic']:>8}  {b['answer']:>6}  {b['rows']:>5}")
    for s in r["skipped_benchmarks"]:
        lines.append(f"skipped {s['benchmark']}: {s['reason']}")
    lines.append(f"{r['rows_matched']} rows match a benchmark item; "
                 f"{'kept, marked' if r['mark_only'] else 'dropped'}")
    return lines


def register(app: typer.Typer) -> None:
    app.command("decontaminate")(decontaminate)
