"""Chat generators behind one call, ``complete(conversations, max_new_tokens) -> texts``.

Either a causal LM run here (an embedded default, a local folder or a hub id; prompts rendered by
the model's own chat template, greedy batched generation), or any OpenAI-compatible
chat-completions server over plain HTTP. Greedy decoding (temperature 0 for servers) keeps runs
reproducible. Server problems become one clear line, never a traceback.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from tqdm.auto import tqdm

from tunelab.data.templates import render
from tunelab.errors import TunelabError
from tunelab.eval.evaluate import generate


class LocalGenerator:
    """A causal LM run here: chat-rendered prompts, greedy batched generation."""

    def __init__(self, model: str, *, batch_size: int, seed: int):
        from transformers import set_seed

        from tunelab.config import RunConfig
        from tunelab.train.setup import load_base  # peft and the Trainer stack: only a local model needs them

        set_seed(seed)
        self.name = model
        self.batch_size = batch_size
        self.tokenizer, self.model = load_base(RunConfig(model=model))
        self.model.eval()

    def complete(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        prompts = [render(self.tokenizer, messages, add_generation_prompt=True) for messages in conversations]
        return generate(self.model, self.tokenizer, prompts, max_new_tokens, self.batch_size, desc="generating")


class ServerGenerator:
    """POST /v1/chat/completions, one conversation at a time; OPENAI_API_KEY, when set, is sent as a bearer token."""

    def __init__(self, server: str, model: str, *, seed: int, timeout: float):
        self.url = chat_completions_url(server)
        self.model = model
        self.name = model
        self.seed = seed
        self.timeout = timeout

    def complete(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        outputs = []
        with tqdm(total=len(conversations), desc="generating", leave=False) as bar:  # cleared on errors too
            for messages in conversations:
                outputs.append(self._ask(messages, max_new_tokens))
                bar.update()
        return outputs

    def _ask(self, messages: list[dict], max_new_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0,
                "seed": self.seed}
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            raise TunelabError(f"server {self.url} answered HTTP {error.code}: {_error_message(error)}") from None
        except urllib.error.URLError as error:
            raise TunelabError(f"cannot reach server {self.url}: {error.reason}") from None
        except TimeoutError:
            raise TunelabError(f"server {self.url} did not answer within {self.timeout} s (raise --timeout)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TunelabError(f"server {self.url} did not answer with JSON; "
                               "is it a chat-completions endpoint?") from None
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TunelabError(f"server {self.url} sent a reply without choices[0].message.content") from None
        self.name = reply.get("model") or self.model
        return content or ""


def chat_completions_url(server: str) -> str:
    """Accepts http://host:port, http://host:port/v1 or the full .../chat/completions address."""
    url = server.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise TunelabError(f"server {server!r} is not an http(s) URL (for example http://localhost:8000/v1)")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        return error.reason or "no details"
    try:
        detail = json.loads(text).get("error")
        text = detail.get("message", text) if isinstance(detail, dict) else (detail or text)
    except (json.JSONDecodeError, AttributeError):
        pass
    return " ".join(str(text).split())[:300] or str(error.reason)
