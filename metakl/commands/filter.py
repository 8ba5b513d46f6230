"""`metakl filter`: knowledge-gap selection for a base model (metakl.stages.filter)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.filter import FilterConfig, gap_summary


@verb
@stage_folders("filter", "Stage folder with `units` (merge) and `proficiency` (score) columns.",
               artifacts=("gap_report.json", "gap_report.png", "selection.json"))
@config_options(FilterConfig)
def filter(*, input: Path, out: Path, config: Optional[Path], settings: dict) -> None:  # noqa: A001 - the verb's name
    """Select the prompts that fill a base model's knowledge gaps (MetaGDPO, Algorithm 1).

    Every prompt with at least r units is kept first; then, one at a time, the prompt with the most units still
    below their target (the largest knowledge gap), ties going to harder prompts (lower accuracy of the base model,
    then of the average), then to a seeded shuffle; until no prompt adds a gap, the budget is spent, or every
    domain with prompts left is at its quota. A unit's target falls with the base model's proficiency on it:
    max_target prompts for a unit it always fails, `reminders` for one it has mastered. After `metakl reward`,
    groups whose rewards are all equal are skipped (no preference for GDPO) and, among equal gaps, groups with a
    correct response go first.

    Examples:

      metakl filter runs/x/score --out runs/x/filter --base-model average

      metakl filter runs/x/score --out runs/x/filter --base-model Meta-Llama-3_1-8B-Instruct --budget 5661 --quota math=1547 --quota general=2993 --quota safety=1121
    """
    run_verb("filter", input=input, out=out, config_path=config, options=settings, summary=summary)


def summary(result) -> list[str]:
    return gap_summary(result.report, result.artifacts["gap_report.json"])


def register(app: typer.Typer) -> None:
    app.command("filter")(filter)
