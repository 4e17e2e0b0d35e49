"""A real local HTTP server that receives billing webhooks and fails its first N deliveries."""
from __future__ import annotations

import http.server
import json
import threading


class WebhookSink:
    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.attempts = 0
        self.received: list[dict] = []  # records of accepted deliveries, in order
        self.idempotency_keys: list[str] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with sink._lock:
                    sink.attempts += 1
                    fail = sink.attempts <= sink.fail_first
                    if not fail:
                        sink.received.extend(json.loads(body)["records"])
                        sink.idempotency_keys.append(self.headers["Idempotency-Key"])
                self.send_response(503 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/billing"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def ids(self) -> list[str]:
        with self._lock:
            return [r["record_id"] for r in self.received]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
