"""`metakl publish`: a release folder in Hub layout with a dataset card, optionally pushed to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import verb
from metakl.commands._runner import ConfigOpt, output_options, run_verb
from metakl.stages.publish import PublishConfig as D


@verb
@output_options(errors=False)
def publish(
    input: Path = typer.Argument(..., help="Stage folder to release (the last stage of a run: filter, dedup, merge, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Release folder (README.md, data/<config>/*.parquet, plots/, ...)."),
    config: ConfigOpt = None,
    name: str = typer.Option(D.name, help="The dataset card's title."),
    license: str = typer.Option(D.license, help="License of the release (e.g. cc-by-4.0); each source keeps its own."),
    test_size: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Share of each config's rows in a `test` split (default: train only)."),
    seed: int = typer.Option(D.seed, help="Seed of the train/test split."),
    run_dir: Optional[Path] = typer.Option(None, help="The `metakl run` folder the input is a stage of (default: the input's parent); the card describes the stages that led to the input, no other folder."),
    repo_id: Optional[str] = typer.Option(None, help="Repo shown in the card's loading example (default: --push-to-hub's)."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Upload to this Hub dataset repo (owner/name) in one commit; token from HF_TOKEN or `hf auth login`."),
    private: bool = typer.Option(D.private, "--private", help="Create the repo private."),
    revision: Optional[str] = typer.Option(None, help="Branch to push to (created if missing)."),
    commit_message: Optional[str] = typer.Option(None, help="Commit message of the upload."),
) -> None:
    """Write a release: parquet shards per config (all, math, general, safety, taxonomy, proficiency), plots, and a
    dataset card (YAML header + how it was built + statistics + how to load and train) made with huggingface_hub.

    `datasets.load_dataset(OUT, "all")` reads it back; `gdpo train --data OUT` trains on it.

    Examples:

      metakl publish runs/x/06-merge --out releases/x --name "MetaKL demo" --license cc-by-4.0

      metakl publish runs/x/09-dedup --out releases/x --push-to-hub me/metakl-x --private
    """
    run_verb("publish", input=input, out=out, config_path=config, options=locals(), summary=summary)


def summary(result) -> list[str]:
    r = result.report
    configs = ", ".join(f"{n} ({', '.join(f'{s} {k}' for s, k in sp.items())})" for n, sp in r["configs"].items())
    return [f"configs: {configs}", f"{len(r['files'])} files; stage reports described: {', '.join(r['run_reports']) or 'none'}"]


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
