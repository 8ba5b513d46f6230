"""Tests that need ../shared/data skip without it, except under CI (`CI=true`), where a missing shared-data folder
fails them: a CI run must not pass by skipping. A file missing from a folder that exists (held back on purpose) skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PROBE = """
from conftest import shared_data

def test_needs_data():
    assert shared_data("gsm8k", "train.jsonl").exists()
"""


@pytest.mark.parametrize("ci, folder, outcome", [
    (None, False, "1 skipped"), ("true", False, "1 failed"), ("false", False, "1 skipped"),
    ("true", True, "1 skipped"),  # the folder is there, the file is not (held back): skip even under CI
])
def test_missing_shared_data(tmp_path, ci, folder, outcome):
    (tmp_path / "test_probe.py").write_text(PROBE)
    data = tmp_path / "data"
    if folder:
        data.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(METAKL_SHARED_DATA=str(data), PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    if ci is not None:
        env["CI"] = ci
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert outcome in r.stdout, r.stdout
    assert "shared data" in r.stdout and "not present" in r.stdout
    if outcome == "1 failed":
        assert "under CI=true this is a failure" in r.stdout
