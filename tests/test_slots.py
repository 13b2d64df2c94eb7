"""The rule that picks a slot's card at a time (gpuhistory.domain.slots.card_at)."""

from __future__ import annotations

from dataclasses import dataclass

from gpuhistory.domain.slots import card_at


@dataclass(frozen=True)
class C:
    id: int
    first_seen_ms: int
    last_seen_ms: int


A, B = C(1, 100, 200), C(2, 300, 400)  # a swap: A until 200, B from 300


def test_a_swapped_slot_answers_with_the_card_there_at_each_time() -> None:
    """Inside a period its card; in the gap after A left, A (it stayed until B came)."""
    assert [card_at([A, B], t).id for t in (150, 200, 250, 300, 350, 10_000)] == [
        1, 1, 1, 2, 2, 2]


def test_before_any_card_the_first_card_answers() -> None:
    assert card_at([B, A], 50) is A


def test_overlapping_cards_of_an_old_log_the_latest_arrival_covering_the_time_wins() -> None:
    """A live card seen 0..1000 and a recording at 400..600 (an old log): the recording
    inside its period, the live card before and after it."""
    live, recorded = C(1, 0, 1000), C(2, 400, 600)
    assert [card_at([live, recorded], t).id for t in (300, 500, 700)] == [1, 2, 1]
