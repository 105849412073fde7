"""Clients that misbehave on the wire leave the server up: a body trickled in byte by byte, a body abandoned
half-sent, a chunked body past the limit (no Content-Length to refuse it by), oversized headers, and a
client that hangs up before its answer. ``test_server.py`` covers the rest (a declared oversized body, a
client gone mid-stream, a flood on a small queue)."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

from tests.serve.servers import running_server

LIMIT = 64 << 10


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def head(path: str, key: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Authorization: Bearer {key}", "Content-Type: application/json",
             *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(sock: socket.socket) -> int | None:
    """The status of the answer on ``sock``, or None when the server closed without one."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_slow_abandoned_and_oversized_requests_leave_the_server_up(tiny_model_dir):
    with running_server(tiny_model_dir, max_body_bytes=LIMIT) as running:
        base = running.state.pool.base_name
        key = running.keys["inference"]
        client = running.http("inference")
        request = {"model": base, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        body = json.dumps(request).encode()

        def still_serving() -> None:
            assert running.http(None).get("/health").status_code == 200
            started = time.monotonic()
            assert client.post("/v1/chat/completions", json=request).status_code == 200
            assert time.monotonic() - started < 10

        # a body trickled in over ~2 s: the others are served meanwhile, and it is answered once complete
        slow = connect(running.url)
        slow.sendall(head("/v1/chat/completions", key, Content_Length=str(len(body))))
        served_meanwhile = []
        thread = threading.Thread(target=lambda: served_meanwhile.append(still_serving() is None))
        for i, byte in enumerate(body):
            slow.sendall(bytes([byte]))
            if i == 5:
                thread.start()
            time.sleep(2 / len(body))
        thread.join(timeout=30)
        assert served_meanwhile == [True]
        assert status_of(slow) == 200
        slow.close()

        # a body abandoned half-sent, and a request hung up on before its answer
        for cut in (body[:10], body):
            gone = connect(running.url)
            gone.sendall(head("/v1/chat/completions", key, Content_Length=str(len(body))) + cut)
            gone.close()
        still_serving()

        # a chunked body past the limit: refused with 413 while it streams in
        chunked = connect(running.url)
        chunked.sendall(head("/v1/chat/completions", key, Transfer_Encoding="chunked"))
        chunk = b"x" * 8192
        try:
            for _ in range(2 * LIMIT // len(chunk)):
                chunked.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent
        assert status_of(chunked) == 413
        chunked.close()

        # headers far past any sane size: refused or cut off, never a crash
        huge = connect(running.url)
        huge.sendall(head("/v1/models", key, X_Padding="y" * (256 << 10)))
        status = status_of(huge)
        assert status is None or 400 <= status < 500
        huge.close()

        engine = running.state.engine
        deadline = time.monotonic() + 30
        while (engine.running or engine.queue_depth) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.running == 0 and engine.queue_depth == 0  # nothing left generating for the departed
        still_serving()
