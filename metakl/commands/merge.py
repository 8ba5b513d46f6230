"""`metakl merge`: merge raw skills into knowledge units; write a `units` column and a taxonomy file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.merge import MergeConfig


@verb
@stage_folders("merge", "Stage folder (or parquet file) with a `knowledge` column (from annotate).",
               artifacts=("taxonomy.json",))
@llm_options(model_help="Model for --llm-merge: embedded name, HF folder, or the name an openai server serves.")
@config_options(MergeConfig)
def merge(
    taxonomy_out: Optional[Path] = typer.Option(  # where to copy the result: no setting of the stage
        None, help="Also write the taxonomy here, e.g. annotations/taxonomies/my_run.json."),
    *,
    input: Path, out: Path, config: Optional[Path],  # declared by @stage_folders
    llm: LLMGiven, settings: dict,
) -> None:
    """Merge the annotated skills into knowledge units and write a `units` column plus a taxonomy.

    Step 1 merges names with the same word stems, step 2 clusters the embeddings of the names (average linkage,
    cosine distance <= --threshold), step 3 (--llm-merge) lets an LLM confirm or split each cluster and name it;
    an invalid LLM answer keeps step 2's cluster. A unit is named by its most frequent member. With --taxonomy,
    known skills keep their unit and new ones join the closest unit or form new units.

    Examples:

        metakl merge runs/annotate --out runs/merge --taxonomy-out annotations/taxonomies/demo.json

        metakl merge runs/annotate2 --out runs/merge2 --taxonomy annotations/taxonomies/demo.json

        metakl merge runs/annotate --out runs/merge --llm-merge --base-url http://127.0.0.1:8011/v1
    """
    from metakl.stages.merge import TAXONOMY_FILE, save_taxonomy

    result = run_verb("merge", input=input, out=out, config_path=config, options=settings, llm=llm, summary=summary,
                      defaults={"name": out.resolve().name})  # the taxonomy is named after its folder
    if taxonomy_out:
        save_taxonomy(result.artifacts[TAXONOMY_FILE], taxonomy_out)
        typer.echo(f"wrote {taxonomy_out}")


def summary(result) -> list[str]:
    s = result.report
    lines = [
        f"{s['mentions']} skill mentions, {s['skills']} names, {s['step1_groups']} stem groups -> {s['units']} units "
        f"({s['singleton_units']} with one member)",
        "largest units: " + ", ".join(f"{u} ({c})" for u, c, _ in s["largest_units"][:8]),
    ]
    if "llm_merge" in s:
        lines.append("llm merge: " + ", ".join(f"{k} {v}" for k, v in s["llm_merge"].items() if k != "template"))
    return lines


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
