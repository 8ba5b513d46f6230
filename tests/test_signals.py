"""SIGTERM and SIGHUP stop a CLI command exactly as Ctrl-C does: its cleanup runs (child processes stop), exit 130.
An ignored SIGHUP (nohup) stays ignored. The real `metakl serve` cases are in test_llm_serve.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import foreground
from metakl.signals import Terminated, stop_on_signals

# A CLI run through metakl's run_cli whose command starts a child process and stops it in `finally`, like
# `metakl serve` does with its vLLM server.
APP = r'''
import subprocess, sys, time
from pathlib import Path
import typer
from metakl.errors import run_cli

app = typer.Typer()

@app.command()
def main(marker: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    marker.write_text(f"{child.pid}\n")
    try:
        while True:
            time.sleep(0.1)
    finally:
        child.terminate()
        child.wait()
        marker.write_text(marker.read_text() + "cleaned\n")

run_cli(app)
'''


def _nohup() -> None:
    foreground()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _start(tmp_path: Path, preexec=foreground) -> tuple[subprocess.Popen, Path]:
    script, marker = tmp_path / "app.py", tmp_path / "marker"
    script.write_text(APP)
    proc = subprocess.Popen([sys.executable, str(script), str(marker)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    return proc, marker


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["sigint", "sigterm", "sighup"])
def test_signal_runs_cleanup_and_stops_children(tmp_path, sig):
    proc, marker = _start(tmp_path)
    child = psutil.Process(int(marker.read_text().split()[0]))
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 130
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr
    assert marker.read_text().endswith("cleaned\n")
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_ignored_sighup_stays_ignored(tmp_path):
    """`nohup metakl serve ...` must survive the terminal closing."""
    proc, marker = _start(tmp_path, preexec=_nohup)
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130 and marker.read_text().endswith("cleaned\n")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_on_signals_in_process():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for s in old:
            signal.signal(s, signal.SIG_DFL)
        assert stop_on_signals() == [signal.SIGTERM, signal.SIGHUP]
        assert stop_on_signals() == []  # already ours: not installed twice
        with pytest.raises(Terminated) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == signal.SIGTERM
        assert str(info.value) == "SIGTERM"
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
