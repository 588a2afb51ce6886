"""The one error tree shared by every layer of sandtree.

Each error knows its HTTP status and a stable ``code``; its message says what went wrong
and what to do next, because the reader is often an agent::

    SandtreeError
    ├── InvalidRequestError (400)
    │   └── LimitExceededError (400)
    ├── UnauthorizedError (401)
    │   └── TokenExpiredError
    ├── ForbiddenError (403)
    ├── NotFoundError (404)
    │   ├── ImageNotFoundError
    │   ├── OperationNotFoundError
    │   ├── FileNotFoundInStoreError
    │   └── PathNotFoundError
    ├── RequestTimeoutError (408)
    ├── ConflictError (409)
    ├── GoneError (410)
    ├── PayloadTooLargeError (413)
    ├── UnprocessableError (422)
    ├── NotReadyError (425)
    ├── TooManyRequestsError (429)
    ├── RuntimeUnavailableError (503)
    └── InternalError (500)

The API maps ``status`` to the HTTP response; the CLI prints the message and exits 1; the MCP
server lets the error become a tool error the model reads.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConflictError",
    "FileNotFoundInStoreError",
    "ForbiddenError",
    "GoneError",
    "ImageNotFoundError",
    "InternalError",
    "InvalidRequestError",
    "LimitExceededError",
    "NotFoundError",
    "NotReadyError",
    "OperationNotFoundError",
    "PathNotFoundError",
    "PayloadTooLargeError",
    "RegistryError",
    "RequestTimeoutError",
    "RuntimeUnavailableError",
    "SandtreeError",
    "ServerUnavailableError",
    "TokenExpiredError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnprocessableError",
    "error_for_status",
]


class SandtreeError(Exception):
    """Base class of every error sandtree raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "error"
    #: Seconds a client should wait before trying again (the answer's ``Retry-After``);
    #: ``None`` for errors that trying again will not mend.
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(SandtreeError):
    """The request is malformed or asks for something impossible."""

    status = 400
    code = "invalid_request"


class LimitExceededError(InvalidRequestError):
    """A value is above a server or token limit."""

    code = "limit_exceeded"


class UnauthorizedError(SandtreeError):
    """No token, or a token the server does not know."""

    status = 401
    code = "unauthorized"


class TokenExpiredError(UnauthorizedError):
    """The token is known but past its expiry; a new one is needed."""

    code = "token_expired"


class ForbiddenError(SandtreeError):
    """The token lacks the permission the call needs."""

    status = 403
    code = "forbidden"


class NotFoundError(SandtreeError):
    """Something named by the request does not exist (or is not visible to the caller)."""

    status = 404
    code = "not_found"


class ImageNotFoundError(NotFoundError):
    code = "image_not_found"


class OperationNotFoundError(NotFoundError):
    code = "operation_not_found"


class FileNotFoundInStoreError(NotFoundError):
    code = "file_not_found"


class PathNotFoundError(NotFoundError):
    code = "path_not_found"


class RequestTimeoutError(SandtreeError):
    """The client sent its request too slowly (headers or body); send it again, whole."""

    status = 408
    code = "request_timeout"


class ConflictError(SandtreeError):
    """The request conflicts with the current state (e.g. cancelling a finished operation)."""

    status = 409
    code = "conflict"


class GoneError(SandtreeError):
    """The thing existed but is no longer available."""

    status = 410
    code = "gone"


class PayloadTooLargeError(SandtreeError):
    """A request body is larger than the server accepts; the message says what to send."""

    status = 413
    code = "payload_too_large"


class UnprocessableError(SandtreeError):
    """The request is well-formed but names the wrong kind of thing (a directory to download)."""

    status = 422
    code = "unprocessable"


class NotReadyError(SandtreeError):
    """The thing exists but cannot be served yet; retry shortly."""

    status = 425
    code = "not_ready"
    retry_after = 1


class TooManyRequestsError(SandtreeError):
    """A per-token limit on work in flight is reached; retry when some of it has ended."""

    status = 429
    code = "too_many_requests"
    retry_after = 1


class RuntimeUnavailableError(SandtreeError):
    """The host cannot run sandboxes of the requested kind."""

    status = 503
    code = "runtime_unavailable"


class RegistryError(SandtreeError):
    """An OCI registry could not be reached, refused the credentials, or lacks the image."""

    status = 502
    code = "registry"


class ServerUnavailableError(SandtreeError):
    """A client could not reach the sandtree server (or it answered garbage)."""

    status = 503
    code = "server_unavailable"


class InternalError(SandtreeError):
    """A bug or a host failure; the message says what failed."""

    status = 500
    code = "internal"


def error_for_status(status: int, message: str) -> SandtreeError:
    """The error a client raises for an error answer: the class that owns ``status``."""
    for cls in _BY_STATUS:
        if cls.status == status:
            return cls(message)
    return InternalError(f"the server answered {status}: {message}")


_BY_STATUS: tuple[type[SandtreeError], ...] = (
    InvalidRequestError,
    UnauthorizedError,
    ForbiddenError,
    NotFoundError,
    RequestTimeoutError,
    ConflictError,
    GoneError,
    PayloadTooLargeError,
    UnprocessableError,
    NotReadyError,
    TooManyRequestsError,
    RegistryError,
    RuntimeUnavailableError,
)
