"""The dashboard files a report inlines, and the linking of its ES modules into one script.

A report is one file that loads nothing, so the chart library and the dashboard's own chart
modules are copied into it. The modules are the files the dashboard serves (the report and
the post-mortem page draw the same chart from the same code); a module script cannot import
another that lives inside the same HTML file, so :func:`link_modules` joins them into one
classic script: each module becomes a function scope run once, its ``import`` lines become
reads of the modules run before it, its ``export`` keywords become the object it returns.

That is the whole of what the dashboard's modules use (``import {a, b as c} from "./x.js"``,
``import x from "./x.js"``, ``export function|const|class``, ``export default``); anything
else (``export let``, re-exports, dynamic ``import()``, ``import.meta``, a cycle) is refused
with :class:`LinkError`, so a later change to those files fails the report's tests rather
than producing a script that breaks in the browser.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

REPORT_SCRIPT = Path(__file__).with_name("report.js")
REPORT_STYLE = Path(__file__).with_name("report.css")
# The chart library as the app serves it under /ui/ (see gpuhistory.api.dashboard.VENDOR).
LIBRARY_SCRIPT = "vendor/uPlot.iife.min.js"
LIBRARY_STYLE = "vendor/uPlot.min.css"

_IMPORT = re.compile(r'^import\s+([^;]*?)\s+from\s+"\./([\w.-]+\.js)";[ \t]*$', re.M | re.S)
_EXPORT = re.compile(r"^export\s+(?:(default)\s+|(?:async\s+)?(?:function\*?|const|class)\s+"
                     r"(\w+))", re.M)
_NAMED = re.compile(r"^(\w+)(?:\s+as\s+(\w+))?$")
_UNSUPPORTED = (
    (re.compile(r"^\s*import\b(?!\s*\()", re.M), "an import the linker does not read"),
    (re.compile(r"\bimport\s*\(|\bimport\.meta\b"), "a dynamic import or import.meta"),
    (re.compile(r"^\s*export\b", re.M), "an export other than function, const, class, default"),
)
_CLOSING_TAG = re.compile(r"</(script|style)|<!--", re.I)


class AssetMissing(Exception):
    """A dashboard file a report needs is not there (the chart library not installed)."""


class LinkError(ValueError):
    """A module uses syntax the linker does not handle."""


def _dashboard_asset(relative_path: str) -> str:
    """The text of a dashboard file, named as the app serves it under ``/ui/``:
    ``js/charts.js``, ``vendor/uPlot.iife.min.js``.

    Found through :mod:`gpuhistory.assets`, the one place that knows where the shipped files
    live (in a checkout and in an installed wheel alike; no Flask app is needed: the CLI
    reads the database without one).
    """
    from gpuhistory import assets

    try:
        if relative_path.startswith("vendor/"):
            name = relative_path.removeprefix("vendor/")
            if name not in assets.VENDOR:
                raise AssetMissing(f"no dashboard library file {name!r}")
            path = assets.vendor_file(name)
        else:
            path = assets.dashboard_file(f"static/{relative_path}")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AssetMissing(
            f"the dashboard file {relative_path} is missing from the installed package: "
            "reinstall gpuhistory (in a checkout: git checkout web/)") from None


def inline_safe(text: str, what: str) -> str:
    """``text`` unchanged, if it can sit inside a <script> or <style> element as it is."""
    match = _CLOSING_TAG.search(text)
    if match:
        raise LinkError(f"{what} holds {match.group(0)!r}, which would end its element early")
    return text


def _module_var(name: str) -> str:
    return "__module_" + re.sub(r"\W", "_", name)


def _bindings(clause: str, module: str, where: str) -> str:
    """``const`` declarations for one import clause (default and/or named bindings)."""
    source = _module_var(module)
    default, _, named = clause.partition("{")
    default = default.strip().rstrip(",").strip()
    out = []
    if default:
        if not re.fullmatch(r"\w+", default):
            raise LinkError(f"{where}: cannot read the import {clause!r}")
        out.append(f"const {default} = {source}.default;")
    if named:
        parts = []
        for item in named.rstrip().removesuffix("}").split(","):
            item = " ".join(item.split())
            if not item:
                continue
            match = _NAMED.match(item)
            if match is None:
                raise LinkError(f"{where}: cannot read the import {clause!r}")
            name, alias = match.groups()
            parts.append(name if alias is None else f"{name}: {alias}")
        out.append(f"const {{{', '.join(parts)}}} = {source};")
    return " ".join(out)


def _convert(name: str, source: str) -> tuple[str, list[str]]:
    """One module as the body of a function scope, and the modules it imports (in order)."""
    imports: list[str] = []

    def imported(match: re.Match[str]) -> str:
        imports.append(match.group(2))
        return _bindings(match.group(1), match.group(2), name)

    body = _IMPORT.sub(imported, source)
    exports: list[str] = []

    def exported(match: re.Match[str]) -> str:
        if match.group(1):
            exports.append("default: __default")
            return "const __default = "
        exports.append(match.group(2))
        return match.group(0).removeprefix("export").lstrip()

    body = _EXPORT.sub(exported, body)
    for pattern, what in _UNSUPPORTED:
        if pattern.search(body):
            raise LinkError(f"{name}: {what}")
    return f"{body.rstrip()}\nreturn {{{', '.join(exports)}}};", imports


def link_modules(entry_name: str, entry_source: str,
                 read: Callable[[str], str]) -> str:
    """The entry module and every module it imports (read by name, ``read("charts.js")``)
    as one classic script, dependencies first."""
    ordered: list[tuple[str, str]] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, source: str, chain: tuple[str, ...]) -> None:
        state[name] = "visiting"
        body, imports = _convert(name, source)
        for dependency in imports:
            if state.get(dependency) == "visiting":
                raise LinkError("modules import each other: "
                                + " -> ".join((*chain, name, dependency)))
            if state.get(dependency) != "done":
                visit(dependency, read(dependency), (*chain, name))
        state[name] = "done"
        ordered.append((name, body))

    visit(entry_name, entry_source, ())
    parts = ['(() => {\n"use strict";']
    for name, body in ordered:
        parts.append(f"// -- {name}\nconst {_module_var(name)} = (() => {{\n{body}\n}})();")
    parts.append("})();")
    return inline_safe("\n".join(parts), "the linked report script")


def report_script() -> str:
    """The report's script: report.js and the dashboard modules it imports, linked."""
    return link_modules(REPORT_SCRIPT.name, REPORT_SCRIPT.read_text(encoding="utf-8"),
                        lambda name: _dashboard_asset(f"js/{name}"))


def library_script() -> str:
    """The chart library (uPlot's IIFE build: a classic script defining ``uPlot``)."""
    return inline_safe(_dashboard_asset(LIBRARY_SCRIPT), LIBRARY_SCRIPT)


def styles() -> tuple[str, str]:
    """The chart library's stylesheet and the report's own."""
    return (inline_safe(_dashboard_asset(LIBRARY_STYLE), LIBRARY_STYLE),
            inline_safe(REPORT_STYLE.read_text(encoding="utf-8"), REPORT_STYLE.name))
