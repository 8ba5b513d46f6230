"""`metakl publish`: a release folder in Hub layout with a dataset card, optionally pushed to the Hub."""

from __future__ import annotations

from pathlib import Path

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import ConfigOpt, config_options, output_options, run_verb
from metakl.stages.publish import PublishConfig


@verb
@output_options(errors=False)
@config_options(PublishConfig)
def publish(
    input: Path = typer.Argument(..., help="Stage folder to release (the last stage of a run: filter, dedup, merge, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Release folder (README.md, data/<config>/*.parquet, plots/, ...)."),
    config: ConfigOpt = None,
    *,
    settings: dict,  # declared by @config_options: one flag per PublishConfig field
) -> None:
    """Write a release: parquet shards per config (all, math, general, safety, taxonomy, proficiency), plots, and a
    dataset card (YAML header + how it was built + statistics + how to load and train) made with huggingface_hub.

    `datasets.load_dataset(OUT, "all")` reads it back; `gdpo train --data OUT` trains on it.

    Examples:

      metakl publish runs/x/06-merge --out releases/x --name "MetaKL demo" --license cc-by-4.0

      metakl publish runs/x/09-dedup --out releases/x --push-to-hub me/metakl-x --private
    """
    run_verb("publish", input=input, out=out, config_path=config, options=settings, summary=summary)


def summary(result) -> list[str]:
    r = result.report
    configs = ", ".join(f"{n} ({', '.join(f'{s} {k}' for s, k in sp.items())})" for n, sp in r["configs"].items())
    return [f"configs: {configs}", f"{len(r['files'])} files; stage reports described: {', '.join(r['run_reports']) or 'none'}"]


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
