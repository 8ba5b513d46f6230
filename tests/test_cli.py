"""The top-level `metakl` CLI: every verb is registered, --version works without a command."""


from conftest import run_cli
from metakl import __version__


def test_version_needs_no_command():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == __version__


def test_help_lists_every_verb():
    r = run_cli("--help")
    assert r.returncode == 0
    for verb in ("serve", "ingest", "generate", "import-responses", "reward", "annotate", "merge"):
        assert verb in r.stdout, verb


def test_stage_verbs_share_their_folder_options():
    """INPUT, --out and --config come from one declaration (commands._runner.stage_folders) in every stage verb."""
    import typer.main

    from metakl.cli import _register_commands, app
    from metakl.io import report_file

    _register_commands()
    commands = typer.main.get_command(app).commands
    for name in ("ingest", "generate", "import-responses", "reward", "annotate", "merge"):
        params = {p.name: p for p in commands[name].params}
        assert params["out"].opts == ["--out", "-o"] and report_file(name) in params["out"].help, name
        assert params["config"].opts == ["--config", "-c"], name
        assert ("input" in params) == (name != "ingest"), name  # ingest reads its SOURCES instead
    assert "taxonomy.json" in {p.name: p for p in commands["merge"].params}["out"].help
