"""``--host``: whose GPUs a reading command is about, when many hosts share one database.

Reading the database (``--db``), it defaults to this machine's name (``--host-name`` is the
same option; GPUHISTORY_HOST_NAME); ``*`` selects every host where a command can list
several. Asking a server (``--url``), only a host named on the command line is sent: the
environment's GPUHISTORY_HOST_NAME names this machine, and the server answers for its own
host unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

import click
from click.core import ParameterSource

ALL_HOSTS = "*"
F = TypeVar("F", bound=Callable[..., Any])


def host_option(fleet: bool = True) -> Callable[[F], F]:
    """``--host``/``--host-name`` as ``host_name``; ``fleet``: ``*`` (every host) allowed."""
    every = ", or * for every host" if fleet else ""
    return click.option(
        "--host", "--host-name", "host_name", envvar="GPUHISTORY_HOST_NAME", show_envvar=True,
        help=f"Whose GPUs: a host name{every} (default: this machine; with --url: the "
             "server's host).")


@overload
def local_host(host_name: str | None, fleet: Literal[False]) -> str: ...
@overload
def local_host(host_name: str | None, fleet: bool = True) -> str | None: ...
def local_host(host_name: str | None, fleet: bool = True) -> str | None:
    """The host to read from the database: named, or this machine; ``None`` for ``*``."""
    from gpuhistory.context import machine_name

    if host_name == ALL_HOSTS:
        if not fleet:
            raise click.BadParameter("name one host (* is for commands that list)",
                                     param_hint="--host")
        return None
    return host_name or machine_name()


def server_host(ctx: click.Context, fleet: bool = True) -> str | None:
    """The ``host`` to send to a server: only one given on the command line."""
    if ctx.get_parameter_source("host_name") is not ParameterSource.COMMANDLINE:
        return None
    host: str | None = ctx.params.get("host_name")
    if host == ALL_HOSTS and not fleet:
        raise click.BadParameter("name one host (* is for commands that list)",
                                 param_hint="--host")
    return host
