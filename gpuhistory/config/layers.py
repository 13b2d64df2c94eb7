"""The static layers under the runtime changes: the defaults, a TOML file, the environment."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gpuhistory.alerts.config import WEBHOOKS_ENV, WEBHOOKS_KEY, WebhookConfig, load_webhooks
from gpuhistory.domain.config import Config

ENV_PREFIX = "GPUHISTORY_"


class ConfigFileError(ValueError):
    """A configuration file or variable that cannot be used; the message says which key."""


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )


@dataclass(frozen=True)
class StaticLayers:
    """Values from the file and the environment, and which layer set each key."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    webhooks: tuple[WebhookConfig, ...] = ()  # [[webhooks]] or GPUHISTORY_WEBHOOKS (alerts)

    def config(self) -> Config:
        return Config.model_validate(self.values)


def load_static(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> StaticLayers:
    """Defaults ← ``path`` (TOML, keys at the top level or under [gpuhistory]) ← environment
    (``GPUHISTORY_TEMP_OPTIMAL=70``) ← ``overrides`` (command-line flags)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = dict.fromkeys(Config.model_fields, "default")
    file_webhooks = None
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigFileError(f"{path}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
        file_webhooks = data.pop(WEBHOOKS_KEY, None)
        data = data.get("gpuhistory", data)
        file_webhooks = data.pop(WEBHOOKS_KEY, file_webhooks)
        unknown = sorted(set(data) - set(Config.model_fields))
        if unknown:
            raise ConfigFileError(f"{path}: unknown key(s) {unknown}; "
                                  f"known: {sorted(Config.model_fields)}")
        values.update(data)
        sources.update(dict.fromkeys(data, "file"))
    for key in Config.model_fields:
        raw = environ.get(ENV_PREFIX + key.upper())
        if raw is not None and raw != "":
            values[key] = None if raw.lower() in ("none", "null") else raw
            sources[key] = "env"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            sources[key] = "flag"
    try:
        webhooks = load_webhooks(file_webhooks, environ.get(WEBHOOKS_ENV))
    except ValueError as exc:
        raise ConfigFileError(f"invalid webhooks: {exc}") from None
    layers = StaticLayers(values, sources, webhooks)
    try:
        layers.config()
    except ValidationError as exc:
        raise ConfigFileError(f"invalid configuration: {_explain(exc)}") from None
    return layers
