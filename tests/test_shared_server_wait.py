"""The test harness's shared vLLM server (tests/conftest.py): a failed start reaches the workers at once.

Under xdist the controller starts one server in the background and the workers wait for it to answer. Before, a server
that died during start-up left every worker waiting its whole 900 s timeout in each test that needs the server."""

import pytest

import conftest
from metakl.errors import UserError


class _DeadServer:
    """Stands in for a VLLMServer whose process exited during start-up (what wait_ready raises then)."""

    def wait_ready(self) -> None:
        raise UserError("vLLM server exited with code 1 during start-up; last log lines:\nout of memory")


def test_the_controller_writes_why_the_shared_server_did_not_start(tmp_path):
    failure = tmp_path / "shared_server_failed.txt"
    conftest._watch_start(_DeadServer(), failure)
    assert failure.read_text().startswith("vLLM server exited with code 1 during start-up")
    assert "out of memory" in failure.read_text()


def test_a_worker_stops_waiting_once_the_controller_reports_a_failed_start(tmp_path, monkeypatch):
    monkeypatch.setenv(conftest._GROUPS_ENV, str(tmp_path / "groups.json"))
    (tmp_path / "shared_server_failed.txt").write_text("vLLM server exited with code 1 during start-up")
    # nothing listens on port 9: without the report this would poll for the whole timeout
    with pytest.raises(pytest.fail.Exception, match="failed to start: vLLM server exited with code 1"):
        conftest._wait_until_serving("http://127.0.0.1:9/v1", timeout=900.0)


def test_without_a_report_the_wait_ends_at_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv(conftest._GROUPS_ENV, str(tmp_path / "groups.json"))
    with pytest.raises(pytest.fail.Exception, match="did not answer within 0 s"):
        conftest._wait_until_serving("http://127.0.0.1:9/v1", timeout=0.0)
