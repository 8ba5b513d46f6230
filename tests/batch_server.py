"""A loopback server on the OpenAI Batch API shape, for what cannot run here for real: a provider's /v1/files and
/v1/batches. Its bodies are the fixture files of tests/fixtures/batch (each names the documentation it follows);
a batch's answers are the fixture output row with the request's own text echoed, so a test can tell them apart.

`FakeBatchServer(model, polls=2, fail=None)`: a batch turns `in_progress` at its first status check and `completed`
after `polls` checks, unless `hold` is set (then it stays in progress until `hold` is cleared). `fail(custom_id,
attempt)` → an error fixture name (the row goes to the errors file) or None; `attempt` counts the batches that held
this custom_id (1 for its first); `refuse`: every batch fails validation. It counts everything a test asserts on: `uploads`, `created`, `sent` (custom_id →
how many uploaded input files held it), `status_checks`.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from email.parser import BytesParser
from email.policy import default as email_policy
from urllib.parse import urlparse

from loopback import LoopbackServer, QuietHandler, fixture_body


def fixture(name: str) -> dict:
    return fixture_body("batch", name)


def answer_text(body: dict) -> str:
    """The fake model's answer to a request body: its last message echoed."""
    return f"echo: {body['messages'][-1]['content']}"


class FakeBatchServer(LoopbackServer):
    def __init__(self, model: str = "gpt-4o-mini", *, polls: int = 2, fail=None, refuse: bool = False) -> None:
        self.model = model
        self.polls = polls
        self.fail = fail
        self.refuse = refuse  # every batch fails validation (batch_failed_errors.json)
        self.hold = threading.Event()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.checks: Counter = Counter()  # batch id → status checks
        self.sent: Counter = Counter()  # custom_id → uploaded input files holding it
        self.uploads = 0
        self.created = 0
        self.status_checks = 0
        self._lock = threading.Lock()
        self._templates = {name: fixture(name) for name in ("file.json", "batch.json", "batch_list.json",
                                                           "output_row.json")}
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, payload, content_type: str = "application/json") -> None:
                self.send_body(status, payload, content_type=content_type)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")  # v1, ...
                with server._lock:
                    if parts[1:] == ["models"]:
                        return self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                    if parts[1:] == ["batches"]:
                        page = copy.deepcopy(server._templates["batch_list.json"])
                        page["data"] = [copy.deepcopy(b) for b in reversed(server.batches.values())]
                        return self._send(200, page)
                    if len(parts) == 3 and parts[1] == "batches" and parts[2] in server.batches:
                        return self._send(200, server._advance(parts[2]))
                    if len(parts) == 4 and parts[1] == "files" and parts[3] == "content" and parts[2] in server.files:
                        return self._send(200, server.files[parts[2]], "application/octet-stream")
                self._send(404, {"error": {"message": f"no such resource {url.path}", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                path = urlparse(self.path).path.rstrip("/")
                raw = self._body()
                with server._lock:
                    if path == "/v1/files":
                        return self._send(200, server._upload(self.headers["Content-Type"], raw))
                    if path == "/v1/batches":
                        return self._send(200, server._create(json.loads(raw)))
                self._send(404, {"error": {"message": f"no such endpoint {path}", "type": "invalid_request_error"}})

        self._serve_with(Handler)

    # --- the endpoints (called under the lock) ----------------------------------------------------------------------
    def _upload(self, content_type: str, raw: bytes) -> dict:
        message = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        assert fields["purpose"].get_content().strip() == "batch", "purpose must be batch"
        data = fields["file"].get_payload(decode=True)
        self.uploads += 1
        file_id = f"file-{self.uploads:06d}"
        self.files[file_id] = data
        for line in data.splitlines():
            self.sent[json.loads(line)["custom_id"]] += 1
        entry = copy.deepcopy(self._templates["file.json"])
        entry.update(id=file_id, bytes=len(data), filename=fields["file"].get_filename())
        return entry

    def _create(self, request: dict) -> dict:
        assert request["input_file_id"] in self.files and request["endpoint"] == "/v1/chat/completions"
        self.created += 1
        batch = copy.deepcopy(self._templates["batch.json"])
        batch.update(id=f"batch_{self.created:06d}", input_file_id=request["input_file_id"],
                     metadata=request.get("metadata") or {})
        self.batches[batch["id"]] = batch
        return copy.deepcopy(batch)

    def _advance(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        self.status_checks += 1
        self.checks[batch_id] += 1
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and self.checks[batch_id] >= self.polls and not self.hold.is_set():
            self._finish(batch)
        return copy.deepcopy(batch)

    def _finish(self, batch: dict) -> None:
        if self.refuse:
            batch.update(status="failed", errors=fixture("batch_failed_errors.json"))
            return
        out, err = [], []
        for line in self.files[batch["input_file_id"]].splitlines():
            request = json.loads(line)
            cid = request["custom_id"]
            failure = self.fail(cid, self.sent[cid]) if self.fail else None
            if failure:
                row = fixture(failure)
                row["custom_id"] = cid
                err.append(row)
                continue
            row = copy.deepcopy(self._templates["output_row.json"])
            row["custom_id"] = cid
            body = row["response"]["body"]
            body["model"] = request["body"]["model"]
            body["choices"][0]["message"]["content"] = answer_text(request["body"])
            body["usage"] = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                             "prompt_tokens_details": {"cached_tokens": 4}}
            out.append(row)
        for rows, field in ((out, "output_file_id"), (err, "error_file_id")):
            if rows:
                file_id = f"file-{batch['id']}-{field[:-8]}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[field] = file_id
        batch["status"] = "completed"
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
