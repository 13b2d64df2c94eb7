"""The signature a receiver checks: HMAC-SHA256 over the timestamp and the raw body.

Signed material: the ``X-Gpuhistory-Timestamp`` header's value (epoch seconds, ASCII), a
``.``, then the request body's bytes exactly as sent. The header
``X-Gpuhistory-Signature`` carries ``sha256=`` and the lowercase hex digest.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Gpuhistory-Signature"
TIMESTAMP_HEADER = "X-Gpuhistory-Timestamp"
SCHEME = "sha256="


def signed_material(timestamp: str, body: bytes) -> bytes:
    return timestamp.encode("ascii") + b"." + body


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Gpuhistory-Signature value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), signed_material(timestamp, body),
                      hashlib.sha256).hexdigest()
    return SCHEME + digest
