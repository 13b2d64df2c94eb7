"""The API token: when configured, every mutating request must present it.

``Authorization: Bearer <token>``; compared in constant time. Missing → 401, wrong → 403.
Reads stay open (the service binds loopback unless a token is set).

A mutating request sent by a web page of another origin (its ``Origin`` header names
another host) is refused (403 ``cross_origin``) with or without a token: without one, any
page open in a browser on the GPU box could otherwise POST a body-less form to
``/api/gpu/monitoring/stop`` on 127.0.0.1.

Without a token (the service then binds loopback) every request must also be addressed to
a loopback name in its ``Host`` header (``localhost``, ``127.0.0.1``, ``[::1]``): a
DNS-rebinding page — a hostile name resolved to 127.0.0.1 — counts as same-origin for the
browser, but its requests carry the hostile name and are refused (403 ``host_not_allowed``).
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from flask import Flask, request

from gpuhistory.api.errors import ApiError

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def is_admin(expected: str | None) -> bool:
    """True when an API token is configured and the request presents it."""
    given = presented_token()
    return bool(expected and given and hmac.compare_digest(given.encode(), expected.encode()))


def is_cross_origin() -> bool:
    """True when a browser says the request comes from a page of another origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not sent by a browser's cross-origin request
    return urlsplit(origin).netloc.lower() != request.host.lower()  # ("null" too)


def is_loopback_host(host: str) -> bool:
    """True when a ``Host`` header (name[:port]) names this machine's loopback."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def install_auth(app: Flask) -> None:
    @app.before_request
    def _require_token() -> None:
        context = app.extensions["gpuhistory"]
        expected = context.api_token
        if not expected and not is_loopback_host(request.host):
            raise ApiError(403, "host_not_allowed",
                           "without an API token this server answers only requests addressed "
                           "to localhost, 127.0.0.1 or [::1]; set GPUHISTORY_TOKEN to serve "
                           "other names")
        if request.method in MUTATING and is_cross_origin():
            raise ApiError(403, "cross_origin",
                           "a change sent by a web page of another origin is refused")
        if not expected or request.method not in MUTATING:
            return
        given = presented_token()
        if given is None:
            raise ApiError(401, "unauthorized",
                           "this server requires an API token: Authorization: Bearer <token>")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(403, "forbidden", "the API token is not valid")
