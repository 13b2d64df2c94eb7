"""Words for a compute process's owner, from its document (storage/processes.py): who ran
it and where, as short as a table cell ("job 4711.0") or a clause of a sentence
("job 4711 of alice"). Pure functions, shared by the CLI and the post-mortems."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SHORT_CONTAINER = 12  # as `docker ps` shows a container id
SHORT_POD = 8
MAX_LISTED = 5  # processes named in a sentence; the rest are counted


def where_label(p: Mapping[str, Any]) -> str | None:
    """Where the process ran, in a few characters: ``job 4711.0``, ``pod 0f1d2c3b/
    3f4a3f4a3f4a``, ``ctr 3f4a3f4a3f4a``, ``trainer.service``; None when unknown."""
    if p.get("slurm_job_id"):
        step = p.get("slurm_step")
        return f"job {p['slurm_job_id']}" + (f".{step}" if step else "")
    container = (p.get("container_id") or "")[:SHORT_CONTAINER]
    if p.get("pod_uid"):
        return f"pod {p['pod_uid'][:SHORT_POD]}" + (f"/{container}" if container else "")
    if container:
        return f"ctr {container}"
    return p.get("systemd_unit") or None


def describe(p: Mapping[str, Any]) -> str:
    """The process as a clause: ``job 4711 of alice``, ``container 3f4a3f4a3f4a of bob``,
    ``trainer.service of root``, else ``python (pid 42) of alice``."""
    unit = p.get("systemd_unit") or ""
    if p.get("slurm_job_id"):
        what = f"job {p['slurm_job_id']}"
    elif p.get("pod_uid"):
        what = f"pod {p['pod_uid'][:SHORT_POD]}"
    elif p.get("container_id"):
        what = f"container {p['container_id'][:SHORT_CONTAINER]}"
    elif unit.endswith(".service"):
        what = unit
    else:
        what = f"{p.get('name') or 'a process'} (pid {p['pid']})"
    return what + (f" of {p['user']}" if p.get("user") else "")


def running_clause(processes: Sequence[Mapping[str, Any]]) -> str | None:
    """``job 4711 of alice was running``, ``... and 2 more were running``; one clause
    per job, container, pod or unit however many of its processes there were; None when
    there were none."""
    named = list(dict.fromkeys(describe(p) for p in processes))
    if not named:
        return None
    shown = named[:MAX_LISTED]
    rest = len(named) - len(shown)
    if rest:
        shown.append(f"{rest} more")
    text = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return text + (" was running" if len(shown) == 1 else " were running")
