"""`metakl run`: the whole pipeline (or an ordered part of it) from one YAML config (metakl.pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def run(
    config: Path = typer.Argument(..., help="Pipeline YAML: one section per stage (each what that verb's --config holds), plus run_dir, stages, input, llm, serve."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: the config's run_dir)."),
    start: Optional[str] = typer.Option(None, "--from", help="Start at this stage (earlier stages must have finished)."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the plan and print it (stages to run or skip, input rows, model requests, est. cost) and exit; every problem found (an unset ${VAR}, a missing file, a stage's missing input column, an endpoint that does not answer) is listed, one a line, exit 2."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Where split stages run their batches: local (default, this process) or ray (Ray Data; needs `pip install 'metakl\\[ray]'`). Overrides the config's executor:."),
    address: Optional[str] = typer.Option(None, "--address", help="With --executor ray: an existing Ray cluster (HOST:6379, ray://HOST:10001 or auto). Default: start a local Ray with this machine's cores, stopped at the end."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write the run into a folder that holds files metakl did not write, replacing its stage folders (never an input of the run)."),
    max_error_rate: Optional[float] = typer.Option(None, "--max-error-rate", min=0.0, max=1.0, show_default=False, help="Stop with exit code 3 when more than this share of a stage's rows carry its errors (default 0.05, or the config's max_error_rate, top level or per stage); the rows are saved and the stage runs again on resume."),
) -> None:
    """Run ingest → generate → reward → annotate → merge → ... in order into one run folder.

    Every stage writes RUN_DIR/NN-stage/ (data, report, artifacts); RUN_DIR/manifest.json holds the config,
    versions, models, counts, timings and token totals, RUN_DIR/run.log the log. Run it again after an
    interruption: finished stages whose settings and input are unchanged are skipped, a changed setting re-runs
    that stage and the ones after it, and a half-done model stage takes what it already asked from the request cache.

    Examples:

      metakl run pipeline.yaml                       (annotations/demo/pipeline.yaml is the demo's)

      metakl run pipeline.yaml --out runs/try2 --until reward

      metakl run pipeline.yaml --from annotate --dry-run

      metakl run pipeline.yaml --executor ray --address 10.0.0.5:6379
    """
    from metakl.progress import quiet_library_progress, show_progress
    from metakl.errors import UserError
    from metakl.pipeline import dry_run_table, fingerprint_stages, load_plan, plan_problems, run_plan

    options = dict(run_dir=out, start=start, until=until, executor=executor, address=address, overwrite=overwrite,
                   max_error_rate=max_error_rate)
    if dry_run:
        # Every problem at once (unset variables, missing files, columns, endpoints that do not answer), one a line.
        plan, problems = plan_problems(config, **options)
        if plan is not None:
            try:  # the plan as far as it can be read, also when it has problems (a dead endpoint, a missing column)
                fingerprint_stages(plan)
                table = dry_run_table(plan)
            except (UserError, OSError):
                table = []
            for line in table:
                typer.echo(line)
        if len(problems) == 1:
            raise UserError(problems[0])
        if problems:
            raise UserError(f"{config}: {len(problems)} problems before anything runs:\n  " + "\n  ".join(problems))
        return
    plan = load_plan(config, **options)
    if plan.executor.kind == "ray":
        from metakl.executors import require_ray

        require_ray()  # before any stage: one line saying how to install it
    quiet_library_progress()
    run_plan(plan, echo=lambda line: typer.echo(line, err=True), progress=show_progress())
    typer.echo(f"run folder: {plan.run_dir}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
