"""The web dashboard: the page at ``/``, its files under ``/ui/``, and the security headers.

The dashboard is static files that read the public JSON API (and the event stream) from the
browser, so everything it shows can also be scripted. Its one library, uPlot, is installed
by the set-up command (``npm ci --prefix web``) and served from here: no CDN. When it is
missing, ``/`` says how to install it and the API keeps working.

Every response of the app (API, errors, event stream, dashboard) carries the security
headers: a strict Content-Security-Policy (files only: no inline script or style, nothing
from elsewhere), no MIME sniffing, no referrer, no framing.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, request, send_from_directory
from werkzeug.exceptions import NotFound

from gpuhistory.api.errors import error_response

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
SETUP_COMMAND = "make serve (or: npm ci --prefix web --no-audit --no-fund)"
# The library files the page loads, as served under /ui/vendor/, and where npm puts them.
VENDOR = {
    "uPlot.iife.min.js": "node_modules/uplot/dist/uPlot.iife.min.js",
    "uPlot.min.css": "node_modules/uplot/dist/uPlot.min.css",
}
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
    """The folder holding index.html, static/ and node_modules/ (``DASHBOARD_ROOT`` overrides)."""
    return Path(current_app.config.get("DASHBOARD_ROOT", WEB_ROOT))


def missing_assets(root: Path) -> list[str]:
    """The library files the page needs that are not installed."""
    return [name for name, relative in VENDOR.items() if not (root / relative).is_file()]


def _assets_missing(missing: list[str]) -> Response | tuple[Response, int]:
    message = (f"the dashboard's libraries are not installed ({', '.join(missing)}): run the "
               f"set-up command, {SETUP_COMMAND}. The JSON API under /api works without them.")
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        page = ("<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">"
                "<title>gpuhistory: dashboard not installed</title>"
                f"<h1>Dashboard not installed</h1><p>{message}</p></html>")
        return Response(page, status=503, mimetype="text/html")
    return error_response(503, "dashboard_not_installed", message,
                          {"missing": missing, "setup": SETUP_COMMAND})


@bp.get("/")
def index() -> Response | tuple[Response, int]:
    """The dashboard page (503 with the set-up command when its libraries are missing)."""
    root = web_root()
    missing = missing_assets(root)
    if missing:
        return _assets_missing(missing)
    return send_from_directory(root, "index.html", max_age=0)


@bp.get("/ui/vendor/<name>")
def vendor(name: str) -> Response:
    """The installed library files (only those listed in VENDOR)."""
    relative = VENDOR.get(name)
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
