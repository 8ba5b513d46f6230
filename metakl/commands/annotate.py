"""`metakl annotate`: tag every prompt with the knowledge (units or skills + reasons) needed to solve it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.annotate import AnnotateConfig

@verb
@stage_folders("annotate", "Stage folder (or parquet file) with id, domain, question, choices.")
@llm_options()
@config_options(AnnotateConfig)
def annotate(*, input: Path, out: Path, config: Optional[Path], llm: LLMGiven, settings: dict) -> None:
    """Tag each prompt with the knowledge it needs: a `knowledge` column ([{skill, reason}]) and, with a
    taxonomy, a `units` column that merge, score and filter read.

    Three annotators:

    guided (default): the prompt's --candidates most similar units of the taxonomy are retrieved by embedding
    similarity; the model picks 1..K of them with a reason each (structured output whose names are an enum of the
    candidates, so every answer names a real unit). Use it to map prompts into units you already have.

    embedding: no model; the nearest units whose similarity reaches --min-similarity (calibrated on a labelled dev
    set) and lies within --similarity-margin of the best, each with its description as the reason. Fast and
    deterministic; with a small model such as SmolLM2 it is more accurate than guided.

    open: the paper's open-set tagging, {skill_name: reason} with invented names; use it with a strong teacher to
    build a taxonomy, then `metakl merge` turns the skills into units.

    Invalid answers are retried with the validation error; rows that still fail keep their place with an empty
    `knowledge` and an `errors` entry. A taxonomy that does not parse or repeats a unit name is one error before
    any model is asked.

    Examples:

        metakl annotate runs/ingest --out runs/annotate --base-url http://127.0.0.1:8011/v1

        metakl annotate runs/ingest --out runs/annotate --annotator embedding --taxonomy runs/merge/taxonomy.json

        metakl annotate runs/ingest --out runs/annotate --annotator open --base-url http://127.0.0.1:8011/v1 \\
            --model my-teacher --max-skills 4
    """
    # The stage says when it needs a model (not for --annotator embedding): no backend is built then.
    run_verb("annotate", input=input, out=out, config_path=config, options=settings, llm=llm, summary=summary)


def summary(result) -> list[str]:
    s = result.report
    what = "units" if s.get("annotator") != "open" else "skills"
    lines = [
        f"{s.get('annotator', 'open')} annotation: annotated {s['annotated']}/{s['rows_out']} rows; failure rate "
        f"{s['failure_rate']:.1%}" + "".join(f"; {kind}: {v['rows']}" for kind, v in s["failures_by_kind"].items()),
    ]
    if "taxonomy" in s:
        t = s["taxonomy"]
        r = s["retrieval"]
        lines.append(f"taxonomy {t['name']} ({t['units']} units{', ' + t['path'] if t.get('path') else ''}); "
                     f"loading {r['load_seconds']:.1f} s, retrieval {r['prompt_embedding_seconds'] + r['search_seconds'] + r['unit_texts_seconds']:.1f} s, "
                     f"generation {s.get('generation_seconds', 0):.1f} s")
    lines += [
        f"{what} per prompt: " + ", ".join(f"{k}: {v}" for k, v in s["skills_per_prompt"].items()),
        f"most frequent {what}: " + ", ".join(f"{sk} ({c})" for sk, c in s["top_skills"][:10]),
    ]
    return lines


def register(app: typer.Typer) -> None:
    app.command("annotate")(annotate)
