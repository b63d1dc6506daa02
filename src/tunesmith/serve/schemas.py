"""OpenAI-shaped request models and the error shape, with the size limits every request is held to.

Fields the server does not implement (legacy `functions`, tools on text completions) are
refused with a 400 naming the field, rather than silently ignored; other unknown fields are
ignored, as OpenAI-compatible servers do. Chat requests take `tools` and `tool_choice` (auto, none,
required or a named function), and tool calls and results in the conversation
(`tunesmith.toolcalls`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TEXT = 200_000  # characters in one message or prompt
MAX_MESSAGES = 512
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "audio", "prediction")


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers or {}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, max_length=MAX_TEXT)
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, max_length=200)
    reasoning_content: str | None = Field(None, max_length=MAX_TEXT)

    def as_record(self) -> dict[str, Any]:
        """The message as training rows hold it (a developer message is the system's)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role}
        message["content"] = self.text()
        from tunesmith.chat import MESSAGE_EXTRAS

        for key in MESSAGE_EXTRAS:
            if getattr(self, key):
                message[key] = getattr(self, key)
        return message

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=300)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=200)
    metadata: dict[str, str] | None = None
    logprobs: bool | int | None = None
    response_format: dict[str, Any] | None = None
    # as OpenAI's: each generated token's logit less presence (once it appeared) + frequency x count
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop takes up to 4 non-empty sequences of up to 200 characters")
        return stops

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _Sampling:
        extra = self.model_extra or {}
        for name in UNSUPPORTED:
            if extra.get(name) not in (None, [], {}):
                raise ValueError(f"`{name}` is not supported by this server")
        if self.response_format is not None:
            self.json_schema()  # refuse a malformed response_format before anything is routed
        return self

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must follow (`response_format` json_object or json_schema);
        None for plain text."""
        form = self.response_format or {}
        kind = form.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "object"}
        if kind == "json_schema":
            spec = form.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise ValueError(
                    "response_format json_schema needs `json_schema: {name: ..., schema: {...}}`"
                )
            schema = spec.get("schema") or {}
            return schema if isinstance(schema, dict) else {}
        raise ValueError(f"response_format type {kind!r} is not one of text, json_object, json_schema")

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def logprob_count(self) -> int | None:
        """How many alternatives to report per token (0: the chosen token's only); None: no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _tools(self) -> ChatCompletionRequest:
        from tunesmith.toolcalls import check_conversation, check_tools

        if self.logprobs is not None and not isinstance(self.logprobs, bool):
            raise ValueError("logprobs is true or false for chat; top_logprobs says how many alternatives")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        messages = [m.as_record() for m in self.messages]
        check_conversation(messages)  # a ToolCallError is a ValueError: answered 400
        if self.tools:
            self.tools = check_tools(self.tools)
        if self.tool_choice not in (None, "none", "auto"):
            if not self.tools:
                raise ValueError("tool_choice needs `tools` to choose from")
            self.forced_tools()  # a named function that is not offered is refused here
        return self

    def offered_tools(self) -> list[dict[str, Any]] | None:
        """The tools the model is shown (none under tool_choice none)."""
        return None if self.tool_choice == "none" else self.tools or None

    def forced_tools(self) -> list[dict[str, Any]] | None:
        """The tools the answer must call one of (tool_choice required or a named function);
        None when the model decides."""
        choice = self.tool_choice
        if choice in (None, "none", "auto") or not self.tools:
            return None
        if choice == "required":
            return self.tools
        function = choice.get("function") if isinstance(choice, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        chosen = [t for t in self.tools if t["function"]["name"] == name]
        if not chosen:
            raise ValueError(f"tool_choice names {name!r}, which is not one of the request's tools")
        return chosen

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(max_length=MAX_TEXT)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and not 1 <= len(prompt) <= 64:
            raise ValueError("prompt takes 1 to 64 strings")
        if isinstance(prompt, list) and any(len(p) > MAX_TEXT for p in prompt):
            raise ValueError(f"each prompt is at most {MAX_TEXT} characters")
        return prompt

    @model_validator(mode="after")
    def _no_echo(self) -> CompletionRequest:
        if self.echo or self.suffix:
            raise ValueError("`echo` and `suffix` are not supported by this server")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not 0 <= self.logprobs <= 20):
            raise ValueError("logprobs takes the number of alternatives per token, 0 to 20")
        return self

    def logprob_count(self) -> int | None:
        """How many alternatives to report per token (0: the chosen token's only); None: no logprobs."""
        return None if self.logprobs is None else int(self.logprobs)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class AliasMove(BaseModel):
    """Body of POST /admin/promote."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    alias: str = Field(min_length=1)
    reason: str = ""
    force: bool = False


class AliasRollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str = Field(min_length=1)
    alias: str = "production"
    reason: str = ""


class RolloutStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1)
    version: str = Field(min_length=1)
