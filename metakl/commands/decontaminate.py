"""`metakl decontaminate`: mark (and by default drop) prompts that carry benchmark items (metakl.stages.decontaminate)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import run_verb, stage_folders
from metakl.schema import domain_mapping, key_values
from metakl.stages.decontaminate import DecontaminateConfig as D


@verb
@stage_folders("decontaminate", "Stage folder (or parquet file) with `id`, `domain` and `question` columns.")
def decontaminate(
    benchmarks: Optional[List[str]] = typer.Option(None, "--benchmark", "-b", metavar="SOURCE",
                                                   help="Also check against these items: PRESET=FILE or a Hub id, as "
                                                        "`metakl ingest` takes them (repeatable)."),
    suite: str = typer.Option(D.suite, help="The `gdpo eval` suite whose tasks' items are checked; 'none' for none. "
                                            "Tasks whose data is absent are listed as skipped in the report."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="METAKL_SHARED_DATA",
                                            help="Where the suite's data lives (default: gdpo eval's data root)."),
    ngram: int = typer.Option(D.ngram, min=0, help="Words per n-gram (GPT-3 and NeMo Curator use 13); 0: no n-gram check."),
    normalize: str = typer.Option(D.normalize, help="Words of the n-grams: words (case-folded, punctuation dropped), "
                                                    "casefold, or none (as written)."),
    max_item_count: int = typer.Option(D.max_item_count, min=1, help="An n-gram in more benchmark items than this "
                                                                     "is boilerplate and ignored."),
    max_prompt_share: float = typer.Option(D.max_prompt_share, min=0.0, max=1.0,
                                           help="An n-gram in more than this share of the prompts (at least 10 "
                                                "prompts) is boilerplate too."),
    semantic: bool = typer.Option(D.semantic, "--semantic/--no-semantic", help="Also find reworded items by "
                                  "embedding cosine (cached on disk)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Cosine for a semantic match in every "
                                              "domain (default: math 0.88, general 0.88, safety 0.86)."),
    domain_threshold: Optional[List[str]] = typer.Option(None, "--domain-threshold", metavar="DOMAIN=COSINE",
                                                         help="Cosine of one domain, over --threshold (repeatable)."),
    match_numbers: bool = typer.Option(D.match_numbers, "--match-numbers/--any-numbers",
                                       help="Semantic matches must hold the same numbers."),
    match_answers: bool = typer.Option(D.match_answers, "--match-answers/--any-answers",
                                       help="Semantic matches must have the same reference answer when both have one."),
    answer_leakage: bool = typer.Option(D.answer_leakage, "--answer-leakage/--no-answer-leakage",
                                        help="The same normalised text with the same answer counts, however short."),
    mark_only: bool = typer.Option(D.mark_only, "--mark-only", help="Keep matched rows (marked in `contamination`) "
                                   "instead of dropping them."),
    embedding_model: str = typer.Option(D.embedding_model, help="sentence-transformers model: embedded name, folder or Hub id."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="METAKL_CACHE_DIR",
                                             help="Embedding cache folder (default: the user cache)."),
    *, input: Path, out: Path, config: Optional[Path],
) -> None:
    """Find prompts that carry benchmark items (word n-grams, rewordings, the same short problem with its answer)
    and drop them, so that no release carries what it will be judged on.

    Benchmarks: every task of the `gdpo eval` suite (--suite, default paper) whose data is present, plus each
    --benchmark. `contamination` lists each row's matches (benchmark, item id, kind ngram|semantic|answer, score);
    decontaminate_report.json counts them per benchmark and kind, with example pairs.

    Examples:

      metakl decontaminate runs/x/dedup --out runs/x/decontaminate

      metakl decontaminate runs/x/ingest --out runs/x/decon --suite none --benchmark gsm8k=data/gsm8k/test.jsonl --mark-only
    """
    options = dict(locals())
    options["benchmarks"] = list(benchmarks or [])
    options["domain_threshold"] = domain_mapping(key_values(domain_threshold or [], "--domain-threshold",
                                                            "DOMAIN=COSINE", "math=0.9", float), "--domain-threshold")
    run_verb("decontaminate", input=input, out=out, config_path=config, options=options, summary=format_summary)


def format_summary(result) -> list[str]:
    r = result.report
    lines = [f"{'benchmark':24}  {'items':>6}  {'ngram':>6}  {'semantic':>8}  {'answer':>6}  {'rows':>5}"]
    for name, b in r["benchmarks"].items():
        lines.append(f"{name[:24]:24}  {b['items']:>6}  {b['ngram']:>6}  {b['semantic']:>8}  {b['answer']:>6}  {b['rows']:>5}")
    for s in r["skipped_benchmarks"]:
        lines.append(f"skipped {s['benchmark']}: {s['reason']}")
    lines.append(f"{r['rows_matched']} rows match a benchmark item; "
                 f"{'kept, marked' if r['mark_only'] else 'dropped'}")
    return lines


def register(app: typer.Typer) -> None:
    app.command("decontaminate")(decontaminate)
