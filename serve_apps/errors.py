"""Every error the platform answers with, as data (spec §4.8.7), and the exception that carries one.

Platform errors render as `{"error_code": ..., "error_msg": ...}`; OpenAI-style errors (validation,
unknown model, context length) render as `{"object": "error", "message", "type", "param", "code"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    code: str
    message: str  # a str.format template


# error_code -> spec; the only place a code, its HTTP status and its message live.
PLATFORM_ERRORS: dict[str, ErrorSpec] = {spec.code: spec for spec in [
    ErrorSpec(400, "ModelArts.81001", "Invalid request body."),
    ErrorSpec(400, "ModelArts.81002", "Failed to get the authorization header."),
    ErrorSpec(401, "ModelArts.81003", "Invalid authorization header."),
    ErrorSpec(401, "ModelArts.81004", "Invalid request because you do not have access to it."),
    ErrorSpec(401, "ModelArts.81005", "The free quota has been used up."),
    ErrorSpec(401, "ModelArts.81006", "The resource is frozen."),
    ErrorSpec(403, "ModelArts.81011", "May contain sensitive information, please try again."),
    ErrorSpec(403, "ModelArts.81014", "The free service has expired. You can subscribe commercial service."),
    ErrorSpec(404, "ModelArts.81009", "Invalid model."),
    ErrorSpec(429, "ModelArts.81101", "Too many requests, exceeded rate limit is {rpm} times per minute."),
    ErrorSpec(429, "ModelArts.81103", "Too many requests. exceeded rate limit is {tpm} tokens per minute."),
    ErrorSpec(429, "MaaS.0429", "Too many requests, exceeded the service's limit of {qps} requests per second."),
    ErrorSpec(413, "MaaS.0413", "Request body too large: the limit is {limit} bytes."),
    ErrorSpec(503, "MaaS.0503", "The platform is starting or the model is not ready: {reason}"),
    # Recorded only (the caller is gone): a stream the client closed before its end.
    ErrorSpec(499, "MaaS.0499", "The client closed the connection before the answer was complete."),
    # Recorded only: the gateway replica that carried the call died; the engine's own count was settled.
    ErrorSpec(502, "MaaS.0502", "The gateway replica carrying the call stopped before the answer was complete."),
    ErrorSpec(400, "Modelarts.6206", "Key fields describing the model structure are missing from config.json, "
                                     "or their values are inconsistent with standard open source"),
    ErrorSpec(400, "MaaS.0400", "{reason}"),
    ErrorSpec(403, "MaaS.0403", "{reason}"),
    ErrorSpec(404, "MaaS.0404", "{what} does not exist."),
    ErrorSpec(409, "MaaS.0409", "{reason}"),
]}


class PlatformError(Exception):
    """Raised anywhere; rendered by one handler as the platform's error body."""

    def __init__(self, code: str, **params: Any):
        self.spec = PLATFORM_ERRORS[code]
        self.message = self.spec.message.format(**params)
        super().__init__(f"{code}: {self.message}")

    @property
    def status(self) -> int:
        return self.spec.status

    def body(self) -> dict[str, str]:
        return {"error_code": self.spec.code, "error_msg": self.message}


class OpenAIError(Exception):
    """An error in the OpenAI/vLLM shape, as the engine-facing routes answer."""

    TYPES = {400: "BadRequestError", 404: "NotFoundError", 413: "RequestEntityTooLarge",
             500: "InternalServerError", 503: "ServiceUnavailableError"}

    def __init__(self, status: int, message: str, type_: str | None = None):
        self.status = status
        self.message = message
        self.type = type_ or self.TYPES.get(status, "BadRequestError")
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"object": "error", "message": self.message, "type": self.type, "param": None,
                "code": self.status}


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist.")


# Codes the accounting actor may answer that render in the OpenAI shape rather than as a platform error.
OPENAI_ERRORS = {"model_not_found": model_not_found}


def error_for(code: str, model: str = "", **params: Any) -> PlatformError | OpenAIError:
    """The exception for an error code of either catalogue (an admission answer's `error`)."""
    if code in OPENAI_ERRORS:
        return OPENAI_ERRORS[code](model)
    return PlatformError(code, **params)


def context_length_exceeded(limit: int, prompt_tokens: int, max_tokens: int, unit: str = "messages") -> OpenAIError:
    return OpenAIError(400, (
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {unit}, {max_tokens} in the "
        f"completion). Please reduce the length of the {unit} or completion."))
