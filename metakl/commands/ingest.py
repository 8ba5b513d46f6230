"""`metakl ingest`: prompts from Hub datasets and local files into one validated dataset (metakl.stages.ingest)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.errors import UserError
from metakl.stages.ingest import IngestConfig


@verb
@stage_folders("ingest", optional=True)
@config_options(IngestConfig)
def ingest(
    list_presets: bool = typer.Option(False, "--list-presets", help="List the presets with their Hub ids and exit."),
    *,
    out: Optional[Path], config: Optional[Path],  # declared by @stage_folders
    settings: dict,
) -> None:
    """Read prompts from Hub datasets or local files (jsonl, json, csv, parquet, folders of them) into the MetaKL schema.

    Every record is mapped by a preset or your mapping YAML, validated (problems name the file and line, or the
    split and row), exact duplicates within and across sources are dropped and counted. Sources may also come from
    the --config file (its `sources` list, entries like gsm8k=data/gsm8k/train.jsonl).

    Examples:

      metakl ingest data/gsm8k/train.jsonl --preset gsm8k --out runs/x/ingest

      metakl ingest gsm8k=data/gsm8k/train.jsonl mmlu-csv=data/mmlu/test xstest=data/xstest/xstest_prompts.csv --sample 500 --seed 1 --out runs/x/ingest

      metakl ingest openai/gsm8k --preset gsm8k --split test --limit 100 --out runs/x/ingest

      metakl ingest my.csv --mapping my_mapping.yaml --on-error skip --out runs/x/ingest
    """
    from metakl.stages.ingest import list_presets as presets, load_preset

    if list_presets:
        for name in presets():
            m = load_preset(name)
            hub = m.hub.get("id", "-")
            typer.echo(f"{name:26} {m.domain:8} {hub:45} {m.description}")
        return
    if out is None:
        raise UserError("--out DIR is required (the folder that will hold data.parquet and ingest_report.json)")
    run_verb("ingest", out=out, config_path=config, options=settings, summary=lambda r: format_table(r.report))


def format_table(report: dict) -> str:
    """Rows per source and domain, duplicates, errors and rows left out by --domain/--sample, as a plain-text table."""
    head = ("source", "input", "records", "kept", "math", "general", "safety", "dup_within", "dup_across", "errors",
            "filtered")
    rows = []
    for st in report["sources"]:
        d = st["domains"]
        local = Path(st["input"])
        rows.append((st["source"], local.name if local.exists() else st["input"], st["records"], st["kept"], d.get("math", 0),
                     d.get("general", 0), d.get("safety", 0), st["duplicates_within"], st["duplicates_across"], st["errors"],
                     st["other_domain"] + st["sampled_out"]))
    t = report["totals"]
    dom = report["domains"]
    rows.append(("total", "", t["records"], t["kept"], dom.get("math", 0), dom.get("general", 0), dom.get("safety", 0),
                 t["duplicates_within"], t["duplicates_across"], t["errors"], t["other_domain"] + t["sampled_out"]))
    cells = [tuple(str(c) for c in r) for r in [head, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    if report["totals"]["errors"]:
        lines.append(f"{report['totals']['errors']} record(s) skipped; first: {report['error_samples'][0]['location']}: "
                     f"field '{report['error_samples'][0]['field']}': expected {report['error_samples'][0]['expected']}, "
                     f"got {report['error_samples'][0]['actual']}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
