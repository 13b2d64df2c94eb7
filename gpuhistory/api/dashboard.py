"""The web dashboard: the page at ``/``, its files under ``/ui/``, and the security headers.

The dashboard is static files that read the public JSON API (and the event stream) from the
browser, so everything it shows can also be scripted. Its one library, uPlot, ships inside
the package (``web/vendor/uplot/``, pinned by ``web/package-lock.json``) and is served from
here: no CDN, no Node.js. The files are found through ``gpuhistory.assets``. Should the
library be missing (a damaged install), ``/`` says so and the API keeps working.

Every response of the app (API, errors, event stream, dashboard) carries the security
headers: a strict Content-Security-Policy (files only: no inline script or style, nothing
from elsewhere), no MIME sniffing, no referrer, no framing.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, request, send_from_directory
from werkzeug.exceptions import NotFound

from gpuhistory import assets
from gpuhistory.api.errors import error_response

# What restores the library: it is part of the package, so a reinstall; in a checkout, the
# maintainer's command that copies it from npm again.
SETUP_COMMAND = ("reinstall gpuhistory (pip install --force-reinstall gpuhistory); "
                 "in a checkout: git checkout web/vendor, or make vendor")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

bp = Blueprint("dashboard", __name__)


def web_root() -> Path:
    """The folder holding index.html, static/ and vendor/: the installed package's
    (``DASHBOARD_ROOT`` overrides)."""
    root = current_app.config.get("DASHBOARD_ROOT")
    return assets.web_root() if root is None else Path(root)


def missing_assets(root: Path) -> list[str]:
    """The library files the page needs that are missing."""
    return [name for name, relative in assets.VENDOR.items() if not (root / relative).is_file()]


def _assets_missing(missing: list[str]) -> Response | tuple[Response, int]:
    message = (f"the dashboard's chart library is missing from this installation "
               f"({', '.join(missing)}): {SETUP_COMMAND}. "
               "The JSON API under /api works without it.")
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        page = ("<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">"
                "<title>gpuhistory: dashboard not installed</title>"
                f"<h1>Dashboard not installed</h1><p>{message}</p></html>")
        return Response(page, status=503, mimetype="text/html")
    return error_response(503, "dashboard_not_installed", message,
                          {"missing": missing, "setup": SETUP_COMMAND})


@bp.get("/")
def index() -> Response | tuple[Response, int]:
    """The dashboard page (503 saying how to restore it when its library is missing)."""
    root = web_root()
    missing = missing_assets(root)
    if missing:
        return _assets_missing(missing)
    return send_from_directory(root, "index.html", max_age=0)


@bp.get("/ui/vendor/<name>")
def vendor(name: str) -> Response:
    """The chart library's files (only those listed in ``assets.VENDOR``)."""
    relative = assets.VENDOR.get(name)
    if relative is None:
        raise NotFound(f"no dashboard library file {name!r}")
    path = web_root() / relative
    return send_from_directory(path.parent, path.name, max_age=0)


@bp.get("/ui/<path:filename>")
def static_file(filename: str) -> Response:
    """The dashboard's own files (web/static/); nothing outside that folder."""
    return send_from_directory(web_root() / "static", filename, max_age=0)


def install_security_headers(app: Flask) -> None:
    """Add the security headers to every response the app sends."""

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
