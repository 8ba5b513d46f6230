"""The top-level `metakl` CLI: every verb is registered, --version works without a command."""

import subprocess
import sys

from metakl import __version__


def _run(*args):
    return subprocess.run([sys.executable, "-m", "metakl", *args], capture_output=True, text=True, timeout=120)


def test_version_needs_no_command():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == __version__


def test_help_lists_every_verb():
    r = _run("--help")
    assert r.returncode == 0
    for verb in ("serve", "ingest", "generate", "import-responses", "reward", "annotate", "merge"):
        assert verb in r.stdout, verb
