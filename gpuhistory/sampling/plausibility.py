"""Readings that cannot be true: a pure check, and what the pipeline does about them.

Drivers and failing sensors sometimes answer with sentinels or nonsense instead of an
error: a temperature of 0 or 255 °C, more memory used than the card has, a utilization
above 100 %. Such a field is *implausible*: it is stored as NULL (never as the value), the
GPU's state is classified on the field's last plausible value instead (so garbage never
makes a transition), and the pipeline logs ``reading_invalid`` when a field turns
implausible and ``reading_valid`` when every field of the GPU is plausible again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gpuhistory.domain.reading import Reading

# Exclusive bounds of a believable temperature, °C: 0 and 255 (and 65535) are what broken
# sensors and failed reads report; no working GPU idles at 0 °C or survives 150 °C.
MIN_TEMPERATURE_C = 0
MAX_TEMPERATURE_C = 150

# The fields the check covers, in the order events list them.
CHECKED_FIELDS = ("temperature_c", "memory_temperature_c", "memory_used_mib",
                  "utilization_pct")


def implausible(r: Reading) -> dict[str, Any] | None:
    """The fields of ``r`` that cannot be true, with the values reported; None if none."""
    bad: dict[str, Any] | None = None
    t = r.temperature_c
    if t is not None and not MIN_TEMPERATURE_C < t < MAX_TEMPERATURE_C:
        bad = {"temperature_c": t}
    t = r.memory_temperature_c
    if t is not None and not MIN_TEMPERATURE_C < t < MAX_TEMPERATURE_C:
        bad = bad or {}
        bad["memory_temperature_c"] = t
    used, total = r.memory_used_mib, r.memory_total_mib
    if used is not None and (used < 0 or (total is not None and used > total)):
        bad = bad or {}
        bad["memory_used_mib"] = used
    u = r.utilization_pct
    if u is not None and not 0 <= u <= 100:
        bad = bad or {}
        bad["utilization_pct"] = u
    return bad


def cleared(r: Reading, fields: dict[str, Any]) -> Reading:
    """``r`` with ``fields`` set to None: what the log stores."""
    nulls: dict[str, Any] = dict.fromkeys(fields)
    return replace(r, **nulls)


def described(fields: dict[str, Any], total_mib: int | None) -> dict[str, Any]:
    """The event payload naming each implausible field and the value it reported."""
    payload: dict[str, Any] = {"fields": dict(fields)}
    if "memory_used_mib" in fields:
        payload["memory_total_mib"] = total_mib
    return payload
