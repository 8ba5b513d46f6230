"""Shared fixtures: real embedded models and a real local vLLM server (no stubs)."""

from __future__ import annotations

import os
import subprocess
import threading
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("METAKL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SMOLLM2 = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data (or $METAKL_SHARED_DATA), or skip the test when it is absent.

    Under CI (`CI=true`) a missing shared-data folder fails the test instead: a CI run must not pass by skipping.
    A file missing from a folder that is there still skips: some evaluation splits are held back on purpose
    (see SOURCES.md there).
    """
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if not SHARED_DATA.is_dir() and _under_ci():
            pytest.fail(f"shared data folder not present: {SHARED_DATA} (set METAKL_SHARED_DATA); under CI=true "
                        "this is a failure, not a skip", pytrace=False)
        pytest.skip(f"shared data not present: {path}")
    return path


def foreground() -> None:
    """A Popen preexec_fn: the signal dispositions of a command started from a terminal, whatever this test run
    inherited (`nohup make test &` starts it with SIGINT and SIGHUP ignored)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def run_cli(*args, module: str = "metakl", env: dict[str, str | None] | None = None, timeout: float = 600,
            in_process: bool = False, **popen) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` as a user runs the console script (a user error is one `error:` line and exit 2)
    and return its exit code, stdout and stderr (`.returncode`, `.stdout`, `.stderr`, text).

    The command imports this tree (PYTHONPATH), offline, without progress bars; `env` adds to that environment (a
    value of None removes the variable). MODULE is `metakl`, `metakl.demo` or `gdpo.cli`; ARGS may be paths.
    `in_process=True` (MODULE `metakl` only) runs the console script's own code, `metakl.errors.run_cli` on the app
    with every verb, in this process instead: the same exit code and output without the ~1.5 s of CPU a new
    interpreter costs, for a command that loads no model and sends no request (a user error, a quick stage).
    """
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                "HF_HUB_OFFLINE": "1", "METAKL_PROGRESS": "0"}
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    if in_process:
        assert module == "metakl" and not popen, "in_process runs `metakl` only"
        return _run_metakl_here([str(a) for a in args], full_env)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, **popen)


def _run_metakl_here(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`metakl ARGV` as metakl.cli.main runs it, in this process, with `env` as os.environ and sys.argv, stdout and
    stderr and the signal handlers of this process put back afterwards. Python warnings print to the captured stderr
    under a new interpreter's default filters, as they would in the console script (pytest would record them)."""
    import contextlib
    import io
    import signal
    import warnings

    import datasets

    from metakl.cli import _register_commands, app
    from metakl.errors import run_cli as console

    if not any(c.name == "reward" for c in app.registered_commands):
        _register_commands()
    datasets.disable_progress_bars()  # as metakl.cli.main does
    saved_env, saved_argv = dict(os.environ), sys.argv
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    out, err, code = io.StringIO(), io.StringIO(), 0
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["metakl", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.showwarning = warnings._showwarning_orig  # print, to the redirected sys.stderr
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)  # a new interpreter's default filters
            console(app)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(["metakl", *argv], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli():
    """In-process `metakl` for the tests that look inside a run (`cli.invoke(app, [...], env=...)`, typer's CliRunner;
    a UserError stays in `result.exception`): every verb registered once. `run_cli` is the console-script path."""
    from typer.testing import CliRunner

    from metakl.cli import _register_commands, app

    if not any(c.name == "reward" for c in app.registered_commands):
        _register_commands()
    return CliRunner()


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from metakl.llm.models import resolve_chat_model

    return resolve_chat_model(SMOLLM2)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from metakl.llm.models import resolve_embedding_model

    return resolve_embedding_model("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def vllm_server_url(smollm2_path) -> str:
    """Base URL of a real vLLM server serving SmolLM2 as 'smollm2-135m-instruct'.

    METAKL_TEST_VLLM_URL reuses a server already running (for quick local iterations); otherwise one is started
    for the session and stopped at the end.
    """
    url = os.environ.get("METAKL_TEST_VLLM_URL")
    if url:
        if os.environ.get(_SHARED_SERVER_ENV) == url:
            _wait_until_serving(url)  # started by the xdist controller in the background (pytest_configure)
        yield url
        return
    from metakl.llm.serve import VLLMServer

    with VLLMServer(SMOLLM2) as server:
        yield server.url


class FaultProxy:
    """A loopback HTTP proxy in front of a real OpenAI-compatible server that counts requests and injects faults.

    For each POST it draws once from a seeded RNG: with probability `fault_rate` it answers 429 (with Retry-After),
    500, or stalls for `stall_seconds` (past the client's timeout), in equal shares; otherwise it forwards to the
    upstream server. `log` records (arrival time, path, body digest, status; 0 for a stall) for every request it saw.
    """

    def __init__(self, upstream: str, *, fault_rate: float = 0.0, stall_seconds: float = 6.0,
                 retry_after: float = 1.0, seed: int = 0) -> None:
        import random

        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.fault_rate = fault_rate
        self.stall_seconds = stall_seconds
        self.retry_after = retry_after
        self.rng = random.Random(seed)
        self.log: list[tuple[float, str, str, int]] = []
        self.authorizations: list[str] = []  # the Authorization header of each request
        self.port = 0
        self._loop = None
        self._thread = None
        self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def posts(self, status: int | None = None) -> list[tuple[float, str, str, int]]:
        return [e for e in self.log if e[1].endswith("/chat/completions") and (status is None or e[3] == status)]

    async def _handle(self, request):
        import asyncio
        import hashlib
        import time

        from aiohttp import web

        arrived = time.monotonic()
        body = await request.read()
        self.authorizations.append(request.headers.get("Authorization", ""))
        digest = hashlib.sha256(body).hexdigest()[:16]
        path = request.path
        if request.method == "POST" and self.fault_rate > 0 and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(["429", "500", "stall"])
            if fault == "429":
                self.log.append((arrived, path, digest, 429))
                return web.json_response({"error": {"message": "injected rate limit"}}, status=429,
                                         headers={"Retry-After": str(self.retry_after)})
            if fault == "500":
                self.log.append((arrived, path, digest, 500))
                return web.json_response({"error": {"message": "injected server error"}}, status=500)
            self.log.append((arrived, path, digest, 0))  # 0: stalled
            await asyncio.sleep(self.stall_seconds)
            return web.json_response({"error": {"message": "injected stall"}}, status=504)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        async with self._session.request(request.method, self.upstream + str(request.rel_url), data=body,
                                         headers=headers) as up:
            payload = await up.read()
            self.log.append((arrived, path, digest, up.status))
            return web.Response(body=payload, status=up.status, content_type=up.content_type)

    def start(self) -> "FaultProxy":
        import asyncio
        import threading

        import aiohttp
        from aiohttp import web

        ready = threading.Event()

        async def main():
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, shutdown_timeout=1.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()

        self._loop = asyncio.new_event_loop()

        def run():
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(main())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fault-proxy")
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        import asyncio

        async def shutdown():
            await self._runner.cleanup()
            await self._session.close()
            # Stalled handlers are still sleeping: end them so that the loop stops clean.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


@pytest.fixture
def fault_proxy(vllm_server_url):
    """Factory: `fault_proxy(fault_rate=0.2, ...)` → a started FaultProxy in front of the real vLLM server."""
    proxies: list[FaultProxy] = []

    def make(**kwargs) -> FaultProxy:
        proxy = FaultProxy(vllm_server_url, **kwargs).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


# The fast lane, `make test-fast`, is -m "not slow and not server and not train". A test that uses a fixture below
# (directly or through another fixture) gets its marker here, so that no test file has to repeat it: `server` for
# the fixtures that reach a vLLM server, `train` for the tiny-model folders the GDPO trainer tests train.
FIXTURE_MARKERS = {"vllm_server_url": "server", "fault_proxy": "server",
                   "tiny_dir": "train", "other_tiny_dir": "train", "tiny_dirs": "train", "tiny": "train",
                   "model_dirs": "train"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in {FIXTURE_MARKERS[name] for name in getattr(item, "fixturenames", ()) if name in FIXTURE_MARKERS}:
            item.add_marker(marker)
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_GROUPS_ENV):  # for pytest_xdist_make_scheduler
        import json

        from metakl.io import write_atomic

        groups = {item.nodeid: mark.args[0] for item in items for mark in item.iter_markers("xdist_group")}
        write_atomic(Path(os.environ[_GROUPS_ENV]), json.dumps(groups))


# Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`): the controller starts ONE vLLM server in the
# background before the workers exist and hands them its URL (each worker's session would otherwise start its own,
# ~1 min of both cores); the `vllm_server_url` fixture waits for it to answer. Each worker gets one torch thread: two
# workers on two cores. A worker takes a test file at a time (module fixtures load once), except the tests marked
# xdist_group("own_vllm_engine"): they start vLLM servers or engines of their own (3-4 GiB each), so one worker runs
# them all, one at a time, and two never meet beside the shared server and a training on the other worker.
_SHARED_SERVER_ENV = "METAKL_TEST_SHARED_SERVER"
_GROUPS_ENV = "METAKL_TEST_XDIST_GROUPS"
_shared_server = None


