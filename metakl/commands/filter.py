"""`metakl filter`: knowledge-gap selection for a base model (metakl.stages.filter)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import run_verb, stage_folders
from metakl.schema import domain_mapping, key_values
from metakl.stages.filter import FilterConfig as D
from metakl.stages.filter import gap_summary


def parse_quotas(values: list[str] | None) -> dict[str, int]:
    """`["math=1547", "safety=1121"]` -> {"math": 1547, "safety": 1121}."""
    return domain_mapping(key_values(values or [], "--quota", "DOMAIN=COUNT", "math=1500", _count), "--quota")


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


@verb
@stage_folders("filter", "Stage folder with `units` (merge) and `proficiency` (score) columns.",
               artifacts=("gap_report.json", "gap_report.png", "selection.json"))
def filter(  # noqa: A001 - the verb's name
    base_model: str = typer.Option(D.base_model, "--base-model", help="Whose knowledge gaps to fill: a model scored by `metakl score`, or 'average' (mean over the scored models)."),
    r: int = typer.Option(D.r, "--r", min=0, help="Keep every prompt with at least r knowledge units first (the paper: more than 5); 0: off."),
    reminders: int = typer.Option(D.reminders, min=0, help="Target prompts of a unit the base model has mastered (proficiency 1)."),
    max_target: int = typer.Option(D.max_target, min=0, help="Target prompts of a unit the base model always fails (proficiency 0); linear in between."),
    prior_strength: float = typer.Option(D.prior_strength, min=0.0, help="Pseudo-prompts pulling a unit's proficiency toward the model's overall mean (few scored prompts: little evidence)."),
    budget: Optional[int] = typer.Option(D.budget, min=0, help="At most this many prompts in all."),
    quotas: Optional[List[str]] = typer.Option(None, "--quota", help="At most COUNT prompts of a domain, as DOMAIN=COUNT (repeatable), e.g. --quota math=1547."),
    seed: int = typer.Option(D.seed, help="Last tie-breaker, after the base model's and the average accuracy (harder first)."),
    min_support: int = typer.Option(D.min_support, min=1, help="Scored prompts a unit needs to be listed among the units a model lacks."),
    confidence: float = typer.Option(D.confidence, min=0.5, max=0.999, help="Confidence of the Wilson intervals in the report."),
    report_units: int = typer.Option(D.report_units, min=0, help="Weakest units listed per model (and printed)."),
    plots: bool = typer.Option(D.plots, "--plots/--no-plots", help="Write gap_report.png."),
    keep_zero_variance: bool = typer.Option(D.keep_zero_variance, "--keep-zero-variance", help="Also pick groups whose rewards are all equal (skipped by default: no preference for GDPO)."),
    *,
    input: Path, out: Path, config: Optional[Path],  # declared by @stage_folders
) -> None:
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
    options = dict(locals())
    options["quotas"] = parse_quotas(quotas)
    run_verb("filter", input=input, out=out, config_path=config, options=options, summary=summary)


def summary(result) -> list[str]:
    return gap_summary(result.report, result.artifacts["gap_report.json"])


def register(app: typer.Typer) -> None:
    app.command("filter")(filter)
