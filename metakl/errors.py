"""Errors a user can cause. The CLIs print them as one line and exit non-zero, without a traceback."""


class UserError(Exception):
    """Bad input, bad config, a missing model or package: something the user can fix.

    The message must say what was wrong and what was expected (file, line, field where known).
    """

    exit_code = 2


def run_cli(app) -> None:
    """Run a Typer app: a UserError becomes one red `error:` line and its exit code, Ctrl-C exits 130.

    SIGTERM and SIGHUP stop the command as Ctrl-C does: cleanup runs, child servers stop (`metakl.signals`), exit 130
    (Typer turns a KeyboardInterrupt inside a command into exit 130 itself).
    """
    import sys

    import typer

    from metakl.signals import Terminated, stop_on_signals

    stop_on_signals()
    try:
        app()
    except UserError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        typer.secho(f"stopped by {exc}" if isinstance(exc, Terminated) else "interrupted", err=True)
        sys.exit(130)
