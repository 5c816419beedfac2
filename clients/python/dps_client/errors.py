"""The client's errors. Every error the platform answers is one envelope
`{"error", "detail", "fields"}`; `ApiError` carries it as attributes."""

from __future__ import annotations

from typing import Any

import httpx


class DPSError(Exception):
    """Base of every error this package raises."""


class ApiError(DPSError):
    """The platform answered 4xx/5xx (after the retries, for the retryable ones).

    `error` is the envelope's name (`UnknownFeature`, `RateLimited`, ...), `detail` its
    text, `fields` the per-field problems (`loc`, `msg`, `type`) of a 422."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        fields: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.fields = fields or []
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Builds the error from an error answer; a body that is not the envelope (a
        proxy's HTML page) keeps its first characters as the detail."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            fields = body.get("fields")
            return cls(
                response.status_code,
                str(body["error"]),
                str(body.get("detail", "")),
                fields if isinstance(fields, list) else None,
                retry_after_seconds(response),
            )
        return cls(response.status_code, "HTTPError", response.text[:300])


class ConnectionFailed(DPSError):
    """The platform could not be reached (or did not answer in time) on any attempt."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds, when it is a number (the platform always sends
    one); an HTTP date or garbage counts as absent."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None
