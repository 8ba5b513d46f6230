"""`metakl serve`: starts a real vLLM server, prints its URL, and stops everything cleanly on Ctrl-C (SIGINT)."""

import os
import selectors
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow


def _read_url(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=1.0):
            line = proc.stdout.readline().strip()
            if line.startswith("http://"):
                return line
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"no URL printed; exit code {proc.poll()}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


def test_serve_prints_url_answers_and_stops_cleanly_on_ctrl_c(smollm2_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "metakl", "serve", "smollm2-135m-instruct", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        url = _read_url(proc, timeout=400)
        assert httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] == "smollm2-135m-instruct"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the vLLM server runs as a child process"

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert proc.wait(timeout=90) == 0
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"processes left running: {[p.pid for p in alive]}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/models", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
