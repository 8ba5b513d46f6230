"""`metakl serve`: starts a real vLLM server, prints its URL, and stops everything cleanly on Ctrl-C (SIGINT), SIGTERM
and SIGHUP, during start-up too; if the wrapper itself is killed (SIGKILL), the server still goes (parent-death signal).
After each: no child process left and the port free. tests/test_serve_checks.py: the port checks, without a model."""

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from conftest import foreground
from metakl.llm.serve import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("own_vllm_engine")]


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


# Start-up is a liveness condition here, not a speed test: a loaded machine may need many minutes.
STARTUP_TIMEOUT = 900


def _serve(port: int) -> subprocess.Popen:
    # preexec: the signal dispositions of a command started from a terminal (a test run started in the background
    # inherits SIGINT and SIGHUP ignored).
    return subprocess.Popen(
        [sys.executable, "-m", "metakl", "serve", "smollm2-135m-instruct", "--port", str(port),
         "--startup-timeout", str(STARTUP_TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=foreground,
    )


def _port_free(port: int) -> bool:
    """Nothing listens on the port: a new server (which sets SO_REUSEADDR, as vLLM does) can bind it; connections
    the killed server left in TIME_WAIT do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _assert_all_gone(children: list[psutil.Process], port: int, timeout: float = 60) -> None:
    gone, alive = psutil.wait_procs(children, timeout=timeout)
    assert alive == [], f"processes left running: {[(p.pid, p.name()) for p in alive]}"
    deadline = time.monotonic() + 10
    while not _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _port_free(port), f"port {port} is still taken"


def test_serve_prints_url_answers_and_stops_cleanly_on_sigterm(smollm2_path):
    """`kill PID` on a running `metakl serve` (one full start; Ctrl-C after start-up runs the same code: the signal
    becomes the same KeyboardInterrupt, see test_signals.py)."""
    sig = signal.SIGTERM
    port = free_port()
    proc = _serve(port)
    try:
        url = _read_url(proc, timeout=STARTUP_TIMEOUT + 60)
        assert url == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] == "smollm2-135m-instruct"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, "the vLLM server and its engine run as child processes"

        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 0
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr and "stopping" in stderr
        _assert_all_gone(children, port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/models", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()


def _children_once_started(proc: subprocess.Popen, settle: float = 5.0) -> list[psutil.Process]:
    """The wrapper's children once the server process exists (and has had `settle` s to get going)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        children = psutil.Process(proc.pid).children(recursive=True)
        if children:
            time.sleep(settle)
            return psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.2)
    raise AssertionError(f"the server never started; exit code {proc.poll()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "sighup"])
def test_signal_during_startup_stops_the_server(smollm2_path, sig):
    """Ctrl-C, or the terminal closing (SIGHUP), while the server is still loading."""
    port = free_port()
    proc = _serve(port)
    try:
        children = _children_once_started(proc)
        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 130  # as Ctrl-C
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr
        _assert_all_gone(children, port)
    finally:
        if proc.poll() is None:
            proc.kill()


def _generate_in_background(url: str, n: int) -> threading.Event:
    """`n` long streamed completions in flight (as a `metakl generate` run leaves them); set once tokens flow."""
    flowing = threading.Event()

    def one() -> None:
        body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Write a long story."}],
                "max_tokens": 1500, "min_tokens": 1500, "stream": True}
        try:
            with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=600) as r:
                for _ in r.iter_lines():
                    flowing.set()
        except httpx.HTTPError:
            pass  # the server is killed under it

    for _ in range(n):
        threading.Thread(target=one, daemon=True).start()
    return flowing


def test_killed_wrapper_takes_the_server_down(smollm2_path):
    """SIGKILL of a serving `metakl serve` while requests are in flight: no cleanup can run in it; the kernel's
    parent-death signal reaches the group's supervisor, which stops every process of the server within seconds.
    At b795326 the server got SIGTERM and shut down gracefully, waiting for the requests (minutes on a CPU)."""
    port = free_port()
    proc = _serve(port)
    try:
        url = _read_url(proc, timeout=STARTUP_TIMEOUT + 60)
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        assert _generate_in_background(url, 4).wait(timeout=300), "no tokens streamed"
        children = psutil.Process(proc.pid).children(recursive=True)
        # the API server itself (not a supervisor `python -c ...` whose arguments name it) and its engine
        api = [p for p in children if "vllm.entrypoints.openai.api_server" in p.cmdline() and p.cmdline()[1] != "-c"]
        assert len(api) == 1 and len(children) >= 2, [p.cmdline()[:4] for p in children]
        killed = time.monotonic()
        proc.kill()
        proc.wait(timeout=30)
        _assert_all_gone(children, port, timeout=15)
        print(f"\nall {len(children)} server processes gone {time.monotonic() - killed:.1f} s after SIGKILL")
    finally:
        if proc.poll() is None:
            proc.kill()
