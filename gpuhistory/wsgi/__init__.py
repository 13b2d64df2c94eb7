"""The HTTP server under the WSGI app: strict framing, connection limits (``server``)."""
