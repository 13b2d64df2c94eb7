"""Request framing that cannot be read two ways: no request smuggling behind a proxy.

A proxy in front and this server must agree where each request ends. They can disagree on
a request carrying both ``Content-Length`` and ``Transfer-Encoding``, ``Transfer-Encoding``
twice or naming anything but one ``chunked``, a folded (obs-fold) header line, or
``Transfer-Encoding`` in an HTTP/1.0 request (RFC 9112 §6.1, §6.3, §5.2). Waitress 3.0
serves such a request (chunked wins) and keeps the connection open, so bytes a proxy counted
as body run here as a second request. ``StrictFramingParser`` refuses them instead: the
answer is 400 and the connection is closed, with nothing after the request served.
"""

from __future__ import annotations

import time

from waitress.parser import HTTPRequestParser, ParsingError


def framing_problem(head: bytes) -> str | None:
    """Why a request head (request line and header lines, CRLF-separated) is ambiguous to
    frame, or None when its framing has one reading."""
    lines = head.split(b"\r\n")
    transfer_encodings: list[bytes] = []
    content_lengths = 0
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return "a folded header line (obs-fold) is not accepted"
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"transfer-encoding":
            transfer_encodings.append(value.strip(b" \t"))
        elif name == b"content-length":
            content_lengths += 1
    if not transfer_encodings:
        return None
    if len(transfer_encodings) > 1:
        return "Transfer-Encoding is sent more than once"
    if content_lengths:
        return "both Content-Length and Transfer-Encoding are sent"
    if transfer_encodings[0].lower() != b"chunked":
        return "Transfer-Encoding must be exactly 'chunked'"
    if not lines[0].rstrip().endswith(b" HTTP/1.1"):
        return "Transfer-Encoding is only accepted in HTTP/1.1 requests"
    return None


class StrictFramingParser(HTTPRequestParser):
    """Waitress's parser, refusing ambiguous framing (400, connection closed); it also
    notes when the request's first byte arrived (``started``, ``time.time()``), for the
    read timeout."""

    def __init__(self, adj: object) -> None:
        super().__init__(adj)
        self.started = time.time()

    def parse_header(self, header_plus: bytes) -> None:
        problem = framing_problem(header_plus)
        if problem is not None:
            if header_plus.split(b"\r\n", 1)[0].rstrip().endswith(b" HTTP/1.1"):
                self.version = "1.1"  # the 400's status line, as for waitress's own
            raise ParsingError(problem)  # waitress answers 400 and closes the connection
        super().parse_header(header_plus)
