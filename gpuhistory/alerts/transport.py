"""One POST with the standard library (``urllib.request``): no new dependency.

Redirects are not followed (a 3xx is an answer like any other). The answer's status is all
that is kept; the body is never read. Errors are described without the URL, which may
carry a token.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

MAX_ERROR = 200


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt got: an HTTP status, or an error with no status."""

    http_status: int | None
    error: str | None
    duration_ms: int
    retry_after_s: float | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # urllib then raises HTTPError for the 3xx


_OPENER = urllib.request.build_opener(_NoRedirect)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: not honoured, the backoff applies
    return seconds if 0 <= seconds < 10**7 else None


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or type(exc).__name__}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP answer: {type(exc).__name__}"
    return type(exc).__name__


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    """POST ``body``; never raises for what the network or the receiver does."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    started = time.perf_counter()

    def elapsed() -> int:
        return round((time.perf_counter() - started) * 1000)

    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status = response.status
        return Outcome(status, None, elapsed())
    except urllib.error.HTTPError as exc:
        reason = str(exc.reason or "")[:60].strip()
        error = f"HTTP {exc.code}" + (f" {reason}" if reason else "")
        outcome = Outcome(exc.code, error[:MAX_ERROR], elapsed(),
                          _retry_after(exc.headers.get("Retry-After") if exc.headers else None))
        exc.close()
        return outcome
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(None, _describe(exc, timeout)[:MAX_ERROR], elapsed())
