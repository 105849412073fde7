"""Start a real uvicorn server on a free loopback port, in a thread of the test process, with keys of each role."""

from __future__ import annotations

from contextlib import contextmanager

import httpx

from tunelab.registry.db import open_registry
from tunelab.registry.keys import create_key
from tunelab.security.roles import ROLES
from tunelab.serve.app import ServerState, ServeSettings
from tunelab.serve.completions import Limits
from tunelab.serve.local import server_in_thread


class Running:
    """A started server: its URL, its state, and keys of each role."""

    def __init__(self, url: str, state: ServerState, keys: dict[str, str]):
        self.url, self.state, self.keys = url, state, keys

    def client(self, role: str = "inference", **options):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.keys[role], max_retries=0, **options)

    def http(self, role: str | None = "inference") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@contextmanager
def running_server(base, adapters=(), **settings):
    limits = settings.pop("limits", Limits(max_tokens=256, max_n=4, default_max_tokens=16))
    config = ServeSettings(base=str(base), adapters=[(n, str(p)) for n, p in adapters], limits=limits, **settings)
    registry = open_registry()
    with registry.session() as session:
        keys = {role: create_key(session, f"test-{role}", role)[1] for role in ROLES}
        keys["inference2"] = create_key(session, "test-inference2", "inference")[1]
    state = ServerState(config)
    with server_in_thread(state) as url:
        yield Running(url, state, keys)
