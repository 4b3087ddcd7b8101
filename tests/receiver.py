"""A real HTTP receiver on 127.0.0.1 that records what it is sent: where alerts go in tests.

with Receiver() as hook:                      # http://127.0.0.1:<port>/hook
    ... STOCKPIPE_ALERT_WEBHOOK_URL=hook.url ...
    message = hook.wait_for(lambda m: m.json.get("event") == "batch-refused", timeout=60)
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: dt.datetime

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return {}


class Receiver:
    def __init__(self, status: int = 200, path: str = "/hook"):
        self.status = status
        self.path = path
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.messages.append(Received(self.path, dict(self.headers), body, dt.datetime.now(dt.UTC)))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self, match: Callable[[Received], bool] = lambda m: True) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if match(m)]

    def wait_for(self, match: Callable[[Received], bool], timeout: float) -> Received:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(match)
            if found:
                return found[0]
            time.sleep(0.2)
        got = [m.body[:200] for m in self.messages]
        raise AssertionError(f"nothing matching arrived within {timeout} s; got {got}")
