"""OpenAI request and response shapes for /v1/completions and /v1/chat/completions.

Pydantic lives only here, at the HTTP boundary. Requests are validated strictly (``"5"`` is
not a number, ``true`` is not an integer) so a client bug surfaces as a 400 naming the field
instead of a silently different request; numbers must be finite and in range. Fields OpenAI
or vLLM define that would change the output but latlab cannot honour (n > 1, best_of, echo
while streaming, tools, response_format, chat_template, guided decoding...) are rejected when
set, never ignored: ignoring them would change outputs without telling anyone. Fields that do
not affect generation (``user``, ``metadata``...) are accepted and ignored. Log-probabilities
are served as OpenAI and vLLM return them (``logprobs``, chat ``top_logprobs``, vLLM's
``prompt_logprobs``; latlab.serve.logprobs shapes them).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from latlab.errors import ConfigError
from latlab.serve.guard import error_body

MAX_LOGPROBS = 20  # alternatives per position, as vLLM's default --max-logprobs


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class _Strict(BaseModel):
    # Unknown fields are kept (not ignored) so the endpoints can refuse the ones that would
    # change the output (UNSUPPORTED); NaN and Infinity are never numbers here.
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


# logit_bias as OpenAI defines it: token ids (as JSON object keys, so strings) -> [-100, 100].
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
BiasValue = Annotated[float, Field(ge=-100.0, le=100.0)]


def _set(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


# Fields that change what is generated but latlab serve does not implement, with the value
# that means "not used" when it is not simply unset.
UNSUPPORTED: dict[str, Any] = {
    "response_format": lambda v: _set(v) and v != {"type": "text"},
    "tools": _set,
    "tool_choice": lambda v: _set(v) and v != "none",
    "functions": _set,
    "function_call": lambda v: _set(v) and v != "none",
    "parallel_tool_calls": lambda v: v is True,
    "chat_template": _set,
    "chat_template_kwargs": _set,
    "documents": _set,
    "guided_json": _set,
    "guided_regex": _set,
    "guided_choice": _set,
    "guided_grammar": _set,
    "structured_outputs": _set,
    "min_p": _set,
    "prediction": _set,
    "reasoning_effort": _set,
    "use_beam_search": _set,
    "length_penalty": lambda v: _set(v) and v != 1,
    "bad_words": _set,
    "allowed_token_ids": _set,
    "truncate_prompt_tokens": _set,
    "modalities": lambda v: _set(v) and v != ["text"],
    "audio": _set,
}


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """Fields shared by both endpoints, including vLLM's extensions (top_k, ignore_eos...)."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    seed: int | None = Field(default=None, ge=-(1 << 63), le=(1 << 64) - 1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int = 1
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # vLLM's extension
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    logit_bias: dict[TokenIdKey, BiasValue] | None = None
    best_of: int | None = None
    request_id: str | None = None

    def check_supported(self) -> None:
        """Reject what latlab would otherwise silently ignore."""
        if self.n != 1:
            raise RequestError("only n=1 is supported", param="n", code="unsupported_value")
        if self.best_of not in (None, 1):
            raise RequestError("only best_of=1 is supported", param="best_of")
        if self.prompt_logprobs is not None and self.stream:
            raise RequestError(
                "prompt_logprobs are not available with stream=true (as in vLLM)",
                param="prompt_logprobs",
            )
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED and UNSUPPORTED[name](value):
                raise RequestError(
                    f"{name} is not supported by latlab serve; remove it (it would change the "
                    "output, so it is refused rather than ignored)",
                    param=name,
                    code="unsupported_parameter",
                )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling_kwargs(self, max_tokens: int) -> dict[str, Any]:
        """Keyword arguments for latlab's SamplingParams (OpenAI defaults where unset)."""
        top_k = self.top_k or 0
        return {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": 0 if top_k < 0 else top_k,
            "max_tokens": max_tokens,
            "min_tokens": self.min_tokens,
            "ignore_eos": self.ignore_eos,
            "seed": self.seed,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "logit_bias": self.logit_bias,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            **self.logprob_kwargs(),
        }

    def logprob_kwargs(self) -> dict[str, int | None]:
        return {"prompt_logprobs": self.prompt_logprobs}


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    # OpenAI's default for the legacy completions endpoint.
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo and self.stream:
            raise RequestError(
                "echo is not supported with stream=true by latlab serve", param="echo"
            )
        if self.suffix:
            raise RequestError("suffix is not supported by latlab serve", param="suffix")

    def logprob_kwargs(self) -> dict[str, int | None]:
        """With ``echo``, prompt tokens are scored too (vLLM: prompt_logprobs = logprobs)."""
        prompt = self.prompt_logprobs
        if prompt is None and self.echo and self.logprobs is not None:
            prompt = self.logprobs
        return {"logprobs": self.logprobs, "prompt_logprobs": prompt}

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (a batch of several is refused, as n>1 is)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise RequestError(
                    "only one prompt per request is supported; send several requests",
                    param="prompt",
                )
            prompt = prompt[0]
        return prompt  # type: ignore[return-value]


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_template_dict(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message = {"role": self.role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    # None -> all the room left in the context, as vLLM does.
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    add_generation_prompt: bool = True
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs=true", param="top_logprobs")

    def logprob_kwargs(self) -> dict[str, int | None]:
        count = (self.top_logprobs or 0) if self.logprobs else None
        return {"logprobs": count, "prompt_logprobs": self.prompt_logprobs}

    @property
    def requested_max_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class TokenizeRequest(_Strict):
    """vLLM's ``POST /tokenize``: a completion prompt, or chat messages through the template.

    Clients use it to count tokens exactly as the server will (``latlab bench`` sizes its
    prompts with it when it has no tokenizer of its own).
    """

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Strict):
    """vLLM's ``POST /detokenize``: token ids back to text."""

    model: str | None = None
    tokens: list[int]


def parse_request(model: type[_Strict], body: bytes | dict[str, Any]) -> Any:
    """Validate a body (raw JSON, or JSON the guard parsed); problems become a 400 naming
    the field."""
    try:
        if isinstance(body, dict):
            return model.model_validate(body)
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestError(_validation_message(exc), param=_first_param(exc)) from None


def _first_param(exc: ValidationError) -> str | None:
    errors = exc.errors()
    if not errors or not errors[0]["loc"]:
        return None
    return ".".join(str(part) for part in errors[0]["loc"])


def _validation_message(exc: ValidationError) -> str:
    errors = exc.errors()
    if errors and errors[0]["type"] == "json_invalid":
        return f"request body is not valid JSON: {errors[0]['msg']}"
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request: " + "; ".join(parts) + more


def config_error(exc: ConfigError) -> RequestError:
    """A SamplingParams refusal as a 400; its message starts with the field it is about."""
    message = str(exc)
    field = re.match(r"[a-z_]+", message)
    param = field.group() if field and field.group() in _SamplingFields.model_fields else None
    return RequestError(message, param=param, code="invalid_value")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_s() -> int:
    # Wall clock on purpose: "created" is a timestamp, not an interval.
    return int(time.time())


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_response(
    rid: str, model: str, text: str, finish: str | None, usage: dict
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": now_s(),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def chat_response(
    rid: str, model: str, text: str, finish: str | None, usage: dict
) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": rid,
        "object": "chat.completion",
        "created": now_s(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
