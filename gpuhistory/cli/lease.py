"""``gpuhistory lease acquire|renew|release|list``: GPU-memory leases from shell scripts.

Talks to a running server over its API (``--url``, GPUHISTORY_URL). The exit status says
what happened, so a script can branch on it without parsing text:

    0 ok · 1 other error · 2 usage error · 3 not found (404) · 4 conflict (409: over
    capacity, no GPU fits, duplicate id, lease not active) · 5 unauthorized/forbidden
    (401/403) · 6 server unreachable

    read -r ID TOKEN < <(gpuhistory lease acquire --memory-mb 20480 --ttl 600) || exit
    trap 'gpuhistory lease release "$ID" --token "$TOKEN"' EXIT
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from gpuhistory.cli.humanize import duration
from gpuhistory.client import DEFAULT_URL, ApiError, Client, ServiceUnavailable
from gpuhistory.leases import rules

EXIT_ERROR = 1
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_FORBIDDEN = 5
EXIT_UNREACHABLE = 6

F = TypeVar("F", bound=Callable[..., Any])


ANY = "any"


class GpuChoice(click.ParamType):
    """A GPU index 0-1023, or "any" (the server places the lease)."""

    name = "INDEX|any"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | str:
        top = rules.MAX_GPU_INDEX
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top:
            return value
        text = str(value).strip()
        if text == ANY:
            return ANY
        if text.isascii() and text.isdigit() and int(text) <= top:
            return int(text)
        self.fail(f'{value!r} is not a GPU index (0-{top}) or "any"', param, ctx)


GPU_CHOICE = GpuChoice()


def _checked(rule: Callable[[object], Any]) -> Callable[[click.Context, click.Parameter, Any],
                                                         Any]:
    """A click callback applying one of the lease rules (gpuhistory/leases/rules.py): a
    value the server would refuse is a usage error here, with the same words."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return rule(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


ALLOCATION_ID = _checked(rules.check_allocation_id)
OWNER = _checked(rules.check_owner)
TOKEN = _checked(rules.check_lease_token)
TTL = click.FloatRange(0, rules.MAX_TTL_SECONDS, min_open=True)


def exit_code(error: ApiError) -> int:
    """The CLI's exit status for an API error (see the module docstring)."""
    if isinstance(error, ServiceUnavailable):
        return EXIT_UNREACHABLE
    return {404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT, 401: EXIT_FORBIDDEN,
            403: EXIT_FORBIDDEN}.get(error.status, EXIT_ERROR)


def fail(error: ApiError) -> NoReturn:
    """Print ``error: <code>: <message>`` on stderr and exit with the mapped status."""
    click.echo(f"error: {error.code}: {error.message}", err=True)
    sys.exit(exit_code(error))


def url_option(fn: F) -> F:
    return click.option("--url", default=DEFAULT_URL, show_default=True,
                        envvar="GPUHISTORY_URL", show_envvar=True,
                        help="The gpuhistory server's base URL.")(fn)


