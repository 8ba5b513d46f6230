"""`metakl score`: base-model proficiency per prompt and per knowledge unit (metakl.stages.score)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from metakl.commands._llm_options import LLMGiven, echo_stats, llm_options, verb
from metakl.commands._runner import run_verb, stage_folders
from metakl.stages.score import ScoreConfig as D


@verb
@stage_folders("score", "Stage folder (data.parquet) with prompts; a `units` column (from merge) adds per-unit "
                        "proficiency.", artifacts=("proficiency.json", "agreement.json", "agreement.png"))
@llm_options(model=False)
def score(
    base_models: Optional[List[str]] = typer.Option(
        None, "--base-model", help="A base model to run (repeatable): the name a server serves (with --base-url), an "
                                   "embedded model or an HF folder. Per-model settings: `model_options` in --config."),
    k: int = typer.Option(D.k, "-k", "--k", min=1, help="Samples per prompt and model."),
    temperature: float = typer.Option(D.temperature, min=0.0, max=2.0, help="Sampling temperature."),
    top_p: float = typer.Option(D.top_p, min=0.0, max=1.0, help="Nucleus sampling top_p."),
    max_tokens: int = typer.Option(D.max_tokens, min=1, help="Token limit per answer (a cut answer usually has no final answer: wrong)."),
    seed: Optional[int] = typer.Option(D.seed, help="Sampling seed (part of the request cache key)."),
    responses: Optional[List[Path]] = typer.Option(
        None, "--responses", help="Existing base-model answers: files (.jsonl, .json, .csv) or folders (repeatable); "
                                  "read with --preset or --mapping, one model per file or per record."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Response mapping preset for --responses: mmlu-pro, xstest, qwen25math, generic."),
    mapping: Optional[Path] = typer.Option(None, "--mapping", "-m", help="Your own response mapping YAML for --responses."),
    replace: bool = typer.Option(D.replace, "--replace", help="Drop the proficiency of models not scored in this run (default: keep them; a model scored again is replaced)."),
    min_support: int = typer.Option(D.min_support, min=1, help="Prompts a unit needs on both sides to enter the Pearson agreement."),
    confidence: float = typer.Option(D.confidence, min=0.5, max=0.999, help="Confidence of the Wilson intervals."),
    plots: bool = typer.Option(D.plots, "--plots/--no-plots", help="Write agreement.png."),
    templates_dir: Optional[Path] = typer.Option(None, help="Your own templates folder (score/<domain>.j2)."),
    math_timeout: float = typer.Option(D.math_timeout, min=0.1, help="Seconds per math comparison."),
    workers: Optional[int] = typer.Option(None, min=1, help="Math worker processes (default: available cores)."),
    *,
    input: Path, out: Path, config: Optional[Path],  # declared by @stage_folders
    llm: LLMGiven,
) -> None:
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
    result = run_verb("score", input=input, out=out, config_path=config, options=locals(), llm=llm, summary=summary)
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
