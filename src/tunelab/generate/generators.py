"""Chat generators behind one call, ``complete(conversations, max_new_tokens) -> texts``.

Either a causal LM run here (an embedded default, a local folder or a hub id; prompts rendered by
the model's own chat template, batched generation), or any OpenAI-compatible
chat-completions server over plain HTTP (greedy, temperature 0, unless sampling settings are
given). Server problems become one clear line, never a traceback.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from tunelab.config import RunConfig
from tunelab.data.templates import render
from tunelab.errors import TunelabError


class LocalGenerator:
    """A causal LM run here: chat-rendered prompts, batched generation, greedy unless ``sampling``
    gives settings such as ``{"temperature": 0.8, "top_p": 0.95}``; every call is seeded with ``seed``."""

    def __init__(self, model: str, *, batch_size: int, seed: int, sampling: dict | None = None):
        # start-up time: torch, transformers and peft load only when a model runs here, not for a server
        from tunelab.modeling.fast import prepare_for_inference
        from tunelab.modeling.load import load_causal_lm

        self.name = model
        self.batch_size = batch_size
        self.seed = seed
        self.sampling = sampling
        config = RunConfig(model=model)
        self.tokenizer, self.model = load_causal_lm(config)
        prepare_for_inference(self.model, config)
        self.model.eval()

    def complete(self, conversations: list[list[dict]], max_new_tokens: int, desc: str = "generating") -> list[str]:
        from transformers import set_seed

        from tunelab.inference.generate import generate  # start-up time: torch loads only when a model runs here

        prompts = [render(self.tokenizer, messages, add_generation_prompt=True) for messages in conversations]
        set_seed(self.seed)
        return generate(self.model, self.tokenizer, prompts, max_new_tokens, self.batch_size, desc=desc,
                        sampling=self.sampling)


class ServerGenerator:
    """An OpenAI-compatible chat-completions server: POST .../chat/completions, ``workers`` requests in
    flight at once. ``api_key`` (else OPENAI_API_KEY), when set, is sent as a bearer token; without a
    model name, the first one GET .../models lists is used. ``top_p`` None is left out of requests;
    ``auth_hint`` ends the message of an HTTP 401 or 403."""

    def __init__(self, server: str, model: str | None = None, *, seed: int, timeout: float,
                 temperature: float = 0.0, top_p: float | None = None, api_key: str | None = None,
                 workers: int = 1, auth_hint: str = "set OPENAI_API_KEY"):
        self.url = chat_completions_url(server)
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.seed = seed
        self.timeout = timeout
        self.temperature = temperature
        self.top_p = top_p
        self.workers = workers
        self.auth_hint = auth_hint
        self.model = model or self.first_model()
        self.name = self.model

    def complete(self, conversations: list[list[dict]], max_new_tokens: int, *, seeds: list[int] | None = None,
                 desc: str = "generating") -> list[str]:
        """The replies, in order; request i sends ``seeds[i]`` (default: the generator's seed)."""
        seeds = seeds or [self.seed] * len(conversations)
        pool = ThreadPoolExecutor(self.workers)
        try:  # the bar is cleared on errors too, and queued requests are dropped
            replies = pool.map(self.chat, conversations, [max_new_tokens] * len(conversations), seeds)
            return list(tqdm(replies, total=len(conversations), desc=desc, leave=False))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def chat(self, messages: list[dict], max_tokens: int, seed: int | None = None) -> str:
        """The reply text to one conversation (seed None: the generator's seed)."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": self.temperature,
                "seed": self.seed if seed is None else seed}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        reply = self._request(self.url, body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TunelabError(f"server {self.url} sent a reply without choices[0].message.content") from None
        self.name = reply.get("model") or self.model
        return content or ""

    def first_model(self) -> str:
        """The first model the server lists, for servers that need a model name."""
        url = self.url.removesuffix("/chat/completions") + "/models"
        try:
            return str(self._request(url)["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise TunelabError(f"server {url} lists no model; pass --model NAME") from None

    def _request(self, url: str, body: dict | None = None) -> dict:
        """GET ``url``, or POST ``body`` to it, and read the JSON reply; every problem is one clear line."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data, headers, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            hint = f"; {self.auth_hint}" if error.code in (401, 403) else ""
            raise TunelabError(f"server {url} answered HTTP {error.code}: {_error_message(error)}{hint}") from None
        except (OSError, http.client.HTTPException) as error:  # URLError, refused, reset, timed out
            reason = getattr(error, "reason", None) or error
            if isinstance(reason, TimeoutError):
                raise TunelabError(f"server {url} did not answer within {self.timeout} s (raise --timeout)") from None
            raise TunelabError(f"cannot reach server {url} ({reason}); check --server, "
                               "e.g. http://localhost:8000/v1") from None
        except ValueError:  # not JSON, or not UTF-8
            raise TunelabError(f"server {url} did not answer with JSON; is it a chat-completions endpoint?") from None


def chat_completions_url(server: str) -> str:
    """Accepts http://host:port, http://host:port/v1 or the full .../chat/completions address."""
    url = server.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise TunelabError(f"server {server!r} is not an http(s) URL (for example http://localhost:8000/v1)")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's own error message when it sent one (OpenAI style), else the HTTP reason."""
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        return str(error.reason or "no details")
    try:
        detail = json.loads(text).get("error")
        text = detail.get("message", text) if isinstance(detail, dict) else (detail or text)
    except (ValueError, AttributeError):
        pass
    return " ".join(str(text).split())[:300] or str(error.reason)
