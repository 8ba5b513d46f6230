"""A loopback HTTP server that answers chat completions with recorded bodies, for what cannot run here for real
(a provider's reasoning model, its refusals, its rate-limit headers). It complements the real-server tests.

`ReplayServer(answer)`: `answer(n, body)` → (status, headers, response body) for the n-th POST (0-based) with request
body `body`; `delay` seconds per answer. It records every request body, its arrival time, the requests in flight at
its arrival and when each answer left.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "llm"


def fixture(name: str) -> dict:
    body = json.loads((FIXTURES / name).read_text())
    body.pop("_source", None)  # where the body's shape comes from; not part of it
    return body


class ReplayServer:
    def __init__(self, answer, *, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.bodies: list[dict] = []
        self.arrivals: list[tuple[float, int]] = []  # (time, in flight including this one)
        self.answered: list[float] = []
        self._in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, headers: dict, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # /models: serve whatever is asked for
                self._send(200, {}, {"object": "list", "data": []})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    n = len(server.bodies)
                    server.bodies.append(body)
                    server._in_flight += 1
                    server.arrivals.append((time.monotonic(), server._in_flight))
                try:
                    status, headers, payload = server.answer(n, body)
                    if server.delay:
                        time.sleep(server.delay)
                    with server._lock:
                        server._in_flight -= 1
                        server.answered.append(time.monotonic())
                    self._send(status, headers, payload)
                except Exception:
                    with server._lock:
                        server._in_flight -= 1
                    raise

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "ReplayServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
