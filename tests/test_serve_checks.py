"""`metakl serve` checks what answers on its port (issue 20 item 11): a port another HTTP server already holds is
refused in one line before anything starts, and a server that answers with our model name but is not our process
is never taken for ours. Fast: no model is loaded (the SIGKILL test with a real server is in test_llm_serve.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from metakl.errors import UserError
from metakl.llm.serve import VLLMServer, check_port_free, free_port

MODEL = "smollm2-135m-instruct"


@pytest.fixture
def impostor(tmp_path):
    """python's http.server on loopback, answering /v1/models with our model's name (a file it serves)."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text(json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_a_taken_port_is_refused_in_one_line_before_anything_starts(impostor):
    """At b795326 this printed the URL: the other server answered /v1/models with 200."""
    with pytest.raises(UserError, match=rf"^port {impostor} on 127.0.0.1 is already in use"):
        check_port_free("127.0.0.1", impostor)
    started = time.monotonic()
    proc = run_cli("serve", MODEL, "--port", impostor, "--startup-timeout", "120", timeout=300)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""  # no URL: nothing was said to be ready
    assert proc.stderr.splitlines() == [f"error: port {impostor} on 127.0.0.1 is already in use (Address already in use): another "
                     "server listens there; choose another --port (0 picks a free one)"], proc.stderr
    assert time.monotonic() - started < 60  # refused before any model loads


def test_an_answer_from_another_process_is_not_our_server(impostor):
    """The port was free when checked, then another server took it while ours was loading: its answer lists our
    model name, but no process of ours listens on the port, so start-up waits and then fails naming it."""
    server = VLLMServer(MODEL, port=impostor, startup_timeout=3)
    server.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        with pytest.raises(UserError, match=rf"did not answer within 3 s, and another server answers on port "
                                            rf"{impostor}; choose another --port"):
            server.wait_ready()
    finally:
        if server.proc is not None:
            server.proc.kill()
    assert server.proc is None  # stopped: the group is gone
