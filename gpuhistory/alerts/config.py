"""Webhook settings: a list of webhooks from the TOML file (``[[webhooks]]``) or the
environment (``GPUHISTORY_WEBHOOKS``, a JSON list of the same tables), validated by pydantic
when a process starts.

A webhook's ``secret`` is a ``SecretStr``: its repr, every log line and every error message
show ``**********``; it is only ever used to sign. Its URL is shown only as
:func:`redact_url` gives it (scheme, host and port), since receivers often carry a token in
the path or the query.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from gpuhistory.domain.events import EventKind

WEBHOOKS_KEY = "webhooks"
WEBHOOKS_ENV = "GPUHISTORY_WEBHOOKS"
ALL_KINDS = "*"
KNOWN_KINDS = tuple(k.value for k in EventKind)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_GPU_INDEX = 1023

FORMATS = ("signed", "alertmanager", "chat")
Format = Literal["signed", "alertmanager", "chat"]
# Alertmanager alerts: the kinds that fire one, and the kinds that resolve them.
ALERT_KINDS = ("critical", "overheat", "gpu_lost", "xid")
RESOLVING_KINDS = ("resume", "gpu_found")

GpuRef = Annotated[int, Field(ge=0, le=MAX_GPU_INDEX)] | Annotated[
    str, Field(min_length=1, max_length=96, pattern=r"^[^\x00-\x1f\x7f]+$")]


def redact_url(url: str) -> str:
    """What logs, errors and the API show of a webhook URL: ``scheme://host[:port]/…``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    return origin + ("/…" if hidden else "/")


class WebhookConfig(BaseModel):
    """One webhook: where to POST, which events, and how to retry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(max_length=2048, repr=False,
                     description="http:// or https:// URL to POST events to (alertmanager: "
                                 "Alertmanager's base URL).")
    format: Format = Field(
        "signed", description="signed: our event JSON, signed; alertmanager: alerts to "
                              "Alertmanager's v2 API; chat: a Slack/Mattermost {\"text\": ...}.")
    kinds: tuple[str, ...] = Field(
        min_length=1, description='Event kinds to deliver (["*"]: every kind). alertmanager: '
                                  f'the alerts, among {list(ALERT_KINDS)} (default: all).')
    gpus: tuple[GpuRef, ...] | None = Field(
        None, min_length=1,
        description="Only events of these GPUs (indexes and/or UUIDs); unset: every GPU and "
                    "the events that have no GPU.")
    secret: SecretStr | None = Field(
        None, description="Shared secret for the X-Gpuhistory-Signature HMAC (16-256 chars).")
    name: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="The webhook's id: the cursor, the delivery log and the idempotency key "
                    "use it (default: derived from the URL).")
    timeout_seconds: float = Field(5, ge=0.1, le=60, description="Seconds one POST may take.")
    retry_initial_seconds: float = Field(
        2, ge=0.05, le=3600, description="Backoff after the first failed attempt.")
    retry_max_seconds: float = Field(
        300, ge=0.05, le=86_400, description="Cap on the backoff between attempts.")
    give_up_after_seconds: float = Field(
        86_400, ge=1, le=30 * 86_400,
        description="An event not delivered this long after it happened is given up.")
    dashboard_url: str | None = Field(
        None, max_length=2048,
        description="The dashboard's base URL (http(s)://host:port/): alerts and chat "
                    "messages link to its pages.")
    resend_seconds: float = Field(
        60, ge=1, le=3600,
        description="alertmanager: firing alerts are re-sent this often, each valid for 4x "
                    "as long.")
    xid_alert_seconds: float = Field(
        3600, ge=60, le=7 * 86_400,
        description="alertmanager: how long an XID alert fires (nothing resolves it).")

    @model_validator(mode="before")
    @classmethod
    def _alertmanager_kinds(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("format") == "alertmanager" \
                and "kinds" not in data:
            return {**data, "kinds": list(ALERT_KINDS)}
        return data

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Messages never repeat the URL: it may carry a token.
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("the URL scheme must be http or https")
        if not parts.hostname:
            raise ValueError("the URL needs a host")
        if any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError("the URL must not contain spaces or control characters")
        return value

    @field_validator("dashboard_url")
    @classmethod
    def _dashboard_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError("the dashboard URL must be an http(s) URL with a host")
        return value.rstrip("/")

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not 16 <= len(value.get_secret_value()) <= 256:
            raise ValueError("the secret must be 16 to 256 characters long")
        return value

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in value if k != ALL_KINDS and k not in KNOWN_KINDS]
        if unknown:
            raise ValueError(f"unknown event kind(s) {unknown}; known: {list(KNOWN_KINDS)} "
                             f"or {ALL_KINDS!r} for all")
        if ALL_KINDS in value:
            return (ALL_KINDS,)
        return tuple(dict.fromkeys(value))

    @field_validator("gpus", mode="before")
    @classmethod
    def _digits_are_indexes(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(int(v) if isinstance(v, str) and v.isdigit() else v for v in value)
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> WebhookConfig:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must be at least retry_initial_seconds")
        if self.format != "signed" and self.secret is not None:
            raise ValueError(f"a secret signs only format 'signed' webhooks; a {self.format} "
                             "receiver does not check it (use https://user:password@host/ "
                             "for authentication)")
        if self.format == "alertmanager":
            wrong = [k for k in self.kinds if k not in ALERT_KINDS + RESOLVING_KINDS]
            if wrong:
                raise ValueError(f"an alertmanager webhook sends the alerts {list(ALERT_KINDS)}"
                                 f" (resolved by {list(RESOLVING_KINDS)}), not {wrong}")
        return self

    @property
    def alert_kinds(self) -> tuple[str, ...]:
        """alertmanager: the kinds that fire the alerts it sends."""
        return tuple(k for k in ALERT_KINDS if k in self.kinds)

    @property
    def event_kinds(self) -> tuple[str, ...]:
        """The event kinds it reads from the log (alertmanager: also those that resolve)."""
        if self.format == "alertmanager":
            return self.alert_kinds + RESOLVING_KINDS
        return self.kinds

    @property
    def id(self) -> str:
        """``name``, or ``webhook-`` and 8 hex digits of the URL's SHA-256."""
        if self.name:
            return self.name
        return "webhook-" + hashlib.sha256(self.url.encode()).hexdigest()[:8]

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    @property
    def request_url(self) -> str:
        """The URL without its user-info (``https://user:password@host/`` becomes Basic
        authentication, see :meth:`auth_headers`)."""
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def auth_headers(self) -> dict[str, str]:
        parts = urlsplit(self.url)
        if parts.username is None:
            return {}
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}

    @property
    def gpu_indexes(self) -> tuple[int, ...]:
        return tuple(g for g in self.gpus or () if isinstance(g, int))

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        return tuple(g for g in self.gpus or () if isinstance(g, str))

    @property
    def post_url(self) -> str:
        """Where the requests go: ``request_url``; for alertmanager, its ``/api/v2/alerts``
        under the base URL given (unless the URL already ends so)."""
        url = self.request_url
        if self.format != "alertmanager":
            return url
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        if not path.endswith("/api/v2/alerts"):
            path += "/api/v2/alerts"
        return urlunsplit(parts._replace(path=path))

    def settings(self) -> dict[str, Any]:
        """The delivery settings, as the API shows them."""
        out: dict[str, Any] = {"format": self.format, "timeout_seconds": self.timeout_seconds,
                               "retry_initial_seconds": self.retry_initial_seconds,
                               "retry_max_seconds": self.retry_max_seconds,
                               "give_up_after_seconds": self.give_up_after_seconds}
        if self.format == "alertmanager":
            out |= {"resend_seconds": self.resend_seconds,
                    "xid_alert_seconds": self.xid_alert_seconds}
        return out


