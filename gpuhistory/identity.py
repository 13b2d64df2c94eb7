"""One GPU identity for every interface: ``gpu_id`` (+ ``host``) or ``uuid`` → one card.

A GPU is a physical card (its UUID) that sat in a slot (host, index) for a period. A
question names the slot or the card; :func:`resolve` answers with the card:

- by ``uuid``: that card (on ``host`` when given, else on the default host, else on the one
  host that has it);
- by ``gpu_id``: the card that held the slot at the question's time — ``at``, the end of a
  range, or now (:func:`gpuhistory.domain.slots.card_at`).

The API, the CLI, the Python interface and the dashboard all come through here, and their
answers name the UUID they used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.domain.slots import card_at
from gpuhistory.storage.cards import hosts, slot_cards, uuid_cards
from gpuhistory.storage.queries import GpuRow, LatestSample, latest_sample_of


class UnknownGpu(LookupError):
    """No card answers the reference; ``details`` say what was asked."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True, slots=True)
class GpuRef:
    """What a caller names: a slot index, a card's UUID, or both (they must agree)."""

    gpu_id: int | None = None
    uuid: str | None = None
    host: str | None = None

    @property
    def index(self) -> int:
        return 0 if self.gpu_id is None else self.gpu_id


def resolve(conn: sa.Connection, ref: GpuRef, default_host: str, t_ms: int) -> GpuRow:
    """The card ``ref`` names at time ``t_ms`` (now, ``at``, or the end of a range);
    UnknownGpu when there is none."""
    host = ref.host if ref.host is not None else default_host
    if ref.uuid is not None:
        return _by_uuid(conn, ref, host)
    cards = slot_cards(conn, host, ref.index)
    if not cards:
        raise UnknownGpu(f"no GPU with gpu_id {ref.index} on {host}",
                         {"gpu_id": ref.index, "host": host})
    return card_at(cards, t_ms)


def _by_uuid(conn: sa.Connection, ref: GpuRef, host: str) -> GpuRow:
    assert ref.uuid is not None
    cards = uuid_cards(conn, ref.uuid, ref.host)
    if len(cards) > 1:  # one card stored under several hosts (imported twice)
        cards = [c for c in cards if c.host == host] or cards
    details: dict[str, Any] = {"uuid": ref.uuid, "host": host}
    if ref.gpu_id is not None:
        details["gpu_id"] = ref.gpu_id
    if not cards:
        raise UnknownGpu(f"no GPU with uuid {ref.uuid} in this database", details)
    if len(cards) > 1:
        raise UnknownGpu(f"GPU {ref.uuid} is stored under several hosts: name one with host",
                         details)
    card = cards[0]
    if ref.gpu_id is not None and card.index != ref.gpu_id:
        raise UnknownGpu(f"GPU {ref.uuid} is gpu_id {card.index} on {card.host}, not "
                         f"gpu_id {ref.gpu_id}", details)
    return card


def resolve_latest(conn: sa.Connection, ref: GpuRef, default_host: str, now_ms: int,
                   at_ms: int | None = None) -> LatestSample:
    """The card at ``at_ms`` (or now) with its newest sample at or before ``at_ms``."""
    card = resolve(conn, ref, default_host, now_ms if at_ms is None else at_ms)
    return latest_sample_of(conn, card, at_ms)


def slot_ids(conn: sa.Connection, ref: GpuRef, default_host: str) -> list[int]:
    """The gpus.id rows a list filter covers: the one card of a ``uuid``, or every card
    that has held the slot (each listed item names its card's UUID)."""
    if ref.uuid is not None:
        return [c.id for c in uuid_cards(conn, ref.uuid, ref.host)
                if ref.gpu_id is None or c.index == ref.gpu_id]
    host = ref.host if ref.host is not None else default_host
    return [c.id for c in slot_cards(conn, host, ref.index)]


def filter_ids(conn: sa.Connection, gpu_id: int | None, uuid: str | None,
               host: str | None) -> list[int] | None:
    """The gpus.id rows a list's ``gpu_id``/``uuid`` filter covers: None without a filter;
    ``host`` None means every host."""
    if gpu_id is None and uuid is None:
        return None
    if host is None and uuid is None:
        return [i for h in hosts(conn) for i in slot_ids(conn, GpuRef(gpu_id, None, h), h)]
    return slot_ids(conn, GpuRef(gpu_id, uuid, host), host or "")


__all__ = ["GpuRef", "UnknownGpu", "filter_ids", "resolve", "resolve_latest", "slot_ids"]
