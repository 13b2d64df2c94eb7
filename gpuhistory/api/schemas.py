"""Request and response models of the HTTP API (pydantic): validation and OpenAPI in one place.

Field names follow DESIGN §5 and stay the same in the API, the CLI's ``--json`` and Python.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
)
from pydantic_core import PydanticCustomError

from gpuhistory.clock import MAX_TIME_MS, parse_time
from gpuhistory.leases import rules
from gpuhistory.leases.rules import MAX_GPU_INDEX

ID_PATTERN = rules.ALLOCATION_ID_PATTERN


def _to_ms(value: str) -> int:
    try:
        ms = parse_time(value)
    except (ValueError, OverflowError):
        raise PydanticCustomError(
            "time_parsing", "use ISO-8601 UTC (2026-11-26T03:12:00Z) or epoch seconds"
        ) from None
    if not 0 <= ms <= MAX_TIME_MS:  # the log holds nothing before 1970; answers print years
        raise PydanticCustomError(
            "time_out_of_range", "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    return ms


if TYPE_CHECKING:  # a string on the wire, epoch milliseconds once validated
    TimeArg: TypeAlias = int
else:
    TimeArg = Annotated[
        Annotated[str, StringConstraints(max_length=64)], AfterValidator(_to_ms),
        Field(description="ISO-8601 (naive means UTC) or epoch seconds",
              examples=["2026-11-26T03:12:00Z", "1795716364"])]
GpuIndex = Annotated[int, Field(ge=0, le=MAX_GPU_INDEX, description="GPU index on this host")]
SlotIndex = Annotated[int, Field(
    ge=0, le=MAX_GPU_INDEX,
    description="the GPU's slot index on the host (default 0): the card there at the "
                "question's time")]
GpuUuid = Annotated[str, Field(
    min_length=1, max_length=96, pattern=r"^[^\x00-\x1f\x7f]+$",
    description="one card by its UUID (instead of, or with, gpu_id)")]


def _rule(check: Callable[[str], Any]) -> AfterValidator:
    """A lease rule (gpuhistory/leases/rules.py) as a field check: a refusal says what a
    valid value is in the words LeaseManager and the CLI use (422); a string that is not
    text (a lone surrogate) stays malformed input (400), as for every other field."""

    def validate(value: str) -> Any:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticCustomError("string_unicode", "the string is not valid unicode"
                                      ) from None
        try:
            return check(value)
        except ValueError as exc:
            raise PydanticCustomError("lease_rule", str(exc)) from None

    return AfterValidator(validate)


# Lease fields: the rules of gpuhistory/leases/rules.py, which LeaseManager applies too
# (checked by the rule itself; the pattern and limits stay in the OpenAPI document).
AllocationId = Annotated[str, Field(
    description=f"client-chosen id: {rules.ALLOCATION_ID_RULE}",
    json_schema_extra={"pattern": rules.ALLOCATION_ID_PATTERN}),
    _rule(rules.check_allocation_id)]
LeaseToken = Annotated[str, Field(min_length=1, max_length=rules.MAX_TOKEN_LENGTH,
                                  description="the token returned by allocate")]
Owner = Annotated[str, Field(
    description="who holds the lease (free text, no control characters)",
    json_schema_extra={"minLength": 1, "maxLength": rules.MAX_OWNER_LENGTH,
                       "pattern": rules.OWNER_PATTERN}),
    _rule(rules.check_owner)]
TtlSeconds = Annotated[float, Field(gt=0, le=rules.MAX_TTL_SECONDS, allow_inf_nan=False,
                                    description="lease lifetime in seconds")]
ALL_HOSTS = "*"
HostName = Annotated[str, Field(
    max_length=255, pattern=r"^[^\x00-\x1f\x7f*]+$",
    description="the host the GPU is stored under (default: this server's host)")]
HostFilter = Annotated[str, Field(
    max_length=255, pattern=r"^(\*|[^\x00-\x1f\x7f*]+)$",
    description="one host (default: this server's host), or * for every host")]


_SCHEMAS: dict[tuple[Any, ...], dict[str, Any]] = {}
_SHARED: dict[type, dict[str, Any]] = {}  # the argument-less schemas, read-only


class _FrozenDict(dict[str, Any]):
    """A cached JSON schema, shared by every request: reading it is free, changing it is
    an error (a caller that wants to change one asks for a copy: ``copy.deepcopy``)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a cached JSON schema is read-only; copy.deepcopy() it to change it")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        thawed: dict[str, Any] = _thawed(self)
        return thawed

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __reduce__(self) -> Any:
        return dict, (dict(self),)


