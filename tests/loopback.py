"""What the loopback provider servers share (tests/llm_replay.py: chat completions; tests/batch_server.py: the Batch
API): fixture bodies read without their `_source` note, a quiet JSON handler, and a ThreadingHTTPServer on a free
loopback port that serves in a daemon thread while the `with` block runs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_body(folder: str, name: str) -> dict:
    """tests/fixtures/<folder>/<name> as a response body."""
    body = json.loads((FIXTURES / folder / name).read_text())
    body.pop("_source", None)  # where the body's shape comes from; not part of it
    return body


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def send_body(self, status: int, payload, *, headers: dict | None = None,
                  content_type: str = "application/json") -> None:
        """`payload` (bytes as they are, anything else as JSON) with its length and `headers`."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class LoopbackServer:
    """Serves `handler` (a QuietHandler subclass) on 127.0.0.1 at a free port; `url` is its OpenAI-style base URL."""

    def _serve_with(self, handler: type[QuietHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
