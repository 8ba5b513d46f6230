"""`metakl review`: a human audit of annotations and merged units (a review page), and the score of its verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.errors import UserError


def review(
    source: Optional[str] = typer.Argument(None, help="Annotated + merged stage folder (merge or later), its parquet file, a release folder or a Hub dataset id."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for review.html and items.jsonl (written atomically; replaces only a folder metakl wrote, see --overwrite)."),
    n: int = typer.Option(100, "--n", min=1, help="Prompts to sample for review."),
    seed: int = typer.Option(0, help="Seed of the sample (the same source and seed give the same items)."),
    taxonomy: Optional[str] = typer.Option(None, "--taxonomy", help="Taxonomy that maps skills to units (a file, or a shipped name such as seed); default: SOURCE's taxonomy.json or the release's taxonomy config."),
    title: Optional[str] = typer.Option(None, help="The page's title (default: 'Review of SOURCE')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even when it holds files metakl did not write (never an input)."),
    score: Optional[Path] = typer.Option(None, "--score", help="Score this verdicts file (exported from the page) instead of sampling."),
    items: Optional[Path] = typer.Option(None, "--items", help="With --score: the review set's items.jsonl (default: items.jsonl beside the verdicts file)."),
    card: Optional[Path] = typer.Option(None, "--card", help="With --score: write or replace the '## Human audit' section of this dataset card (a release's README.md)."),
) -> None:
    """Audit annotations and merges by hand, as the paper did (92.18% of merged units judged consistent).

    Sampling: N prompts stratified by domain (in proportion, every domain seen) and spread over the knowledge units;
    each item shows the prompt, its skills with their reasons and the unit each was merged into. Open review.html in a
    browser (no server needed), mark each item right or wrong (keys r / w, a note with n), then Export verdicts.

    Scoring: agreement (share of verdicts "right") overall and per domain with 95% Wilson intervals, and the items
    nobody reviewed; --card puts it into the release's dataset card.

    Examples:

      metakl review runs/x/05-merge --n 100 --out review/x

      metakl review --score ~/Downloads/verdicts-1a2b3c.jsonl --items review/x/items.jsonl --card releases/x/README.md
    """
    from metakl import review as rv

    if score is not None:
        if source is not None or out is not None:
            raise UserError("--score: give the verdicts file alone (with --items, --card), not SOURCE or --out")
        items_file = items or score.parent / rv.ITEMS_FILE
        result = rv.score(item_list := rv.read_items(items_file), rv.read_verdicts(score, {i["id"] for i in item_list}))
        for line in rv.format_score(result):
            typer.echo(line)
        if card is not None:
            rv.write_card_section(card, result)
            typer.echo(f"wrote the '{rv.SECTION.removeprefix('## ')}' section of {card}")
        return
    if items is not None or card is not None:
        raise UserError("--items and --card go with --score VERDICTS")
    if source is None or out is None:
        raise UserError("give SOURCE and --out to build a review set, or --score VERDICTS to score one")
    from metakl.io import check_out, write_folder

    check_out(out, inputs=[source if Path(source).exists() else None], overwrite=overwrite)
    rows, unit_of = rv.load_source(source, taxonomy)
    sample = rv.sample_items(rows, unit_of, n, seed)
    if not sample:
        raise UserError(f"{source}: no prompt has annotated skills; nothing to review")
    page = rv.render_page(sample, title or f"Review of {Path(source).name or source}")
    items_text = "".join(rv.json_line(i) for i in sample)
    write_folder(out, {rv.PAGE_FILE: page, rv.ITEMS_FILE: items_text}, overwrite=overwrite)
    counts = {d: sum(1 for i in sample if i["domain"] == d) for d in dict.fromkeys(i["domain"] for i in sample)}
    units = {u for i in sample for u in i["units"]}
    typer.echo(f"{len(sample)} items ({', '.join(f'{d} {c}' for d, c in counts.items())}) covering {len(units)} "
               f"units, from {len(rows)} rows")
    if not unit_of:
        typer.echo(f"note: no taxonomy found for {source}: a skill shows a unit only when it is named like one; "
                   "give --taxonomy (the merge stage's taxonomy.json) to show where each skill was merged")
    typer.echo(f"wrote {out / rv.PAGE_FILE} (open it in a browser) and {out / rv.ITEMS_FILE}")


def register(app: typer.Typer) -> None:
    app.command("review")(review)
