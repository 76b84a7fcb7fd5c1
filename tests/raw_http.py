"""HTTP/1.1 over a raw socket that reads the answer while it is still sending the body, as a careful client does.

httpx, like most clients, sends the whole body before it reads a byte of the answer, so it cannot tell a server that
answers at once from one that reads everything first. ``send`` can: it stops sending as soon as the answer starts,
and says how much of the body went out before it (the socket buffers between the two hold a few MiB at most).
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


@dataclass
class Answer:
    status: int  # 0: the server closed the connection without an answer
    seconds: float  # from the first byte sent to the status line
    sent: int  # body bytes sent before the status line came
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) once the head and the body its Content-Length announces are in ``raw``."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if len(body) < int(headers.get("content-length", "0")):
        return None
    return int(lines[0].split(" ", 2)[1]), headers, body


def send(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Iterable[bytes],
    *,
    chunked: bool = False,
    timeout: float = 120,
) -> Answer:
    """Send a request to 127.0.0.1:port, with ``Transfer-Encoding: chunked`` if asked (else the headers should
    carry the Content-Length), reading all along; the answer, and how much of the body went out before it."""
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if chunked:
        lines.append("transfer-encoding: chunked")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    chunks: Iterator[bytes] = iter(_chunked(body) if chunked else body)
    s = socket.create_connection(("127.0.0.1", port))
    start, sent, got = time.monotonic(), 0, b""
    s.sendall(head)
    s.setblocking(False)
    seconds: float | None = None
    pending, writing = memoryview(b""), True
    try:
        while time.monotonic() - start < timeout:
            readable, writable, _ = select.select([s], [s] if writing else [], [], 1)
            if readable:
                try:
                    data = s.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                if seconds is None and data:
                    seconds, writing = time.monotonic() - start, False  # the answer has begun: stop sending
                got += data
                parsed = _parse(got)
                if parsed is not None or not data:
                    break
            elif writable:
                if not pending:
                    nxt = next(chunks, None)
                    if nxt is None:
                        writing = False
                        continue
                    pending = memoryview(nxt)
                try:
                    n = s.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    writing = False
                    continue
                sent += n
                pending = pending[n:]
    finally:
        s.close()
    parsed = _parse(got)
    if parsed is None:
        return Answer(0, time.monotonic() - start, sent)
    status, response_headers, response_body = parsed
    return Answer(status, seconds or 0.0, sent, response_headers, response_body)


def _chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    for p in parts:
        if p:
            yield b"%x\r\n" % len(p) + p + b"\r\n"
    yield b"0\r\n\r\n"


def filler(total: int, block: bytes = b"0," * (MiB // 2)) -> Iterator[bytes]:
    """``total`` bytes in blocks (by default ``0,0,...``: the inside of a JSON array)."""
    left = total
    while left > 0:
        n = min(len(block), left)
        left -= n
        yield block[:n]


def multipart(file_field: str, **fields: str) -> tuple[str, bytes, bytes]:
    """A multipart form of ``fields`` and a file in ``file_field``: (its content type, the bytes before the file's
    data, the bytes after it). The body is those around the data."""
    boundary = "rawhttpboundary"
    before = "".join(
        f'--{boundary}\r\ncontent-disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
    )
    before += f'--{boundary}\r\ncontent-disposition: form-data; name="{file_field}"; filename="t.jsonl"\r\n\r\n'
    return f"multipart/form-data; boundary={boundary}", before.encode(), f"\r\n--{boundary}--\r\n".encode()
