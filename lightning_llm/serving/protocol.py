"""The OpenAI wire format: request bodies as strict pydantic models, and the error body.

Strict models: a wrong type is refused rather than coerced ("5" is not 5), and a field the
OpenAI API does not define is refused by name. Fields the API defines but this server does
not implement (penalties, logit_bias, tools, ...) are accepted at their neutral value and
refused with a message saying so otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_SEED = 2**63 - 1


class APIError(Exception):
    """An answer with an OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(err: ValidationError | list[dict]) -> APIError:
    """The first problem pydantic found, as a 400 that names the field (`messages.0.content`)."""
    errors = err.errors() if isinstance(err, ValidationError) else err
    first = errors[0]
    kind = first.get("type", "")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # A union reports the member it tried (`prompt.str`, `prompt.list[int]`): the field is what matters.
    loc = [part for part in loc if not any(ch in part for ch in "[]") and part not in ("str", "int", "float", "bool")]
    param = ".".join(loc) or None
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"the body is not valid JSON ({detail})", code="invalid_json")
    if param is None:
        got = first.get("input")
        hint = " (send it with Content-Type: application/json)" if isinstance(got, bytes | str) else ""
        return APIError(400, f"the body must be a JSON object{hint}", code="invalid_json")
    if kind == "extra_forbidden":
        return APIError(400, f"unknown field {param!r}", param=param, code="unknown_field")
    if kind == "missing":
        return APIError(400, f"{param} is required", param=param, code="missing_field")
    if loc and loc[0] == "prompt" and len(loc) <= 2:
        return APIError(400, "prompt must be a string, a list of strings, a list of token ids or a list of lists "
                        "of token ids", param="prompt", code="invalid_value")
    got = first.get("input")
    shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
    return APIError(400, f"{param}: {first.get('msg', 'invalid value')} (got {shown})", param=param,
                    code="invalid_value")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """What completions and chat share."""

    model: str | None = None  # null: the served model
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # null: 1.0; 0 is greedy
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)  # an extension, as in vLLM
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted, not used
    presence_penalty: float | None = None  # only 0 is supported
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # only empty

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> list[str]:
        """Fields set to something this server does not implement."""
        names = [name for name in ("presence_penalty", "frequency_penalty") if getattr(self, name)]
        return names + (["logit_bias"] if self.logit_bias else [])


class CompletionRequest(SamplingFields):
    # A string, strings, token ids, or lists of token ids: the four forms the API allows.
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # null: serve.default_max_tokens; 0 with echo scores the prompt
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)  # the chosen token's logprob and this many alternatives
    best_of: int | None = None  # only equal to n
    suffix: str | None = None  # not supported

    def unsupported(self) -> list[str]:
        return super().unsupported() + (["suffix"] if self.suffix else []) + \
            (["best_of"] if self.best_of not in (None, self.n) else [])


class ContentPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    # Any string here: the chat template says which roles it takes (a 400 naming messages.<i>.role).
    # OpenAI's `developer` is its newer name for `system`, and is rendered as one.
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # What a client gets back in an assistant message and may send again: accepted; tool calls
    # are not supported, so they must be empty.
    refusal: str | None = None
    annotations: list | None = None
    audio: dict | None = None
    function_call: dict | None = None
    tool_calls: list | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class RagOptions(Strict):
    """The `rag` extension: retrieve passages for the last user message from the server's index."""

    top_k: int | None = Field(None, ge=1)  # null: the server's rag.top_k


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    # Extensions: a chat template by name (GET /v1/templates lists them; null: the server's default), and
    # retrieval-augmented generation (the answer then carries `citations`).
    template: str | None = None
    rag: RagOptions | None = None
    max_tokens: int | None = Field(None, ge=1)  # the older name of max_completion_tokens
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    response_format: dict | None = None  # only {"type": "text"}
    tools: list | None = None  # no tool calling: only empty
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    def unsupported(self) -> list[str]:
        names = super().unsupported()
        names += [f"messages.{i}.tool_calls" for i, m in enumerate(self.messages) if m.tool_calls or m.function_call]
        names += ["tools"] if self.tools else []
        names += ["tool_choice"] if self.tool_choice not in (None, "none", "auto") else []
        names += ["response_format"] if self.response_format not in (None, {"type": "text"}) else []
        return names


class TokenizeRequest(Strict):
    prompt: str
    add_special_tokens: bool = True
    model: str | None = None


class DetokenizeRequest(Strict):
    tokens: list[int]
    model: str | None = None
