"""A server in a thread of this process, on a free loopback port: for ``tunelab parity`` and tests.

It is the same app and the same uvicorn as ``tunelab serve``, reached over real HTTP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from tunelab.errors import TunelabError
from tunelab.serve.app import ServerState, build_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_in_thread(state: ServerState, start_seconds: float = 60) -> Iterator[str]:
    """Run ``state``'s app until the block ends; yields its base URL (``http://127.0.0.1:PORT``)."""
    with app_in_thread(build_app(state), start_seconds) as url:
        yield url


@contextmanager
def app_in_thread(app, start_seconds: float = 60) -> Iterator[str]:
    """Run the ASGI ``app`` under uvicorn on a free loopback port until the block ends; yields its base URL."""
    port = free_port()
    # log_config None: uvicorn keeps this process's logging as it is (no handlers bound to today's stderr)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="tunelab-local-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_seconds
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TunelabError("the local server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
