"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that records every request and answers
each with the next status of its script (then 200)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # the answers to come, in order; 200 once it is empty
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, n: int, timeout: float = 30) -> list[Received]:
        """The first ``n`` requests, once they have arrived."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= n, timeout), (
                f"{len(self.requests)} of {n} requests arrived"
            )
            return list(self.requests[:n])


@contextmanager
def receiver(statuses: list[int] | None = None, redirect_to: str | None = None) -> Iterator[Receiver]:
    """A receiver at ``http://127.0.0.1:<port>/hook``; ``redirect_to``: answer every request with a 302 there."""
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            r = box[0]
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with r.arrived:
                r.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = r.statuses.pop(0) if r.statuses else 200
                r.arrived.notify_all()
            if redirect_to is not None:
                status = 302
            self.send_response(status)
            if redirect_to is not None:
                self.send_header("location", redirect_to)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook", list(statuses or [])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
