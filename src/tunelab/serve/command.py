"""``tunelab serve``: load the models, then run uvicorn on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import logging
import sys

import uvicorn

from tunelab.errors import TunelabError
from tunelab.registry.serving import parse_arms
from tunelab.serve.app import ServerState, ServeSettings, build_app, is_loopback

log = logging.getLogger("tunelab.serve")


def parse_adapter(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise TunelabError(f"--adapter {text!r}: write NAME=RUN_FOLDER or NAME=MODEL@ALIAS")
    return name, source


def parse_ab(text: str) -> tuple[str, dict[str, float]]:
    name, sep, arms = text.partition("=")
    if not sep or not name:
        raise TunelabError(f"--ab {text!r}: write NAME=modelA:0.5,modelB:0.5")
    return name, parse_arms(arms)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None, access_log: bool = False) -> None:
    if not settings.auth:
        warn_no_auth(host)
    print(f"loading {settings.base} and {len(settings.adapters)} adapter(s)...", file=sys.stderr, flush=True)
    state = ServerState(settings)
    names = ", ".join(state.pool.served) + "".join(f", {t} (A/B)" for t in state.ab_tests)
    scheme = "https" if ssl_certfile else "http"
    auth = "auth on: make a key with tunelab keys create NAME" if settings.auth else "NO AUTH"
    print(f"serving {names} at {scheme}://{host}:{port}/v1 ({auth})", file=sys.stderr, flush=True)
    uvicorn.run(build_app(state), host=host, port=port, log_level="info", access_log=access_log,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=10)


def warn_no_auth(host: str) -> None:
    if is_loopback(host):
        log.warning("--no-auth: every caller on this machine is an admin")
        return
    banner = "!" * 78
    print(f"{banner}\nWARNING: --no-auth on {host}: ANYONE who can reach this address can call every model, load "
          f"adapters\nand read the metrics, with no key. Use auth (tunelab keys create) or bind 127.0.0.1.\n{banner}",
          file=sys.stderr, flush=True)
