"""What an attempt's outcome means, and how long to wait before the next: pure functions.

- 2xx: delivered.
- No answer (connection refused, DNS, TLS, timeout), 5xx, 408, 425 and 429: failed, retried
  after a backoff.
- Anything else (3xx, which is never followed, and the other 4xx): rejected. The receiver
  looked at the request and refused it; sending the same bytes again would not change its
  mind, and retrying would hold up every later event of the webhook.

Backoff after the n-th failed attempt of an event: ``d = min(retry_max, retry_initial *
2**(n-1))``, then "equal jitter": a uniform time in ``[d/2, d]``, so many receivers that
failed together do not retry together. A ``Retry-After`` (seconds) on a 429 or 503 is
honoured when longer, up to ``retry_max``.
"""

from __future__ import annotations

import random
from typing import Literal

Verdict = Literal["delivered", "retry", "rejected"]
RETRYABLE_4XX = frozenset({408, 425, 429})
MAX_DOUBLINGS = 40  # 2**40 times any initial is far beyond every cap


def verdict(http_status: int | None) -> Verdict:
    """What an answer means (None: no HTTP answer at all)."""
    if http_status is None:
        return "retry"
    if 200 <= http_status < 300:
        return "delivered"
    if http_status >= 500 or http_status in RETRYABLE_4XX:
        return "retry"
    return "rejected"


def backoff_ms(failures: int, initial_s: float, max_s: float, rng: random.Random,
               retry_after_s: float | None = None) -> int:
    """Milliseconds to wait after the ``failures``-th failed attempt (1, 2, ...)."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    ceiling = min(max_s, initial_s * 2.0 ** min(failures - 1, MAX_DOUBLINGS))
    delay = ceiling / 2 + rng.random() * ceiling / 2
    if retry_after_s is not None and retry_after_s > delay:
        delay = min(retry_after_s, max_s)
    return max(1, round(delay * 1000))
