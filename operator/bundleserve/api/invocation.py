"""Shared request/response types of the native HTTP API (router, gateway and local mode speak the same bodies)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.manifest import format_validation_error

# The router <-> model-container contract (docs/contracts.md): one definition for the runtime, router and worker.
INPUT_HEADER = "X-Bundleserve-Input"  # value "raw": the body is the input bytes, not JSON keyword arguments
RETURN_HEADER = "X-Bundleserve-Return"  # value "pickle": answer with the cloudpickled return value
PICKLE_CONTENT_TYPE = "application/vnd.bundleserve.pickle"
#: SageMaker's opaque per-request string; forwarded to the model container and back to the client unchanged.
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
JSON_CONTENT_TYPE = "application/json"
#: The native API's header naming one call across a client's retries (docs/router.md, "Retries").
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: What botocore sends, the same on every retry of one call (SageMaker Runtime dialect).
SDK_INVOCATION_ID_HEADER = "amz-sdk-invocation-id"
_MAX_IDEMPOTENCY_KEY = 255


def idempotency_key(kind: str, value: str | None) -> str | None:
    """The key that makes a client's retries one call, scoped by the dialect that read it (`native`, `sagemaker`):
    None without a header; InvalidRequest for a value that is not 1..255 printable ASCII characters."""
    if value is None:
        return None
    if not (0 < len(value) <= _MAX_IDEMPOTENCY_KEY and value.isascii() and value.isprintable()):
        raise InvalidRequest(f"an idempotency key must be 1..{_MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return f"{kind}:{value}"


OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One model call, after a dialect (native, SageMaker, Launch) parsed its request; what the core executes.

    `raw=False`: `body` is the JSON object of the keyword arguments (a Python bundle's call). `raw=True`: `body` is
    passed through unchanged with `content_type` (a SageMaker non-JSON body). With `url` set, the core fetches the
    input through the destination guard and sends the fetched bytes raw instead of `body`.
    `timeout_seconds` can only shorten the endpoint's time limit, never extend it.

    `url_body=True` (SageMaker's InputLocation): the fetched object stands for the request body itself, exactly as if
    it had come inline. It is passed with `content_type` (the client's declared type; "" when none was declared, not
    the source's), and for a Python bundle a JSON object becomes keyword arguments by `body_input`, the same rule an
    inline body follows. `url` may then also be an `s3://` URL, read through the deployment's S3 client.
    """

    body: bytes = b""
    content_type: str = JSON_CONTENT_TYPE
    raw: bool = False
    url: str | None = None
    return_pickled: bool = False
    timeout_seconds: float | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    request_id: str | None = None
    url_body: bool = False
    #: Names one call across the client's retries (`idempotency_key()`): a retry gets the first attempt's answer
    #: (sync) or task (async) instead of running the model again.
    idempotency_key: str | None = None
    #: The production variant the call names (SageMaker's TargetVariant); None: the gateway picks one by weight
    #: (docs/operator.md, "Production variants"). A router serves its own variant only.
    variant: str | None = None


