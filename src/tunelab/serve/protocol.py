"""Request bodies of the OpenAI-compatible API, as pydantic models mirroring OpenAI's schemas.

Unknown fields are ignored, as OpenAI's own server does, so clients that send newer parameters keep
working; a known field with a wrong type or value is a 400 naming the field. Limits that depend on
the server's settings (``n``, ``max_tokens``, context length) are checked where the request is served.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 4  # as OpenAI


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Request):
    include_usage: bool = False


class Sampled(Request):
    """What chat and completion requests share."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class Message(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported ({'type': 'text', 'text': ...})")
                parts.append(part["text"])
            return "".join(parts)
        return content

    def as_dict(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role  # OpenAI's newer name for the system turn
        return {"role": role, "content": self.content or ""}


class JsonSchemaFormat(Request):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def as_dict(self) -> dict:
        if self.type != "json_schema":
            return {"type": self.type}
        if self.json_schema is None or self.json_schema.schema_ is None:
            return {"type": "json_schema", "json_schema": {}}
        return {"type": "json_schema", "json_schema": {"name": self.json_schema.name,
                                                       "schema": self.json_schema.schema_}}


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    response_format: ResponseFormat | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Sampled):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API: how many top tokens to return
    echo: bool = False
    suffix: str | None = None
    response_format: ResponseFormat | None = None  # not in OpenAI's completions API; vLLM accepts it

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class FeedbackRequest(Request):
    response_id: str = Field(min_length=1, max_length=64)
    rating: Literal["up", "down"] | None = None
    score: int | None = Field(None, ge=1, le=5)
    corrected: str | None = Field(None, max_length=100_000)
    comment: str | None = Field(None, max_length=10_000)


class AdapterLoad(Request):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(min_length=1, description="a run folder inside the allowed roots, or MODEL@ALIAS|MODEL@N")


class AbStart(Request):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    arms: dict[str, float] = Field(min_length=2)


class KeyCreate(Request):
    name: str = Field(min_length=1, max_length=200)
    role: str = "user"
