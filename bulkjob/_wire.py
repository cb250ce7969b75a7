"""Reading the API's answers: JSON or XML, chosen by the answer's Content-Type.

The API defaults to XML and may answer XML even when JSON was asked for (error pages
especially), so bodies are parsed by what they say they are, then sniffed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["ErrorBody", "parse_body"]

_ERROR_FIELDS = ("errorNumber", "errorCode", "errorType", "message", "errorMessage")


def parse_body(content_type: str, text: str) -> dict[str, object]:
    """Flatten a JSON object or an XML document into a dict; ``{}`` when unreadable."""
    ctype = content_type.lower()
    stripped = text.lstrip().removeprefix("\ufeff").lstrip()
    # The body's first character outranks the header: a JSON object or array starts with
    # "{" or "[", an XML document with "<", and gateways label error pages wrongly.
    if stripped.startswith(("{", "[")):
        return _json(stripped)
    if stripped.startswith("<"):
        return _xml(stripped)
    if "json" in ctype:
        return _json(stripped)
    if "xml" in ctype:
        return _xml(stripped)
    return {}


def _json(text: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return {}
    return data if isinstance(data, dict) else {}


def _xml(text: str) -> dict[str, object]:
    try:
        return _element(ET.fromstring(text))
    except (ET.ParseError, RecursionError):  # RecursionError: absurdly deep nesting
        return {}


def _element(node: ET.Element) -> dict[str, object]:
    out: dict[str, object] = {}
    for child in node:
        tag = child.tag.rsplit("}", 1)[-1]
        value: object = _element(child) if len(child) else (child.text or "").strip()
        if tag in out:  # repeated elements become a list
            previous = out[tag]
            out[tag] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[tag] = value
    return out


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The documented error shape: errorType, status, errorNumber, message, diagnosticCode."""

    error_type: str | None
    error_number: str | None
    message: str | None

    @classmethod
    def parse(cls, content_type: str, text: str) -> ErrorBody | None:
        """The documented error body, or None when the answer is not one (an HTML page,
        a truncated body, an empty one): only a real error body proves what happened."""
        data = parse_body(content_type, text)
        if isinstance(data.get("error"), dict):
            data = data["error"]  # type: ignore[assignment]
        if not any(data.get(k) not in (None, "") for k in _ERROR_FIELDS):
            return None
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: dict[str, object], fallback: str = "") -> ErrorBody:
        """Read the fields (from JSON or XML alike); ``fallback`` is used as the message."""
        if isinstance(data.get("error"), dict):  # some gateways wrap it
            data = data["error"]  # type: ignore[assignment]

        def field(*names: str) -> str | None:
            for name in names:
                value = data.get(name)
                if value not in (None, ""):
                    return str(value)
            return None

        message = field("message", "errorMessage", "description") or (
            fallback.strip()[:300] or None
        )
        return cls(field("errorType"), field("errorNumber", "errorCode"), message)
