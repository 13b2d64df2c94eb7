"""Which card held a GPU slot at a time: the rule every interface answers by.

A card (one UUID) sits in a slot (host, index) for a period, ``first_seen_ms`` to
``last_seen_ms``. A slot's cards are meant not to overlap (an import that would make them
overlap is refused); where a log from before that rule holds overlapping periods, the card
that arrived last among those covering the time wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Card(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def first_seen_ms(self) -> int: ...
    @property
    def last_seen_ms(self) -> int: ...


C = TypeVar("C", bound=Card)

# The backends of cards known only from an imported recording: such a card is not in its
# slot now, so it has no lease capacity (a recording never adds capacity to a slot).
RECORDED_BACKENDS = frozenset({"trace", "nvidia-smi"})


def card_at(cards: Sequence[C], t_ms: int) -> C:
    """The card in the slot at ``t_ms``: among those that had arrived by then, one whose
    period covers it (the latest to arrive), else the last to arrive (it stayed until the
    next came); before any arrived, the first card. ``cards`` must not be empty."""
    arrived = [c for c in cards if c.first_seen_ms <= t_ms]
    if not arrived:
        return min(cards, key=lambda c: (c.first_seen_ms, c.id))
    return max(arrived, key=lambda c: (c.last_seen_ms >= t_ms, c.first_seen_ms, c.id))


def overlaps(a_first: int, a_last: int, b_first: int, b_last: int) -> bool:
    """Whether two closed periods share a moment."""
    return a_first <= b_last and b_first <= a_last
