"""`metakl annotate`: tag every prompt with the knowledge (units or skills + reasons) needed to solve it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import run_verb, stage_folders
from metakl.stages.annotate import AnnotateConfig as D
from metakl.stages.annotate import Annotator

TAXONOMY_PANEL = "Taxonomy (guided, embedding)"


@verb
@stage_folders("annotate", "Stage folder (or parquet file) with id, domain, question, choices.")
@llm_options()
def annotate(
    annotator: Annotator = typer.Option(
        D.annotator, case_sensitive=False,
        help="guided: the model picks units of a taxonomy among the retrieved candidates; embedding: the nearest "
             "units, no model; open: the model names skills freely (a strong teacher building a taxonomy)."),
    taxonomy: Optional[str] = typer.Option(
        None, "--taxonomy", rich_help_panel=TAXONOMY_PANEL,
        help="Taxonomy file (merge's taxonomy.json format) or the name of one in annotations/taxonomies/. "
             "Default: the seed taxonomy (340 hand-written units over math, general reasoning and safety)."),
    candidates: int = typer.Option(D.candidates, min=1, rich_help_panel=TAXONOMY_PANEL,
                                   help="M: units retrieved per prompt and offered to the model (guided)."),
    min_similarity: float = typer.Option(D.min_similarity, min=-1.0, max=1.0, rich_help_panel=TAXONOMY_PANEL,
                                         help="embedding: a unit's cosine similarity to the prompt must reach this."),
    similarity_margin: float = typer.Option(D.similarity_margin, min=0.0, rich_help_panel=TAXONOMY_PANEL,
                                            help="embedding: ... and lie within this of the prompt's best unit."),
    embedding_model: str = typer.Option(D.embedding_model, rich_help_panel=TAXONOMY_PANEL,
                                        help="sentence-transformers model for retrieval: embedded name or folder."),
    max_skills: Optional[int] = typer.Option(
        None, min=1, help="K: at most this many skills or units per prompt. Default: 8 open-set, 3 with a taxonomy."),
    retries: int = typer.Option(D.retries, min=0, help="Extra attempts for an invalid answer, with the error fed back."),
    max_tokens: int = typer.Option(D.max_tokens, min=16, help="Token limit of each answer."),
    temperature: float = typer.Option(D.temperature, min=0.0, help="Sampling temperature of the first attempt."),
    seed: int = typer.Option(D.seed, help="Sampling seed (recorded; with the request cache a re-run is identical)."),
    structured: bool = typer.Option(D.structured, "--structured/--no-structured", help="Ask for JSON-schema structured output."),
    templates_dir: Optional[Path] = typer.Option(
        None, help="Your own templates folder: <dir>/annotate/{math,general,safety,retry,guided,guided_retry}.j2."),
    *,
    input: Path, out: Path, config: Optional[Path],  # declared by @stage_folders
    llm: LLMGiven,
) -> None:
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
    options = dict(locals())
    options["annotator"] = annotator.value
    # The stage says when it needs a model (not for --annotator embedding): no backend is built then.
    run_verb("annotate", input=input, out=out, config_path=config, options=options, llm=llm, summary=summary)


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
