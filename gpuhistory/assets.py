"""The files the package ships beside its code: the dashboard and the Alembic migrations.

The repository keeps them at its top (``web/``, ``migrations/``); packaging installs them as
the packages ``gpuhistory.web`` and ``gpuhistory.migrations`` (``pyproject.toml``'s
``package-dir``). They are found through ``importlib.resources``, so the same code finds
them in a checkout's editable install and in an installed wheel, never by the repository's
path. Anything that needs a dashboard file (the chart library, say) reads it from here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

WEB_PACKAGE = "gpuhistory.web"
MIGRATIONS_PACKAGE = "gpuhistory.migrations"
# The chart library's files, by the name the page loads them under (/ui/vendor/<name>), and
# where they are in the dashboard's folder (copied from npm by tools/vendor_uplot.py).
VENDOR = {
    "uPlot.iife.min.js": "vendor/uplot/uPlot.iife.min.js",
    "uPlot.min.css": "vendor/uplot/uPlot.min.css",
}
VENDOR_LICENSE = "vendor/uplot/LICENSE"


def _folder(package: str) -> Path:
    """The installed folder of ``package``; it must be plain files on disk (Flask and
    Alembic open paths), which pip's installs always are."""
    root = resources.files(package)
    if not isinstance(root, Path):
        raise RuntimeError(f"{package} is not installed as files on disk ({root!r}): "
                           "install gpuhistory from its wheel or sdist")
    return root


def web_root() -> Path:
    """The dashboard's folder: ``index.html``, ``static/`` and ``vendor/``."""
    return _folder(WEB_PACKAGE)


def dashboard_file(relative: str) -> Path:
    """A file of the dashboard by its path inside that folder (``static/js/main.js``,
    ``vendor/uplot/uPlot.iife.min.js``); ValueError for a path leaving the folder."""
    root = web_root()
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{relative!r} is not inside the dashboard's folder")
    return path


def vendor_file(name: str) -> Path:
    """The chart library's file served as ``/ui/vendor/<name>`` (KeyError for another)."""
    return dashboard_file(VENDOR[name])


def vendor_bytes(name: str) -> bytes:
    """The content of :func:`vendor_file` (``uPlot.iife.min.js`` or ``uPlot.min.css``)."""
    return vendor_file(name).read_bytes()


def migrations_dir() -> Path:
    """The Alembic script folder (``env.py``, ``versions/``)."""
    return _folder(MIGRATIONS_PACKAGE)
