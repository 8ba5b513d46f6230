"""`metakl merge`: merge raw skills into knowledge units; write a `units` column and a taxonomy file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import run_verb, stage_folders
from metakl.stages.merge import MergeConfig as D


class EmbeddingDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@verb
@stage_folders("merge", "Stage folder (or parquet file) with a `knowledge` column (from annotate).",
               artifacts=("taxonomy.json",))
@llm_options(model_help="Model for --llm-merge: embedded name, HF folder, or the name an openai server serves.")
def merge(
    taxonomy_out: Optional[Path] = typer.Option(None, help="Also write the taxonomy here, e.g. annotations/taxonomies/my_run.json."),
    taxonomy: Optional[Path] = typer.Option(None, "--taxonomy", help="Existing taxonomy to map skills onto (a file, or a shipped name such as seed); skills it does not cover form new units."),
    name: Optional[str] = typer.Option(None, help="Taxonomy name (default: the output folder's name)."),
    threshold: float = typer.Option(D.threshold, min=0.0, max=2.0, help="Cosine distance under which clusters merge (average linkage)."),
    reason_weight: float = typer.Option(D.reason_weight, min=0.0, max=1.0, help="Share of the reason in a skill's embedding (0: name only)."),
    embedding_model: str = typer.Option(D.embedding_model, help="sentence-transformers model: embedded name or folder."),
    embedding_dtype: EmbeddingDtype = typer.Option(D.embedding_dtype, case_sensitive=False, help="Embedding weights; bfloat16 is faster on CPUs with AVX512-BF16/AMX."),
    neighbors: int = typer.Option(D.neighbors, min=1, help="Nearest neighbours per skill in the graph that bounds merges."),
    seed: int = typer.Option(D.seed, help="Seed recorded with the taxonomy and sent with LLM-merge requests."),
    llm_merge: bool = typer.Option(D.llm_merge, "--llm-merge", help="Step 3: ask an LLM to confirm, split and name each cluster."),
    *,
    input: Path, out: Path, config: Optional[Path],  # declared by @stage_folders
    llm: LLMGiven,
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

    options = dict(locals())
    options["embedding_dtype"] = embedding_dtype.value
    result = run_verb("merge", input=input, out=out, config_path=config, options=options, llm=llm, summary=summary,
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
