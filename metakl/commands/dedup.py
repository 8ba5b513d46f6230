"""`metakl dedup`: mark (or drop) semantic near-duplicate prompts and cluster them (metakl.stages.dedup)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.dedup import DedupConfig


@verb
@stage_folders("dedup", "Stage folder (or parquet file) with a `question` column, e.g. from ingest.")
@config_options(DedupConfig)
def dedup(*, input: Path, out: Path, config: Optional[Path], settings: dict) -> None:
    """Find prompts that say the same thing in other words, keep one of each set and mark the rest.

    Each prompt (question plus options) is embedded (cached on disk), and two prompts are near-duplicates when the
    cosine of their embeddings is at least 1 - epsilon. Rows are visited from the most to the least wanted (--keep);
    a row close to a row already kept becomes a duplicate of it: `duplicate_of` holds that row's id ("" for a kept
    row), so A~B and B~C with A kept removes B but keeps C when C is not close to A. Up to --exact-limit rows per
    domain every pair is compared; above, spherical k-means splits the rows into clusters of about --leaf-size and
    each row is compared exactly with the rows of its --nprobe nearest clusters. Three guards keep apart what the
    embedding confuses: near-duplicates must hold the same numbers and have the same reference answer, and two long
    prompts must also end alike (the question after a shared passage). The `cluster` column holds the row's k-means cluster. dedup_report.json lists
    removals per source and per domain with example pairs and their cosine.

    Examples:

      metakl dedup runs/x/ingest --out runs/x/dedup

      metakl dedup runs/x/merge --out runs/x/dedup --keep units --drop

      metakl dedup runs/x/ingest --out runs/x/dedup --epsilon 0.05 --across-domains --config dedup.yaml
    """
    run_verb("dedup", input=input, out=out, config_path=config, options=settings, summary=format_summary)


def format_summary(result) -> list[str]:
    r = result.report
    lines = [f"{'domain':10}  {'epsilon':>7}  {'rows':>7}  {'removed':>7}  {'share':>6}"]
    for name, e in r["by_domain"].items():
        eps = r["epsilon"].get(name, "-")
        lines.append(f"{name:10}  {eps:>7}  {e['rows']:>7}  {e['removed']:>7}  {e['share_removed']:>6.1%}")
    top = sorted(r["by_source"].items(), key=lambda kv: -kv[1]["removed"])[:6]
    if r["removed"]:
        lines.append("most removed: " + ", ".join(f"{s} {e['removed']}" for s, e in top if e["removed"]))
    emb = r["embedding"]
    encoded = f"{emb['encoded']} embedded, {emb['cache_hits']} from the cache, " if "encoded" in emb else ""
    lines.append(f"keep {r['keep']}: {r['keep_by']}; "
                 f"{r['removed']} near-duplicates {'dropped' if r['dropped'] else 'marked'}; "
                 f"{r['clusters']['count']} clusters; {encoded}{r['seconds_embed']:.1f} s embedding, "
                 f"{r['seconds_search']:.1f} s search")
    return lines


def register(app: typer.Typer) -> None:
    app.command("dedup")(dedup)