def is_json_media(content_type: str | None) -> bool:
    """`application/json`, any `application/...+json`, or no declared type (boto3 sends none when a caller gives none)."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_CONTENT_TYPE or (media.startswith("application/") and media.endswith("+json"))


def is_json_object(body: bytes) -> bool:
    """True when `body` is one JSON object (the only shape that can become keyword arguments)."""
    if not body.lstrip().startswith(b"{"):
        return False
    try:
        return isinstance(loads_json(body), dict)
    except ValueError:
        return False


def body_input(body: bytes, content_type: str | None, *, python_bundle: bool) -> tuple[str, bool]:
    """(content type, raw?) with which a request body reaches the model: the one rule for a body whose meaning comes
    from its declared media type (SageMaker's inline body and its InputLocation object alike, docs/dialects.md).

    A Python bundle gets a JSON object with a JSON type (or none) as keyword arguments; every other body, and every
    body for a runnable image, goes raw with the declared type (application/octet-stream when none was declared).
    """
    as_kwargs = python_bundle and is_json_media(content_type) and is_json_object(body)
    return content_type or (JSON_CONTENT_TYPE if as_kwargs else OCTET_STREAM), not as_kwargs


@dataclass(frozen=True, slots=True)
class ModelReply:
    """The one type of a complete model answer (sync predict, the async worker, every dialect).

    `status` is the model's HTTP status; the core returns only 2xx replies (errors are raised as ApiError), the
    async worker's injected call may return any status so the worker decides on retries.
    """

    status: int
    body: bytes
    content_type: str
    custom_attributes: str | None = None

    @property
    def status_code(self) -> int:
        """The same as `status`: the name the task record and the queue worker use."""
        return self.status

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_json(self) -> bool:
        media = self.content_type.split(";")[0].strip().lower()
        return media == JSON_CONTENT_TYPE or media.endswith("+json")

    @property
    def is_pickle(self) -> bool:
        return self.content_type.startswith(PICKLE_CONTENT_TYPE)

    def result(self) -> Any:
        """The answer as a Python value: bytes for a pickle, parsed JSON when it parses, else text (runnable images)."""
        if self.is_pickle:
            return self.body
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """The `data` bytes of one model event (an SSE event's data, or one raw chunk of a non-SSE stream), in order."""

    data: bytes


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.EXPIRED)


class CallbackAuthRequest(BaseModel):
    """Per-request callback credentials (Launch's `callback_auth`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["basic", "mtls"]
    username: str | None = None
    password: str | None = None
    cert: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> CallbackAuthRequest:
        if self.kind == "basic" and (self.username is None or self.password is None):
            raise ValueError("callback_auth of kind basic needs username and password")
        if self.kind == "mtls" and (self.cert is None or self.key is None):
            raise ValueError("callback_auth of kind mtls needs cert and key (PEM)")
        return self

    def __repr__(self) -> str:  # never print credentials
        return f"CallbackAuthRequest(kind={self.kind!r})"


class PredictRequest(BaseModel):
    """Body of predict, stream and async submit. Exactly one of `args` / `url`."""

    model_config = ConfigDict(extra="forbid")

    args: Any = None
    url: Annotated[str | None, Field(default=None, max_length=4096)] = None
    return_pickled: bool = False
    timeout_seconds: Annotated[float | None, Field(default=None, gt=0)] = None
    callback_url: Annotated[str | None, Field(default=None, max_length=2048)] = None
    callback_auth: CallbackAuthRequest | None = None
    request_id: Annotated[str | None, Field(default=None, max_length=128)] = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> PredictRequest:
        if (self.args is None) == (self.url is None):
            raise ValueError("exactly one of args or url is required")
        return self


class InvocationResponse(BaseModel):
    """Answer of predict; also each streaming event and the body of a finished task."""

    status: TaskStatus
    result: Any = None
    result_url: str | None = None
    traceback: str | None = None
    status_code: int | None = None


class TaskResponse(InvocationResponse):
    task_id: str


class AsyncSubmitResponse(BaseModel):
    task_id: str


#: Where the operator mounts the Endpoint's callback Secret (`spec.async.callback.auth.secretName`) in the router
#: sidecar, and the variable that tells the router (the pod contract between `controller` and `queue.callbacks`).
CALLBACK_SECRET_DIR_ENV = "BUNDLESERVE_CALLBACK_SECRET_DIR"
CALLBACK_SECRET_DIR = "/var/run/secrets/bundleserve/callback"


_Body = TypeVar("_Body", bound=BaseModel)


class JsonTooDeep(ValueError):
    """A JSON document nested deeper than Python's decoder can follow (its RecursionError, as a ValueError)."""


def loads_json(data: bytes | str) -> Any:
    """`json.loads` for bytes that came from outside (a client's body, a model's answer): a document nested too
    deeply to decode raises `JsonTooDeep` (a ValueError, so callers' "not valid JSON" handling covers it) instead of
    a RecursionError that would surface as a 500 with a traceback."""
    try:
        return json.loads(data)
    except RecursionError:
        raise JsonTooDeep("the JSON document is nested too deeply") from None


def parse_json_body(body: bytes, model: type[_Body]) -> _Body:
    """A request body that must be one JSON object, validated by `model`: the one parser of request documents for
    every dialect (native, Launch), with InvalidRequest (400) naming what is wrong."""
    try:
        document = loads_json(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object with args or url")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise InvalidRequest(format_validation_error(error)) from None


_ARGS_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"args"[ \t\n\r]*:[ \t\n\r]*')
_ARGS_TAIL = re.compile(r"[ \t\n\r]*\}[ \t\n\r]*")
_ARGS_DECODER = json.JSONDecoder()


def args_only(body: bytes) -> tuple[bytes, bool] | None:
    """`{"args": VALUE}` and nothing else: VALUE's JSON text exactly as sent (no re-encoding), and whether VALUE is
    a JSON object; None for any other body (and for `"args": null`), which the dialect's pydantic model then parses,
    so its rules and messages stay the only ones. The common body of the native and the Launch dialects.

    Memory: the decoded value only proves the text is valid JSON and is dropped at once; what stays is the args text,
    cut from the body's bytes (for an ASCII body character offsets are byte offsets). Parsing is synchronous, so the
    transient copies (text, decoded value) exist for one request at a time.
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    head = _ARGS_HEAD.match(text)
    if head is None:
        return None
    try:
        args, end = _ARGS_DECODER.raw_decode(text, head.end())
    except (ValueError, RecursionError):  # the general path below gives the reason (too deep: 400)
        return None
    if args is None or _ARGS_TAIL.fullmatch(text, end) is None:
        return None
    is_object = isinstance(args, dict)
    del args
    start = head.end()
    if text.isascii():
        del text
        args_json = body[start:end]
    else:
        args_json = text[start:end].encode()
    return args_json, is_object


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_args(args: Any) -> bytes:
    """The JSON body of a predict call with `args` (compact, UTF-8)."""
    return _ENCODER.encode(args).encode()