_LIST = TypeAdapter(tuple[WebhookConfig, ...])


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{WEBHOOKS_KEY}." + ".".join(str(p) for p in e["loc"]) + f": {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False))


def parse_webhooks(raw: Any) -> tuple[WebhookConfig, ...]:
    """Validate a list of webhook tables; raises ValueError naming each bad key (values,
    URLs and secrets are never repeated in the message)."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        raise ValueError(f"{WEBHOOKS_KEY} must be a list of tables ([[{WEBHOOKS_KEY}]] in "
                         "TOML), not one table")
    try:
        hooks = _LIST.validate_python(raw)
    except ValidationError as exc:
        raise ValueError(_explain(exc)) from None
    seen: dict[str, int] = {}
    for i, hook in enumerate(hooks):
        if hook.id in seen:
            raise ValueError(f"{WEBHOOKS_KEY}.{i}: the id {hook.id!r} is also that of "
                             f"{WEBHOOKS_KEY}.{seen[hook.id]}; give each webhook its own name")
        seen[hook.id] = i
    return hooks


def load_webhooks(file_value: Any, env_value: str | None) -> tuple[WebhookConfig, ...]:
    """The webhooks in force: ``GPUHISTORY_WEBHOOKS`` (JSON) when set, else the file's."""
    if env_value is not None and env_value.strip() != "":
        try:
            raw = json.loads(env_value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{WEBHOOKS_ENV} is not valid JSON: {exc.msg} at character "
                             f"{exc.pos}") from None
        if not isinstance(raw, list):
            raise ValueError(f"{WEBHOOKS_ENV} must be a JSON list of webhook objects")
        return parse_webhooks(raw)
    return parse_webhooks(file_value)


__all__ = ["ALERT_KINDS", "ALL_KINDS", "FORMATS", "NAME_PATTERN", "RESOLVING_KINDS",
           "WEBHOOKS_ENV", "WEBHOOKS_KEY", "WebhookConfig", "load_webhooks", "parse_webhooks",
           "redact_url"]

