"""Request bodies of the OpenAI-compatible API, as pydantic models mirroring OpenAI's schemas.

Unknown fields are ignored, as OpenAI's own server does, so clients that send newer parameters keep
working; a known field with a wrong type or value is a 400 naming the field (types are strict: ``"n": 1.0``
and ``"stream": 0`` are wrong types). Where a validator checks more than the type says, ``json_schema_extra``
writes the same rule into the API's schema, which the schemathesis test holds the server to. Limits that depend on
the server's settings (``n``, ``max_tokens``, context length) are checked where the request is served.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.security.roles import ALIASES, DEFAULT_ROLE, ROLES

MAX_STOP_STRINGS = 4  # as OpenAI
# What the validators below accept, for the API's schema (they check it with messages of their own).
STOPS = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"},
                   {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP_STRINGS}]}
TEXT_PART = {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
             "required": ["type", "text"]}
TEXT_PARTS = {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": TEXT_PART}]}
PROMPTS = {"anyOf": [{"type": "string", "minLength": 1},
                     {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}]}


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict: "2" is no n and 0 no boolean, as the schema says

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data):
        """JSON Schema's integer: 2.0 is one (strict pydantic says no), 2.5 is not."""
        if not isinstance(data, dict):
            return data
        fixed = {name: int(value) for name, value in data.items() if isinstance(value, float) and value.is_integer()
                 and name in cls.model_fields and int in (get_args(cls.model_fields[name].annotation) or
                                                          (cls.model_fields[name].annotation,))}
        return {**data, **fixed} if fixed else data


class StreamOptions(Request):
    include_usage: bool = False


class Sampled(Request):
    """What chat and completion requests share."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, json_schema_extra=STOPS)
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
    content: str | list[dict[str, Any]] | None = Field(None, json_schema_extra=TEXT_PARTS)

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
    prompt: str | list[str] = Field(json_schema_extra=PROMPTS)  # each needs a token: checked when it is served
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API: how many top tokens to return
    echo: bool = Field(False, json_schema_extra={"enum": [False]})  # refused with a message when the route runs
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})
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
    source: str = Field(min_length=1, description="a run folder inside the allowed roots, or MODEL@ALIAS|MODEL@N",
                        json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f]+$"})  # pool.check_adapter refuses the rest


class AbStart(Request):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    arms: dict[Annotated[str, Field(min_length=1)], Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        min_length=2, description="served model -> weight (above 0; normalized to sum 1)")


class KeyCreate(Request):
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(DEFAULT_ROLE, description="admin, trainer, viewer or inference ('user' is inference)",
                      json_schema_extra={"enum": [*ROLES, *ALIASES]})  # create_key says which roles exist
