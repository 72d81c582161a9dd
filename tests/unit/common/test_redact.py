"""The one redaction helper: URL credentials and secret headers never leave memory (docs/security.md)."""

from __future__ import annotations

import pytest

from dragonfly.common import redact


def test_url_userinfo_and_signing_parameters_are_masked() -> None:
    url = "https://alice:s3cret@origin.test:8443/a/b?X-Amz-Signature=abc123&part=2#frag"
    redacted = redact.redact_url(url)
    for secret in ("alice", "s3cret", "abc123"):
        assert secret not in redacted
    assert redacted.startswith("https://***@origin.test:8443/a/b?")
    assert "part=2" in redacted
    assert redacted.endswith("#frag")
    plain = "http://origin.test/file?part=2"
    assert redact.redact_url(plain) is plain


@pytest.mark.parametrize(
    "name", ["Authorization", "cookie", "X-Api-Key", "X-Registry-Token", "proxy-authorization", "Set-Cookie"]
)
def test_sensitive_headers_are_masked(name: str) -> None:
    assert redact.redact_headers({name: "secret-value", "Accept": "*/*"}) == {name: "***", "Accept": "*/*"}


def test_operators_add_header_names() -> None:
    try:
        redact.configure(["X-Internal-Pass"])
        assert redact.redact_headers({"x-internal-pass": "v"}) == {"x-internal-pass": "***"}
    finally:
        redact.configure([])
    assert redact.redact_headers({"x-internal-pass": "v"}) == {"x-internal-pass": "v"}


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("download of https://bob:hunter2@h/f failed", "hunter2"),
        ("headers {'Authorization': 'Bearer tok-123', 'Accept': '*/*'}", "tok-123"),
        ("request_header=Cookie: session=abc987", "abc987"),
        ("GET http://h/f?token=zzz999&x=1", "zzz999"),
    ],
)
def test_free_text_is_scrubbed(text: str, secret: str) -> None:
    scrubbed = redact.redact_text(text)
    assert secret not in scrubbed
    assert "***" in scrubbed