def _xdist_controller(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def _server_failure_file() -> Path | None:
    """Where the controller writes why the shared server failed to start (beside the groups file), so that workers
    stop waiting at once instead of for the whole timeout."""
    groups = os.environ.get(_GROUPS_ENV)
    return Path(groups).parent / "shared_server_failed.txt" if groups else None


def _wait_until_serving(url: str, timeout: float = 900.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    failure = _server_failure_file()
    while True:
        if failure is not None and failure.exists():
            pytest.fail(f"the shared vLLM server at {url} failed to start: {failure.read_text()}", pytrace=False)
        try:
            if SMOLLM2 in [m["id"] for m in httpx.get(f"{url}/models", timeout=5).json()["data"]]:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the shared vLLM server at {url} did not answer within {timeout:.0f} s", pytrace=False)
        time.sleep(1.0)


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own scheduler choice
def pytest_xdist_make_scheduler(config, log):
    """A test file at a time, except the tests marked xdist_group(NAME): one unit per NAME, across files.

    xdist's own loadgroup reads the group from a suffix it adds to each node id, which pytest >= 9 no longer keeps
    (Node.nodeid is read from elsewhere); so the workers write the grouped node ids to a file the controller named
    (pytest_configure) and the scheduler reads it once every worker has collected."""
    import json

    from xdist.scheduler import LoadScopeScheduling

    class FileOrGroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                path = Path(os.environ[_GROUPS_ENV])
                self.groups = json.loads(path.read_text()) if path.exists() else {}
            return self.groups.get(nodeid) or nodeid.split("::", 1)[0]

    return FileOrGroupScheduling(config, log)


def pytest_configure(config):
    global _shared_server
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        return
    if _xdist_controller(config):
        import tempfile

        os.environ[_GROUPS_ENV] = str(Path(tempfile.mkdtemp(prefix="metakl-xdist-")) / "groups.json")
    wants_server = "not server" not in (config.option.markexpr or "")
    if _xdist_controller(config) and wants_server and not os.environ.get("METAKL_TEST_VLLM_URL"):
        from metakl.llm.serve import VLLMServer

        _shared_server = VLLMServer(SMOLLM2).start(wait=False)
        os.environ["METAKL_TEST_VLLM_URL"] = os.environ[_SHARED_SERVER_ENV] = _shared_server.url
        threading.Thread(target=_watch_start, args=(_shared_server, _server_failure_file()), daemon=True).start()


def _watch_start(server, failure: Path) -> None:
    """The controller's watch on the shared server's start-up: if it exits or never answers, say why in `failure`."""
    try:
        server.wait_ready()
    except Exception as exc:  # noqa: BLE001 - any reason is reported to the workers as text
        try:
            failure.write_text(str(exc)[:2000])
        except OSError:  # the session is over and its folder gone
            pass


def pytest_unconfigure(config):
    global _shared_server
    if _shared_server is not None:
        _shared_server.stop()
        _shared_server = None
        for name in ("METAKL_TEST_VLLM_URL", _SHARED_SERVER_ENV):
            os.environ.pop(name, None)
    if _xdist_controller(config) and os.environ.get(_GROUPS_ENV):
        import shutil

        shutil.rmtree(Path(os.environ.pop(_GROUPS_ENV)).parent, ignore_errors=True)
