"""`metakl` command line: one verb per stage. Each verb parses options, calls its stage and prints a summary."""

from __future__ import annotations


import typer

from metakl.errors import run_cli

app = typer.Typer(
    name="metakl",
    help="Build MetaKL datasets: prompts, teacher responses, rewards, metacognitive knowledge, selection, release.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from metakl import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Build MetaKL datasets: prompts, teacher responses, rewards, metacognitive knowledge, selection, release."""


def _register_commands() -> None:
    # Each verb lives in metakl/commands/<verb>.py and exposes `register(app)`.
    from metakl.commands import ALL

    for module in ALL:
        module.register(app)


def main() -> None:
    import datasets

    datasets.disable_progress_bars()  # parquet writes are quick; the stages show their own progress
    _register_commands()
    run_cli(app)
