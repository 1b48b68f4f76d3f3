"""gunicorn's own error answers (a request line, URI or headers it cannot parse) in the API's JSON error shape.

gunicorn writes these itself, before the app sees the request, as an HTML page; it has no hook for their body,
so `install()` replaces the one function that writes them. `api.wsgi` calls it, in whatever process loads the app.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

# gunicorn's reason phrases as the API's snake_case codes (api/errors.py uses the same for werkzeug's errors).
CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn calls `util.write_error`: the same status and reason, with `{"error": {...}}` as the body."""
    error = {"code": CODES.get(status_int, "http_error"), "message": mesg or reason}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    util.write_error = write_json_error
