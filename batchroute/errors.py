"""The one error tree of batchroute.

Every failure a user can see is a :class:`BatchrouteError`. Errors from aiohttp, providers,
Redis and the database are mapped to these classes at the boundary (``raise ... from exc``) so
callers never need to catch third-party exception types.
"""

from __future__ import annotations


class BatchrouteError(Exception):
    """Raised when anything in batchroute fails; the root of every error we raise."""


class ConfigError(BatchrouteError):
    """Raised when settings or the model registry are invalid; the message names each bad field."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message if not self.problems else message + "\n  " + "\n  ".join(self.problems))


class InputError(BatchrouteError):
    """Raised when one line of a job file is unusable; carries file, line number and field."""

    def __init__(self, reason: str, *, line: int | None = None, field: str | None = None,
                 source: str | None = None) -> None:
        self.reason = reason
        self.line = line
        self.field = field
        self.source = source
        super().__init__(reason)

    def __str__(self) -> str:
        where = [str(w) for w in (self.source, f"line {self.line}" if self.line is not None else None,
                                  f"field {self.field!r}" if self.field else None) if w]
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


class NotFoundError(BatchrouteError):
    """Raised when a job, request or model named by the user does not exist."""


class RoutingError(BatchrouteError):
    """Raised when no model is eligible for a request (context too long, all excluded, over budget)."""


class AnalyzerError(BatchrouteError):
    """Raised when the embedding model or the exemplar index cannot be loaded or built."""


class StorageError(BatchrouteError):
    """Raised when the database cannot be reached or a write fails."""


class BrokerError(BatchrouteError):
    """Raised when the message broker (Redis / RabbitMQ) cannot be reached."""


class ProviderError(BatchrouteError):
    """Raised when a provider call fails; ``retryable`` says whether another attempt may succeed."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None, provider: str | None = None,
                 model: str | None = None, retry_after_s: float | None = None,
                 body: str | None = None) -> None:
        self.status = status
        self.provider = provider
        self.model = model
        self.retry_after_s = retry_after_s
        self.body = body
        super().__init__(message)

    @property
    def kind(self) -> str:
        """Short machine-readable name of the failure, stored on attempt rows."""
        return type(self).__name__


class ProviderBadRequest(ProviderError):
    """Raised when the provider rejects the request itself (4xx other than 408/409/429): never retried."""


class ProviderAuthError(ProviderBadRequest):
    """Raised when the provider rejects our credentials (401/403) or the key env var is unset."""


class ProviderRateLimited(ProviderError):
    """Raised when the provider answers 429; ``retry_after_s`` holds its requested pause."""

    retryable = True


class ProviderUnavailable(ProviderError):
    """Raised on 408, 409, 5xx, connection resets and refused connections: retried with backoff."""

    retryable = True


class ProviderTimeout(ProviderError):
    """Raised when a provider call exceeds its timeout: retried with backoff."""

    retryable = True


class ProviderProtocolError(ProviderError):
    """Raised when a provider answers 2xx with a body we cannot parse (malformed JSON, no choices)."""

    retryable = True


class Retry(BatchrouteError):
    """Raised to ask for another attempt after ``delay_s`` seconds (like arq/dramatiq ``Retry``)."""

    def __init__(self, delay_s: float, reason: str = "") -> None:
        self.delay_s = delay_s
        self.reason = reason
        super().__init__(f"retry in {delay_s:.3f}s" + (f": {reason}" if reason else ""))


class BudgetExceeded(BatchrouteError):
    """Raised when dispatching a request would push its job or tag over budget; the job pauses."""
