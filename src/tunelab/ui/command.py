"""``tunelab ui``: the dashboard in its own process, on 127.0.0.1 unless told otherwise.

It needs no model: it reads the registry and the run folders, starts training runs as ``tunelab
train`` processes, and sends the playground's prompts to a running ``tunelab serve`` (``--server``).
``tunelab serve --ui`` puts the same pages on the API server instead.
"""

from __future__ import annotations

import sys

import uvicorn

from tunelab.serve.app import is_loopback
from tunelab.serve.command import check_tls
from tunelab.ui.app import UiSettings, build_ui_app


def run_dashboard(settings: UiSettings, host: str = "127.0.0.1", port: int = 8080, ssl_certfile: str | None = None,
                  ssl_keyfile: str | None = None) -> None:
    check_tls(ssl_certfile, ssl_keyfile)
    settings.secure_cookies = bool(ssl_certfile)
    if not ssl_certfile and not is_loopback(host):
        print(f"WARNING: the dashboard on {host} without TLS: API keys and session cookies cross the network in "
              "clear text; pass --ssl-certfile and --ssl-keyfile, or put a TLS proxy in front", file=sys.stderr,
              flush=True)
    app = build_ui_app(settings)
    scheme = "https" if ssl_certfile else "http"
    server = f", playground -> {settings.server_url}" if settings.server_url else " (no --server: no playground)"
    print(f"dashboard at {scheme}://{host}:{port}/ui/{server}; log in with an API key (tunelab keys create --name NAME "
          "--role trainer)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                timeout_graceful_shutdown=5)
