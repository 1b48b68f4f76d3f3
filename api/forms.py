"""Form bodies (`application/x-www-form-urlencoded`, `multipart/form-data`) held to the JSON body's UTF-8 rule.

werkzeug's form parsing turns bytes that are not UTF-8 into U+FFFD and goes on; the same bytes in a JSON body
are a 400. These parsers refuse them too, naming the field, so every body encoding follows one rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from flask import Request
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from api.errors import MalformedBody
from api.validation import read_body

FORM_MIMETYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class Form:
    """A form body's text fields (the first value of each name) and the names of its file parts."""

    fields: dict[str, str]
    files: tuple[str, ...]


def parse_form(request: Request) -> Form:
    """The request's form body, every name and text value strictly UTF-8 (400 naming the field otherwise)."""
    raw = read_body(request)
    if request.mimetype == "multipart/form-data":
        return _multipart(raw, request.mimetype_params.get("boundary", ""))
    return _urlencoded(raw)


def _text(data: bytes, field: str | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if field is None:
            raise MalformedBody("form field names must be valid UTF-8") from None
        raise MalformedBody(f"{field}: must be valid UTF-8", field=field) from None


def _urlencoded(raw: bytes) -> Form:
    fields: dict[str, str] = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        name_bytes, _, value_bytes = pair.partition(b"=")
        # Percent-escapes decode to bytes first, so "%FF" is held to the rule as much as a raw 0xFF byte.
        name = _text(unquote_to_bytes(name_bytes.replace(b"+", b" ")), None)
        value = _text(unquote_to_bytes(value_bytes.replace(b"+", b" ")), name)
        fields.setdefault(name, value)
    return Form(fields, ())


def _multipart(raw: bytes, boundary: str) -> Form:
    if not boundary:
        raise MalformedBody("a multipart/form-data body needs a boundary parameter")
    decoder = MultipartDecoder(boundary.encode("latin-1"))
    fields: dict[str, str] = {}
    files: list[str] = []
    part: Field | File | None = None
    chunks: list[bytes] = []
    try:
        decoder.receive_data(raw)
        decoder.receive_data(None)
        event = decoder.next_event()
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, (Field, File)):
                part, chunks = event, []
            elif isinstance(event, Data) and part is not None:
                chunks.append(event.data)
                if not event.more_data:
                    if isinstance(part, File):
                        files.append(part.name)
                    else:
                        fields.setdefault(part.name, _text(b"".join(chunks), part.name))
            event = decoder.next_event()
    except ValueError:  # werkzeug's word for a body that is not multipart at all
        raise MalformedBody("the body is not valid multipart/form-data") from None
    return Form(fields, tuple(files))
