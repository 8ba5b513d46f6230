"""Tests that need ../shared/data skip without it, except under CI (`CI=true`), where a missing folder fails them:
a CI run must not pass by skipping."""

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


@pytest.mark.parametrize("ci, outcome", [(None, "1 skipped"), ("true", "1 failed"), ("false", "1 skipped")])
def test_missing_shared_data(tmp_path, ci, outcome):
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(METAKL_SHARED_DATA=str(tmp_path / "nowhere"), PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    if ci is not None:
        env["CI"] = ci
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert outcome in r.stdout, r.stdout
    assert "shared data not present" in r.stdout
    if ci == "true":
        assert "under CI=true this is a failure" in r.stdout
