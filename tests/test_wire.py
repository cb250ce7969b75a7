"""Tests for answer parsing: JSON and XML bodies, error bodies, sniffing, garbage."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkjob._wire import ErrorBody, parse_body

ACCEPTED_JSON = '{"jobId": "abc123", "status": "accepted", "type": "targetContactDetails"}'
ACCEPTED_XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    "<BulkJobStatus><jobId>abc123</jobId><status>accepted</status>"
    "<type>targetContactDetails</type></BulkJobStatus>"
)
ACCEPTED = {"jobId": "abc123", "status": "accepted", "type": "targetContactDetails"}
ERROR_FIELDS = {
    "errorType": "Bad Request",
    "status": 400,
    "errorNumber": "400-105",
    "message": "Invalid id on line 3.",
    "diagnosticCode": "SBX-1",
}
ERROR_XML = (
    "<error><errorType>Bad Request</errorType><status>400</status>"
    "<errorNumber>400-105</errorNumber><message>Invalid id on line 3.</message>"
    "<diagnosticCode>SBX-1</diagnosticCode></error>"
)


def test_json_body() -> None:
    """A JSON answer with a JSON Content-Type parses to its object."""
    assert parse_body("application/json", ACCEPTED_JSON) == ACCEPTED


def test_xml_body() -> None:
    """An XML answer flattens the root's children into a dict."""
    assert parse_body("application/xml", ACCEPTED_XML) == ACCEPTED


def test_xml_nested_and_repeated_elements() -> None:
    """Nested elements become dicts and repeated ones become lists."""
    text = "<r><a><b>1</b></a><job>x</job><job>y</job><job>z</job></r>"
    assert parse_body("text/xml", text) == {"a": {"b": "1"}, "job": ["x", "y", "z"]}


def test_xml_namespaces_are_dropped() -> None:
    """Namespaced tags are read by their local name."""
    text = '<r xmlns="urn:x"><jobId>j1</jobId></r>'
    assert parse_body("application/xml", text) == {"jobId": "j1"}


def test_error_body_json() -> None:
    """The documented error shape is read from JSON."""
    err = ErrorBody.from_data(parse_body("application/json", json.dumps(ERROR_FIELDS)))
    assert err == ErrorBody("Bad Request", "400-105", "Invalid id on line 3.")


def test_error_body_xml() -> None:
    """The documented error shape is read from XML alike."""
    err = ErrorBody.from_data(parse_body("application/xml", ERROR_XML))
    assert err == ErrorBody("Bad Request", "400-105", "Invalid id on line 3.")


def test_error_body_wrapped_by_gateway() -> None:
    """An error object wrapped under "error" is unwrapped."""
    data = {"error": {"errorCode": "E1", "errorMessage": "nope"}}
    assert ErrorBody.from_data(data) == ErrorBody(None, "E1", "nope")


def test_error_body_falls_back_to_text() -> None:
    """An unreadable error body keeps its (trimmed) text as the message."""
    err = ErrorBody.from_data(parse_body("text/html", "<html>oops"), "  Bad gateway \n")
    assert err == ErrorBody(None, None, "Bad gateway")


def test_error_body_empty_fallback_is_none() -> None:
    """No fields and no text give no message rather than an empty one."""
    assert ErrorBody.from_data({}, "   ") == ErrorBody(None, None, None)


@pytest.mark.parametrize("ctype", ["text/plain", "text/html", "", "application/octet-stream"])
def test_sniffs_json_when_content_type_is_vague(ctype: str) -> None:
    """A JSON body under a non-JSON, non-XML Content-Type is still read."""
    assert parse_body(ctype, "\n  " + ACCEPTED_JSON) == ACCEPTED


@pytest.mark.parametrize("ctype", ["text/plain", "text/html", ""])
def test_sniffs_xml_when_content_type_is_vague(ctype: str) -> None:
    """An XML body under a vague Content-Type is still read."""
    assert parse_body(ctype, ACCEPTED_XML) == ACCEPTED


def test_sniffs_xml_when_content_type_claims_json() -> None:
    """An XML body labelled JSON (an error page, say) is read as XML."""
    assert parse_body("application/json", ERROR_XML)["errorNumber"] == "400-105"


def test_sniffs_json_when_content_type_claims_xml() -> None:
    """A JSON body labelled XML is read as JSON."""
    assert parse_body("application/xml; charset=utf-8", ACCEPTED_JSON) == ACCEPTED


def test_byte_order_mark_is_ignored() -> None:
    """A leading BOM does not make a JSON body unreadable."""
    assert parse_body("application/json", "\ufeff" + ACCEPTED_JSON) == ACCEPTED


@pytest.mark.parametrize(
    ("ctype", "text"),
    [
        ("application/json", "not json at all"),
        ("application/json", "[1, 2, 3]"),
        ("application/json", '"a string"'),
        ("application/json", "{truncated"),
        ("application/xml", "<unclosed>"),
        ("application/xml", "plain words"),
        ("text/plain", "Service Unavailable"),
        ("", ""),
    ],
)
def test_garbage_gives_empty_dict(ctype: str, text: str) -> None:
    """Unreadable or non-object bodies give {}."""
    assert parse_body(ctype, text) == {}


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, "<a>" * 5_000 + "</a>" * 5_000])
def test_deeply_nested_body_gives_empty_dict(text: str) -> None:
    """Pathologically deep nesting is unreadable, not a RecursionError."""
    assert isinstance(parse_body("", text), dict)


@given(
    ctype=st.sampled_from(["application/json", "application/xml", "text/plain", "", "text/xml"]),
    text=st.text(),
)
def test_parse_body_never_raises(ctype: str, text: str) -> None:
    """parse_body returns a dict whatever the text."""
    assert isinstance(parse_body(ctype, text), dict)


@given(
    text=st.text(alphabet=st.sampled_from('<>/{}[]":,a ?!-=&;x\n'), max_size=200),
)
def test_parse_body_never_raises_on_markup_like_text(text: str) -> None:
    """parse_body returns a dict on text made of JSON and XML punctuation."""
    for ctype in ("application/json", "application/xml", ""):
        assert isinstance(parse_body(ctype, text), dict)
