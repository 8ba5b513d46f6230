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

from loopback import LoopbackServer, QuietHandler, fixture_body


def fixture(name: str) -> dict:
    return fixture_body("llm", name)


class ReplayServer(LoopbackServer):
    def __init__(self, answer, *, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.bodies: list[dict] = []
        self.arrivals: list[tuple[float, int]] = []  # (time, in flight including this one)
        self.answered: list[float] = []
        self._in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # /models: serve whatever is asked for
                self.send_body(200, {"object": "list", "data": []})

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
                    self.send_body(status, payload, headers=headers)
                except Exception:
                    with server._lock:
                        server._in_flight -= 1
                    raise

        self._serve_with(Handler)
