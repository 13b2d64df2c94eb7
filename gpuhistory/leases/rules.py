"""What a lease request may say: the one set of input rules of every surface.

The HTTP schemas (gpuhistory/api/schemas.py) build their fields from these constants and
patterns, ``LeaseManager`` (and so ``GPUManager``) checks its arguments with these
functions, and the CLI validates its options with them: an allocation id, owner, size,
TTL, GPU index or covers accepted by one surface is accepted by all, and one refused is
refused by all (a ValueError here, a 422 over HTTP, a usage error in the CLI).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from gpuhistory.leases.model import Covers

MAX_ID_LENGTH = 128
# Letters, digits and ._:@/+- ; the first a letter or digit (no spaces, no control characters:
# ids appear in URLs' query strings, shell scripts and log lines).
ALLOCATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$"
ALLOCATION_ID_RULE = "1-128 letters, digits and ._:@/+- starting with a letter or digit"
MAX_OWNER_LENGTH = 128
OWNER_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # free text without control characters
MAX_MEMORY_MB = 10_000_000  # MiB one lease may ask for (fits PostgreSQL's 32-bit column)
MAX_TTL_SECONDS = 30 * 86_400  # as config's lease_ttl_seconds
MAX_GPU_INDEX = 1023
MAX_TOKEN_LENGTH = 128
MAX_PIDS = 256  # pids one lease may name
MAX_PID = 4_194_304  # Linux's PID_MAX_LIMIT
COVER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
MAX_SLURM_JOB_LENGTH = 64
MAX_CONTAINER_LENGTH = 128

_ALLOCATION_ID = re.compile(ALLOCATION_ID_PATTERN)
_OWNER = re.compile(OWNER_PATTERN)
_COVER_ID = re.compile(COVER_ID_PATTERN)


def allocation_id_error(value: object) -> str | None:
    """Why ``value`` is not an allocation id (None when it is one)."""
    if not isinstance(value, str) or not _ALLOCATION_ID.fullmatch(value):
        return f"allocation_id must be {ALLOCATION_ID_RULE}"
    return None


def check_allocation_id(value: object) -> str:
    error = allocation_id_error(value)
    if error is not None:
        raise ValueError(error)
    return value  # type: ignore[return-value]  # a str: allocation_id_error checked it


def check_owner(value: object) -> str | None:
    """An owner: None, or 1-128 characters of free text without control characters."""
    if value is None:
        return None
    if (not isinstance(value, str) or len(value) > MAX_OWNER_LENGTH
            or not _OWNER.fullmatch(value) or not _is_text(value)):
        raise ValueError(f"owner must be 1-{MAX_OWNER_LENGTH} characters without control "
                         "characters")
    return value


def _is_text(value: str) -> bool:
    """Whether ``value`` can be stored as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_memory_mb(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("memory_mb must be an integer")
    if not 1 <= value <= MAX_MEMORY_MB:
        raise ValueError(f"memory_mb must be between 1 and {MAX_MEMORY_MB}")
    return value


def check_ttl_ms(ttl_seconds: object) -> int:
    """A TTL in seconds (greater than 0, at most 30 days) as whole milliseconds (>= 1)."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float):
        raise ValueError("ttl_seconds must be a number")
    if not math.isfinite(ttl_seconds) or ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be greater than 0")
    if ttl_seconds > MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be at most {MAX_TTL_SECONDS}")
    return max(1, round(ttl_seconds * 1000))


def check_gpu_index(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("gpu_id must be an integer")
    if not 0 <= value <= MAX_GPU_INDEX:
        raise ValueError(f"gpu_id must be between 0 and {MAX_GPU_INDEX}")
    return value


def check_lease_token(value: object) -> str | None:
    """A lease token as given: 1-128 characters, or None when none is given (which only an
    admin may do; an empty string is none given too, and refused as missing)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TOKEN_LENGTH:
        raise ValueError(f"lease_token must be 1-{MAX_TOKEN_LENGTH} characters")
    return value


def check_covers(covers: object) -> Covers:
    """A lease's covers, validated: at most MAX_PIDS pids of 1-MAX_PID (deduplicated,
    sorted), and Slurm job and container ids of letters, digits and ``._-``."""
    if covers is None:
        return Covers()
    if not isinstance(covers, Covers):
        raise ValueError("covers must be a Covers")
    pids = covers.pids
    if not isinstance(pids, tuple | list) or len(pids) > MAX_PIDS or any(
            isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_PID
            for p in pids):
        raise ValueError(f"pids must be at most {MAX_PIDS} integers between 1 and {MAX_PID}")
    for name, value, longest in (("slurm_job", covers.slurm_job, MAX_SLURM_JOB_LENGTH),
                                 ("container", covers.container, MAX_CONTAINER_LENGTH)):
        if value is not None and (not isinstance(value, str)
                                  or not _COVER_ID.fullmatch(value) or len(value) > longest):
            raise ValueError(f"{name} must be 1-{longest} letters, digits and ._- "
                             "(starting with a letter or digit)")
    return replace(covers, pids=tuple(sorted(set(pids))))
