"""The one redaction policy: what counts as a secret in a URL or a log line, and how it is
hidden. Used by the access log, every other log line that shows a client's URL (uvicorn's
WebSocket lines included), the metrics' error messages, the status page and the Redis URL.

- URL user info (``//user:password@``, ``//token@``) becomes ``***@``.
- Query parameters (separated by ``&`` or ``;``) whose name, lower-cased without ``-``
  and ``_``, contains one of ``SENSITIVE_PARAM_WORDS`` get the value ``***``; everything
  else stays byte for byte.
- Free text (an error message) gets the same two rules by pattern.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

__all__ = [
    "REDACTED",
    "SENSITIVE_PARAM_WORDS",
    "Redactor",
    "is_sensitive_name",
    "redact_query",
    "redact_text",
    "redact_url",
]

SENSITIVE_PARAM_WORDS = (
    "token", "key", "pass", "pwd", "pw", "secret", "auth", "session", "sess", "sid",
    "sig", "credential", "code", "otp", "jwt", "ticket", "cookie", "bearer", "private",
    "state", "nonce", "hash",
)  # fmt: skip
REDACTED = b"***"
_SEPARATORS = re.compile(rb"([&;])")
_USERINFO_RE = re.compile(r"(?<=//)[^/@\s]+@")


class Redactor:
    """Redacts the values of secret-looking parameters in query strings and URLs."""

    __slots__ = ("_name", "_suspect", "_text", "words")

    def __init__(self, words: Iterable[str] = SENSITIVE_PARAM_WORDS) -> None:
        self.words = tuple(word.lower() for word in words)
        alternatives = "|".join(re.escape(word) for word in self.words) or "(?!)"
        self._name = re.compile(alternatives)
        # What could hide a secret name: a word, or an escape that might spell one.
        self._suspect = re.compile(f"(?i){alternatives}|%|\\+".encode())
        self._text = re.compile(f"(?i)([\\w.-]*(?:{alternatives})[\\w.-]*=)[^&;\\s'\"]+")

    def is_sensitive(self, name: str) -> bool:
        """True if a parameter called ``name`` probably carries a secret."""
        folded = name.lower().replace("-", "").replace("_", "")
        return self._name.search(folded) is not None

    def query(self, query: bytes) -> bytes:
        """``query`` with secret values replaced by ``***``, everything else byte for byte."""
        if not query or self._suspect.search(query) is None:
            return query  # the common case: nothing to look at closely
        parts = []
        for part in _SEPARATORS.split(query):  # separators are kept as parts of their own
            name, sep, _ = part.partition(b"=")
            decoded = unquote_to_bytes(name.replace(b"+", b" ")).decode("latin-1")
            parts.append(name + b"=" + REDACTED if sep and self.is_sensitive(decoded) else part)
        return b"".join(parts)

    def text(self, text: str) -> str:
        """Free text with the values of secret-looking ``name=value`` pairs redacted."""
        return self._text.sub(r"\1***", text)

    def url(self, url: str) -> str:
        """A URL (a Referer) without user info and with secret parameter values redacted."""
        scheme, sep, rest = url.partition("://")
        if sep:
            authority, slash, path = rest.partition("/")
            if "@" in authority:
                authority = "***@" + authority.rpartition("@")[2]
            url = f"{scheme}{sep}{authority}{slash}{path}"
        base, question, query = url.partition("?")
        if not question:
            return url
        query, hash_, fragment = query.partition("#")
        redacted = self.query(query.encode("latin-1")).decode("latin-1")
        return f"{base}?{redacted}{hash_}{fragment}"


@functools.lru_cache(maxsize=8)
def _redactor(words: tuple[str, ...]) -> Redactor:
    return Redactor(words)


def is_sensitive_name(name: str, words: Iterable[str] = SENSITIVE_PARAM_WORDS) -> bool:
    """True if a parameter called ``name`` probably carries a secret."""
    return _redactor(tuple(words)).is_sensitive(name)


def redact_query(query: bytes, words: Iterable[str] = SENSITIVE_PARAM_WORDS) -> bytes:
    """``query`` with the values of secret-looking parameters replaced by ``***``.

    Everything else stays byte for byte (order, repeated names, encoding, separators).
    """
    return _redactor(tuple(words)).query(query)


def redact_url(url: str, words: Iterable[str] = SENSITIVE_PARAM_WORDS) -> str:
    """A URL (or a path with a query) without user info, secret parameter values redacted."""
    return _redactor(tuple(words)).url(url)


def redact_text(text: str) -> str:
    """Free text without URL user info or secret-looking ``name=value`` values."""
    text = _USERINFO_RE.sub("***@", text)
    return _redactor(SENSITIVE_PARAM_WORDS).text(text)
