"""`metakl score`: base-model proficiency per prompt and per knowledge unit (metakl.stages.score)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from metakl.commands._llm_options import LLMGiven, echo_stats, llm_options, verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.score import ScoreConfig


@verb
@stage_folders("score", "Stage folder (data.parquet) with prompts; a `units` column (from merge) adds per-unit "
                        "proficiency.", artifacts=("proficiency.json", "agreement.json", "agreement.png"))
@llm_options(model=False)
@config_options(ScoreConfig)
def score(*, input: Path, out: Path, config: Optional[Path], llm: LLMGiven, settings: dict) -> None:
    """Measure how well base models already answer each prompt: accuracy per prompt (`proficiency` column), per
    knowledge unit (average and strict proficiency with Wilson intervals) and the Pearson agreement of unit
    proficiency between models.

    Answers come from running models (k samples per prompt, annotations/templates/score/<domain>.j2) or from files
    of existing answers, and are checked with the reward stage's verifiers (math equivalence, choice letters,
    yes/no, safe behaviour). Several --base-model values share the model options (e.g. one --base-url serving
    several names); per-model settings go in the config file:

    \b
      score:
        base_models:
          - qwen2.5-7b
          - llama3.1-8b
        model_options:
          llama3.1-8b: {base_url: http://127.0.0.1:8001/v1}
      llm: {base_url: http://127.0.0.1:8000/v1}

    Examples:

      metakl score runs/x/merge --out runs/x/score --base-model smollm2-135m-instruct -k 2 --base-url http://127.0.0.1:8011/v1

      metakl score runs/x/merge --out runs/x/score --responses data/mmlu_pro_math_model_outputs --preset mmlu-pro

      metakl score runs/x/merge --out runs/x/score --config score.yaml
    """
    result = run_verb("score", input=input, out=out, config_path=config, options=settings, llm=llm, summary=summary)
    for name, info in result.report["models"].items():
        if info.get("llm"):
            echo_stats(info["llm"], label=name)


def _fmt(x: Any, width: int = 8) -> str:
    return f"{x:>{width}.3f}" if isinstance(x, float) else f"{'-' if x is None else x:>{width}}"


def import_lines(imp: dict) -> list[str]:
    """What the answer files matched: `--responses` here, `metakl import-responses` too."""
    lines = [f"imported: {imp['records']} records, {imp['matched']} matched ({imp['matched_by_id']} by id alone, "
             f"{imp['attached_to_several']} to several rows of one source), {imp['unmatched']} unmatched, "
             f"{imp['ambiguous']} ambiguous (not attached)"]
    if imp["ambiguous_examples"]:
        lines.append(f"first ambiguous: {imp['ambiguous_examples'][0]}; give the mapping a `source` (or an `id`) "
                     "to attach them")
    if imp["unmatched_examples"]:
        lines.append(f"first unmatched: {imp['unmatched_examples'][0]}")
    return lines


def summary(result) -> list[str]:
    r = result.report
    lines = [f"{'model':30} {'source':8} {'prompts':>8} {'samples':>8} {'accuracy':>8} {'math':>8} {'general':>8} {'safety':>8}"]
    for name, m in r["models"].items():
        per = m["accuracy_per_domain"]
        lines.append(f"{name[:30]:30} {m['source']:8} {m['prompts']:>8} {m['samples']:>8} {_fmt(m['accuracy'])} "
                     f"{_fmt(per.get('math'))} {_fmt(per.get('general'))} {_fmt(per.get('safety'))}")
    if "import" in r:
        imp = r["import"]
        lines += import_lines(imp)
    if r["units"]:
        lines.append(f"units: {r['units']} ({r['units_with_support']} with >= {r['config']['min_support']} scored prompts)")
        if r["weakest_units"]:
            lines.append("weakest units (average): " + "; ".join(
                f"{u['unit']} {u['proficiency']:.2f} [{u['ci'][0]:.2f}, {u['ci'][1]:.2f}] n={u['prompts']}"
                for u in r["weakest_units"][:5]))
        a = r["agreement"]
        if a:
            lines.append(f"agreement (Pearson of unit proficiency): between models {_fmt(a['between_models'], 0)}, "
                         f"average vs models {_fmt(a['average_vs_models'], 0)}, strict vs models {_fmt(a['strict_vs_models'], 0)}")
    else:
        lines.append("no `units` column: per-unit proficiency needs `metakl merge` (or guided annotation) first")
    files = [f for f in ("proficiency.json", "agreement.json", "agreement.png") if f in result.artifacts]
    lines.append("wrote " + ", ".join(files) + (f"; {r['plots']}" if r.get("plots") else ""))
    return lines


def register(app: typer.Typer) -> None:
    app.command("score")(score)