def server_options(fn: F) -> F:
    fn = click.option("--api-token", envvar="GPUHISTORY_TOKEN", show_envvar=True,
                      help="The server's API token, when it has one "
                           "(sent as Authorization: Bearer).")(fn)
    return url_option(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the API's JSON document.")(fn)


def lease_token_option(fn: F) -> F:
    return click.option("--token", "lease_token", envvar="GPUHISTORY_LEASE_TOKEN",
                        show_envvar=True, callback=TOKEN,
                        help="The lease token printed by acquire (not needed with the "
                             "server's --api-token).")(fn)


def _client(url: str, api_token: str | None) -> Client:
    try:
        return Client(url, token=api_token)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None


def host_option(fleet: bool = False) -> Callable[[F], F]:
    """``--host``: the host whose GPU or lease (leases are per host and GPU)."""
    every = "; * lists every host's" if fleet else ""
    return click.option(
        "--host", "host", help=f"The host whose GPUs (default: the server's own host){every}.")


def _post(client: Client, path: str, **body: Any) -> dict[str, Any]:
    """POST the fields that are set (``host`` and the rest, as the Client's methods do)."""
    return client.request(
        "POST", path, body={k: v for k, v in body.items() if v is not None})


def _need_token(lease_token: str | None, api_token: str | None) -> None:
    if not lease_token and not api_token:
        raise click.UsageError("give the lease token with --token (or the server's "
                               "API token with --api-token)")


def _print(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


@click.group()
def lease() -> None:
    """Reserve GPU memory on a running server: acquire, renew, release, list.

    Exit status: 0 ok, 3 not found, 4 conflict (over capacity, duplicate id, lease not
    active), 5 unauthorized or forbidden, 6 server unreachable, 2 usage error.
    """


@lease.command()
@server_options
@click.option("--memory-mb", required=True, type=click.IntRange(1, rules.MAX_MEMORY_MB),
              help="MiB to reserve.")
@click.option("--gpu-id", "--gpu", "gpu_id", default="0", show_default=True, type=GPU_CHOICE,
              help='GPU index on the host, or "any": the server chooses a GPU that fits '
                   "(not a hot or cooling one) and the answer names it.")
@click.option("--uuid", help="With --gpu any: only this card (by its UUID).")
@host_option()
@click.option("--ttl", type=TTL,
              help="Seconds until the lease expires unless renewed "
                   "(default: the server's lease_ttl_seconds, 300).")
@click.option("--owner", callback=OWNER,
              help="Who holds the lease (free text; shown by list).")
@click.option("--id", "allocation_id", callback=ALLOCATION_ID,
              help=f"Allocation id: {rules.ALLOCATION_ID_RULE} "
                   "(default: <hostname>-<pid>-<random>).")
@click.option("--pid", "pids", multiple=True, type=click.IntRange(1, rules.MAX_PID),
              help="A process the lease covers (repeat for several).")
@click.option("--slurm-job", envvar="SLURM_JOB_ID", show_envvar=True,
              help="The Slurm job whose processes the lease covers (inside a job: its id).")
@click.option("--container", help="The container (id) whose processes the lease covers.")
@json_option
def acquire(url: str, api_token: str | None, memory_mb: int, gpu_id: int | str,
            uuid: str | None, host: str | None, ttl: float | None, owner: str | None,
            allocation_id: str | None, pids: tuple[int, ...], slurm_job: str | None,
            container: str | None, as_json: bool) -> None:
    """Lease MiB of a GPU; prints "<allocation_id> <lease_token>" on one line (with
    --gpu any, then the GPU chosen: "<allocation_id> <lease_token> <gpu_id>")."""
    from gpuhistory.client import default_allocation_id

    client = _client(url, api_token)
    try:
        doc = _post(client, "/api/gpu/memory/allocate",
                    allocation_id=allocation_id or default_allocation_id(),
                    memory_mb=memory_mb, gpu_id=gpu_id, uuid=uuid, host=host, ttl_seconds=ttl,
                    owner=owner, pids=list(pids) or None, slurm_job=slurm_job or None,
                    container=container)
    except ApiError as exc:
        fail(exc)
    if as_json:
        _print(doc)
    elif gpu_id == ANY:
        click.echo(f"{doc['allocation_id']} {doc['lease_token']} {doc['gpu_id']}")
    else:
        click.echo(f"{doc['allocation_id']} {doc['lease_token']}")


@lease.command()
@server_options
@click.argument("allocation_id", callback=ALLOCATION_ID)
@lease_token_option
@host_option()
@click.option("--ttl", type=TTL,
              help="New lifetime from now in seconds (default: the lease's own TTL).")
@json_option
def renew(url: str, api_token: str | None, allocation_id: str, lease_token: str | None,
          host: str | None, ttl: float | None, as_json: bool) -> None:
    """Extend an active lease; prints "<allocation_id> <expires_at>"."""
    _need_token(lease_token, api_token)
    try:
        doc = _post(_client(url, api_token), "/api/gpu/memory/renew",
                    allocation_id=allocation_id, host=host, lease_token=lease_token,
                    ttl_seconds=ttl)
    except ApiError as exc:
        fail(exc)
    if as_json:
        _print(doc)
    else:
        click.echo(f"{doc['allocation_id']} {doc['expires_at']}")


@lease.command()
@server_options
@click.argument("allocation_id", callback=ALLOCATION_ID)
@lease_token_option
@host_option()
@json_option
def release(url: str, api_token: str | None, allocation_id: str, lease_token: str | None,
            host: str | None, as_json: bool) -> None:
    """Release an active lease now; prints "<allocation_id> released"."""
    _need_token(lease_token, api_token)
    try:
        doc = _post(_client(url, api_token), "/api/gpu/memory/deallocate",
                    allocation_id=allocation_id, host=host, lease_token=lease_token)
    except ApiError as exc:
        fail(exc)
    if as_json:
        _print(doc)
    else:
        click.echo(f"{doc['allocation_id']} {doc['status']}")


def lease_table(leases: list[dict[str, Any]]) -> str:
    """Leases as a table; UNTIL is the expiry of an active lease, else when it ended."""
    fleet = len({x.get("host") for x in leases}) > 1  # a HOST column for several hosts
    headers = ["ALLOCATION ID", *["HOST"] * fleet, "GPU", "MIB", "OWNER", "STATUS", "GRANTED",
               "UNTIL", "LEFT"]
    rows = []
    for x in leases:
        active = x["status"] == "active"
        until = x.get("expires_at") if active else x.get("released_at") or x.get("expires_at")
        rows.append([str(x["allocation_id"]), *[x.get("host") or "-"] * fleet,
                     str(x["gpu_id"]), str(x["memory_mb"]),
                     x.get("owner") or "-", str(x["status"]), x.get("granted_at") or "-",
                     until or "-", duration(x['expires_in_seconds']) if active else "-"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


@lease.command("list")
@url_option
@click.option("--gpu-id", type=click.IntRange(0, rules.MAX_GPU_INDEX),
              help="Only this GPU's leases.")
@host_option(fleet=True)
@click.option("--owner", help="Only this owner's leases.")
@click.option("--status", type=click.Choice(["active", "expired", "released"]),
              help="Only leases in this status.")
@json_option
def list_cmd(url: str, gpu_id: int | None, host: str | None, owner: str | None,
             status: str | None, as_json: bool) -> None:
    """The server's leases, newest first, as a table."""
    try:
        leases = _client(url, None).request("GET", "/api/gpu/memory/leases", {
            "gpu_id": gpu_id, "host": host, "owner": owner, "status": status})["leases"]
    except ApiError as exc:
        fail(exc)
    if as_json:
        _print({"count": len(leases), "leases": leases})
    elif not leases:
        click.echo("no leases", err=True)
    else:
        click.echo(lease_table(leases))
