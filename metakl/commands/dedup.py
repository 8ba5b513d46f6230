"""`metakl dedup`: mark (or drop) semantic near-duplicate prompts and cluster them (metakl.stages.dedup)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import ConfigOpt, output_options, run_verb
from metakl.schema import domain_mapping, key_values
from metakl.stages.dedup import DedupConfig as D
from metakl.stages.dedup import Keep, Method

SEARCH = "Search options (the defaults work at every size)"


@verb
@output_options()
def dedup(
    input: Path = typer.Argument(..., help="Stage folder (or parquet file) with a `question` column, e.g. from ingest."),
    out: Path = typer.Option(..., "--out", "-o", help="Output stage folder: data.parquet + dedup_report.json."),
    config: ConfigOpt = None,
    epsilon: Optional[float] = typer.Option(None, "--epsilon", "-e", help="Near-duplicates have cosine >= 1 - epsilon, "
                                            "in (0, 1), in every domain. Default per domain: math 0.08, general 0.08, "
                                            "safety 0.14 (docs/dedup_threshold.md: what each value removes). Larger "
                                            "removes more."),
    domain_epsilon: Optional[List[str]] = typer.Option(None, "--domain-epsilon", metavar="DOMAIN=EPSILON",
                                                       help="Epsilon of one domain, over --epsilon; repeatable, e.g. "
                                                            "--domain-epsilon safety=0.12."),
    keep: Keep = typer.Option(D.keep, case_sensitive=False, help="Which twin stays: hard (lower base-model proficiency; "
                              "without that column, the longer question), easy, random (seeded), first (dataset order), "
                              "units (more knowledge units), reward (higher mean teacher reward), proficiency (lower)."),
    across_domains: bool = typer.Option(D.across_domains, "--across-domains", help="Also compare prompts of "
                                        "different domains (default: within each domain)."),
    drop: bool = typer.Option(D.drop, "--drop", help="Write only the kept rows (default: keep every row and mark "
                              "duplicates in `duplicate_of`)."),
    match_numbers: bool = typer.Option(D.match_numbers, "--match-numbers/--any-numbers", help="Near-duplicates must "
                                       "hold the same numbers (problems that differ only in them have other answers)."),
    match_answers: bool = typer.Option(D.match_answers, "--match-answers/--any-answers", help="Near-duplicates must "
                                       "have the same reference answer (option text for a choice letter; refuse or "
                                       "comply for safety); rows without a reference are compared without it."),
    tail_chars: int = typer.Option(D.tail_chars, min=0, help="Two prompts longer than this many characters must also "
                                   "end alike (the question after a shared passage or template); 0 turns this off."),
    embedding_model: str = typer.Option(D.embedding_model, help="sentence-transformers model: embedded name, folder or Hub id."),
    max_seq_length: Optional[int] = typer.Option(D.max_seq_length, min=8, help="Tokens per prompt text (default 128, as "
                                                 "annotate embeds it: a run embeds each prompt once)."),
    batch_size: int = typer.Option(D.batch_size, min=1, help="Texts per model call."),
    seed: int = typer.Option(D.seed, help="Seed of k-means and of --keep random."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="METAKL_CACHE_DIR",
                                             help="Embedding cache folder (default: the user cache). A re-run embeds "
                                                  "nothing it has embedded before."),
    clusters: Optional[int] = typer.Option(D.clusters, min=1, rich_help_panel=SEARCH,
                                           help="k-means clusters (the `cluster` column); default one per --leaf-size rows."),
    leaf_size: int = typer.Option(D.leaf_size, min=2, rich_help_panel=SEARCH, help="Rows per cluster when --clusters is not given."),
    nprobe: int = typer.Option(D.nprobe, min=1, rich_help_panel=SEARCH,
                               help="Clusters each prompt is compared with, its own included (more: slower, fewer missed pairs)."),
    method: Method = typer.Option(D.method, case_sensitive=False, rich_help_panel=SEARCH,
                                  help="exact (every pair), clustered, or auto: exact up to --exact-limit rows per domain."),
    exact_limit: int = typer.Option(D.exact_limit, min=0, rich_help_panel=SEARCH, help="Largest group compared pair by pair."),
) -> None:
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
    options = dict(locals())
    options["domain_epsilon"] = parse_domain_epsilon(domain_epsilon or [])
    run_verb("dedup", input=input, out=out, config_path=config, options=options, summary=format_summary)


def parse_domain_epsilon(items: list[str]) -> dict[str, float]:
    return domain_mapping(key_values(items, "--domain-epsilon", "DOMAIN=EPSILON", "safety=0.1", float), "--domain-epsilon")


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