def _frozen(value: Any) -> Any:
    """``value`` with every dict read-only and every list a tuple, all the way down."""
    if isinstance(value, dict):
        return _FrozenDict({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """A plain, changeable copy of a ``_frozen`` value (dicts and lists again)."""
    if isinstance(value, dict):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


class Strict(BaseModel):
    """Unknown fields are an error, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # flask-openapi3 asks for the schema (no arguments) on every request to parse the
        # query string, and only reads it: that call gets the one read-only copy, built
        # once. Calls with arguments (the OpenAPI document, built once) get a fresh copy.
        if not args and not kwargs:
            shared = _SHARED.get(cls)
            if shared is None:
                shared = _SHARED[cls] = _frozen(super().model_json_schema())
            return shared
        key = (cls, args, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))
        if key not in _SCHEMAS:
            _SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(_SCHEMAS[key])


# -- errors ------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. over_capacity")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    """Every error, with every status: {"error": {"code", "message", "details"}}."""

    error: ErrorDetail


# -- queries -----------------------------------------------------------------------------
class GpuQuery(Strict):
    gpu_id: SlotIndex | None = None
    uuid: GpuUuid | None = None
    host: HostName | None = None


class StatusQuery(GpuQuery):
    at: TimeArg | None = Field(None, description="answer as of this past time")


class StatusAllQuery(Strict):
    at: TimeArg | None = Field(None, description="answer as of this past time")
    host: HostFilter | None = None


class HistoryQuery(GpuQuery):
    since: TimeArg | None = None
    until: TimeArg | None = None
    limit: int | None = Field(None, ge=1, le=100_000,
                              description="most samples returned (default: history_size); "
                                          "raw samples only, not with resolution/points")
    resolution: Literal["raw", "1m", "1h", "auto"] | None = Field(
        None, description="answer buckets from this source (auto: the coarsest with at least "
                          "`points` buckets); without it and `points`, raw samples")
    points: int | None = Field(None, ge=1, le=10_000,
                               description="about how many buckets (default 500)")


class TrendQuery(GpuQuery):
    duration_minutes: float = Field(5, gt=0, le=525_600, allow_inf_nan=False)
    until: TimeArg | None = Field(None, description="window end (default now)")


class ThrottleQuery(GpuQuery):
    at: TimeArg | None = None


class LeasesQuery(Strict):
    gpu_id: GpuIndex | None = None
    host: HostFilter | None = None
    owner: Owner | None = None
    status: str | None = Field(None, pattern="^(active|expired|released)$")
    limit: int = Field(500, ge=1, le=10_000)


class EventsQuery(Strict):
    since_id: int = Field(0, ge=0, le=2**62, description="return events with a larger id")
    kind: str | None = Field(None, max_length=32, pattern=r"^[a-z_]+$")
    gpu_id: GpuIndex | None = None
    uuid: GpuUuid | None = None
    since: TimeArg | None = Field(None, description="only events at or after this time")
    until: TimeArg | None = Field(None, description="only events at or before this time")
    limit: int = Field(100, ge=1, le=10_000)


class StreamQuery(Strict):
    since_id: int | None = Field(None, ge=0, le=2**62,
                                 description="resume after this id (or Last-Event-ID)")
    kind: str | None = Field(None, max_length=32, pattern=r"^[a-z_]+$")
    gpu_id: GpuIndex | None = None
    uuid: GpuUuid | None = None


class IncidentsQuery(Strict):
    gpu_id: GpuIndex | None = Field(None, description="one slot, every card it held "
                                                      "(default: all)")
    uuid: GpuUuid | None = None
    host: HostFilter | None = None
    since: TimeArg | None = Field(None, description="incidents still going on at or after")
    until: TimeArg | None = Field(None, description="incidents started at or before")
    severity: str | None = Field(None, pattern="^(overheat|severe)$")
    limit: int = Field(100, ge=1, le=10_000)


class FleetHostsQuery(Strict):
    host: HostFilter = Field(ALL_HOSTS, description="one host, or * (default) for every host")
    gpus: bool = Field(False, description="list each host's GPUs too (compact rows)")


class ProcessesQuery(Strict):
    since: TimeArg | None = Field(None, description="processes still running at or after")
    until: TimeArg | None = Field(None, description="processes started at or before")
    user: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\x00-\x20\x7f]+$",
                             description="a user name, or a uid (digits)")
    job: str | None = Field(None, pattern=r"^[0-9]{1,32}$", description="a Slurm job id")
    container: str | None = Field(None, pattern=r"^[0-9a-fA-F]{4,64}$",
                                  description="a container id or its first digits (4 or "
                                              "more, as `docker ps` shows 12)")
    gpu_id: GpuIndex | None = Field(None, description="one slot, every card it held")
    uuid: GpuUuid | None = None
    host: HostFilter | None = None
    limit: int = Field(1000, ge=1, le=10_000, description="most processes listed (oldest "
                                                          "first; the rest are left out)")


class IncidentPath(BaseModel):
    incident_id: int = Field(ge=1, le=2**62, description="the incident's id")


class HostQuery(Strict):
    host: HostFilter | None = None


class IncidentQuery(HostQuery):
    max_samples: int = Field(5_000, ge=0, le=100_000,
                             description="context samples listed at most (thinned beyond; "
                                         "0: none; samples.csv has them all)")


# -- bodies ------------------------------------------------------------------------------
class StrictBody(Strict):
    """A JSON body: no type coercion either (``true`` or ``"5"`` is not a number of MiB)."""

    model_config = ConfigDict(extra="forbid", strict=True)


PlacedIndex = Annotated[SlotIndex | Literal["any"], Field(
    description='the GPU\'s slot index on the host (default 0), or "any": the service '
                "places the lease on a GPU that fits (docs/leases.md \"Placement\")")]
CoverId = Annotated[str, Field(pattern=rules.COVER_ID_PATTERN)]


class AllocateBody(StrictBody):
    allocation_id: AllocationId
    memory_mb: int = Field(ge=1, le=rules.MAX_MEMORY_MB, description="MiB to reserve")
    gpu_id: PlacedIndex | None = None
    pids: list[Annotated[int, Field(ge=1, le=rules.MAX_PID)]] | None = Field(
        None, max_length=rules.MAX_PIDS, description="the processes the lease covers")
    slurm_job: Annotated[CoverId, Field(max_length=rules.MAX_SLURM_JOB_LENGTH)] | None = Field(
        None, description="the Slurm job whose processes the lease covers")
    container: Annotated[CoverId, Field(max_length=rules.MAX_CONTAINER_LENGTH)] | None = Field(
        None, description="the container (its id, 12 characters or more of it) whose "
                          "processes the lease covers")
    uuid: GpuUuid | None = None
    host: HostName | None = None
    ttl_seconds: TtlSeconds | None = None
    owner: Owner | None = None


class RenewBody(StrictBody):
    allocation_id: AllocationId
    host: HostName | None = Field(None, description="the lease's host (default: this server's)")
    lease_token: LeaseToken | None = None
    ttl_seconds: TtlSeconds | None = None


class DeallocateBody(StrictBody):
    allocation_id: AllocationId
    host: HostName | None = Field(None, description="the lease's host (default: this server's)")
    lease_token: LeaseToken | None = None


def _config_patch_model() -> type[BaseModel]:
    """PUT /api/gpu/config: any subset of the keys; null removes a runtime change."""
    from gpuhistory.domain.config import Config

    fields: dict[str, Any] = {}
    for name, info in Config.model_fields.items():
        base = (bool if info.annotation is bool
                else int if info.annotation in (int, int | None) else float)
        fields[name] = (base | None, Field(None, description=info.description))
    return create_model("ConfigPatch", __config__=ConfigDict(extra="forbid", strict=True),
                        **fields)


if TYPE_CHECKING:  # built at run time from Config's fields: to the checker, a model
    ConfigPatch: TypeAlias = BaseModel
else:
    ConfigPatch = _config_patch_model()
