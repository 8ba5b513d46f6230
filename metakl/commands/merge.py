"""`metakl merge`: merge raw skills into knowledge units; write a `units` column and a taxonomy file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import (
    DEFAULT_MODEL,
    BackendOpt,
    BaseUrlOpt,
    CacheDirOpt,
    ConcurrencyOpt,
    ModelOpt,
    NoCacheOpt,
    build_backend,
    echo_stats,
)


def merge(
    input: Path = typer.Argument(..., help="Stage folder (or parquet file) with a `knowledge` column (from annotate)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output stage folder: data.parquet, merge_report.json, taxonomy.json."),
    taxonomy_out: Optional[Path] = typer.Option(
        None, help="Also write the taxonomy here, e.g. annotations/taxonomies/my_run.json."
    ),
    taxonomy: Optional[Path] = typer.Option(
        None, "--taxonomy", help="Existing taxonomy to map skills onto; skills it does not cover form new units."
    ),
    name: Optional[str] = typer.Option(None, help="Taxonomy name (default: the output folder's name)."),
    threshold: float = typer.Option(0.15, min=0.0, max=2.0, help="Cosine distance under which clusters merge (average linkage)."),
    reason_weight: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of the reason in a skill's embedding (0: name only)."),
    embedding_model: str = typer.Option("all-minilm-l6-v2", help="sentence-transformers model: embedded name or folder."),
    embedding_dtype: str = typer.Option("float32", help="float32, or bfloat16 (faster on CPUs with AVX512-BF16)."),
    neighbors: int = typer.Option(30, min=1, help="Nearest neighbours per skill in the graph that bounds merges."),
    seed: int = typer.Option(0, help="Seed recorded with the taxonomy and sent with LLM-merge requests."),
    llm_merge: bool = typer.Option(False, "--llm-merge", help="Step 3: ask an LLM to confirm, split and name each cluster."),
    backend: BackendOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
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
    from metakl.io import load_stage, save_stage
    from metakl.stages.merge import MergeConfig, llm_merger, load_taxonomy, save_taxonomy
    from metakl.stages.merge import merge as run_merge

    ds = load_stage(input)
    previous = load_taxonomy(taxonomy) if taxonomy else None
    config = MergeConfig(
        embedding_model=embedding_model,
        threshold=threshold,
        reason_weight=reason_weight,
        neighbors=neighbors,
        dtype=embedding_dtype,
        seed=seed,
        llm_merge=llm_merge,
    )
    tax_name = name or out.resolve().name
    if llm_merge:
        with build_backend(backend, model, base_url, concurrency, cache_dir, no_cache) as llm:
            ds, tax, summary = run_merge(ds, config, taxonomy=previous, taxonomy_name=tax_name, llm_merge=llm_merger(llm, config, progress=True))
            echo_stats(llm.stats)
        summary["llm_model"] = model
    else:
        ds, tax, summary = run_merge(ds, config, taxonomy=previous, taxonomy_name=tax_name)
    if previous is not None:
        summary["taxonomy_in"] = str(taxonomy)
    save_stage(ds, out, summary, "merge_report.json")
    save_taxonomy(tax, out / "taxonomy.json")
    if taxonomy_out:
        save_taxonomy(tax, taxonomy_out)
    typer.echo(
        f"{summary['mentions']} skill mentions, {summary['skills']} names, {summary['step1_groups']} stem groups "
        f"-> {summary['units']} units ({summary['singleton_units']} with one member) in {summary['seconds']:.1f} s -> {out}"
    )
    typer.echo("largest units: " + ", ".join(f"{u} ({c})" for u, c, _ in summary["largest_units"][:8]))
    if "llm_merge" in summary:
        typer.echo("llm merge: " + ", ".join(f"{k} {v}" for k, v in summary["llm_merge"].items() if k != "template"))


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
