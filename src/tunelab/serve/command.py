"""``tunelab serve``: load the models, then run uvicorn on 127.0.0.1 unless told otherwise.

Off loopback it warns: without TLS (keys and prompts cross the network in clear text) in one line, and
without auth in a banner. A certificate without its key, or a pair that does not load, is a one-line
error before any model loads.
"""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

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
          ssl_keyfile: str | None = None, access_log: bool = False,
          add_pages: Callable[[FastAPI, ServerState], None] | None = None) -> None:
    """Load the models and serve them. ``add_pages`` mounts more routes on the app (``tunelab serve --ui``:
    the dashboard, a layer above this one, so the command line passes it in)."""
    check_tls(ssl_certfile, ssl_keyfile)
    if not settings.auth:
        warn_no_auth(host)
    if not ssl_certfile and not is_loopback(host):
        print(f"WARNING: serving on {host} without TLS: API keys, prompts and answers cross the network in clear "
              "text; pass --ssl-certfile and --ssl-keyfile, or put a TLS proxy in front", file=sys.stderr, flush=True)
    print(f"loading {settings.base} and {len(settings.adapters)} adapter(s)...", file=sys.stderr, flush=True)
    state = ServerState(settings)
    names = ", ".join(state.pool.served) + "".join(f", {t} (A/B)" for t in state.ab_tests)
    scheme = "https" if ssl_certfile else "http"
    auth = "auth on: make a key with tunelab keys create --name NAME" if settings.auth else "NO AUTH"
    print(f"serving {names} at {scheme}://{host}:{port}/v1 ({auth})", file=sys.stderr, flush=True)
    app = build_app(state)
    if add_pages is not None:
        add_pages(app, state)
        print(f"dashboard at {scheme}://{host}:{port}/ui/ (log in with an API key)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=10)


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both files or neither, and they must load as a certificate with its (unencrypted) private key."""
    if not certfile and not keyfile:
        return
    if not certfile or not keyfile:
        given, missing = ("--ssl-certfile", "--ssl-keyfile") if certfile else ("--ssl-keyfile", "--ssl-certfile")
        raise TunelabError(f"{given} needs {missing} too: HTTPS takes a certificate and its private key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile, password=lambda: b"")
    except ssl.SSLError as error:
        why = ("the key is not the certificate's" if error.reason == "KEY_VALUES_MISMATCH"
               else "they must be a PEM certificate and its unencrypted private key")
        raise TunelabError(f"--ssl-certfile {certfile} --ssl-keyfile {keyfile}: {why}") from None
    except OSError as error:
        raise TunelabError(f"{error.filename or certfile}: {error.strerror or error} (--ssl-certfile/--ssl-keyfile)") \
            from None


def warn_no_auth(host: str) -> None:
    if is_loopback(host):
        log.warning("--no-auth: every caller on this machine is an admin")
        return
    banner = "!" * 78
    print(f"{banner}\nWARNING: --no-auth on {host}: ANYONE who can reach this address can call every model, load "
          f"adapters\nand read the metrics, with no key. Use auth (tunelab keys create) or bind 127.0.0.1.\n{banner}",
          file=sys.stderr, flush=True)
