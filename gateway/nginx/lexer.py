"""Tokens of nginx's configuration syntax, read the way nginx reads them.

A port of ``ngx_conf_read_token``: words are separated by whitespace, ``;`` and ``{``
(never by ``}``, which is only a token where a word could start); ``"..."`` and
``'...'`` quote a word and must be followed by whitespace, ``;``, ``{`` or ``)``; ``#``
starts a comment only where a word could start (``a#b`` is one word); ``${name}`` keeps
its braces inside a word.  In every word ``\\"``, ``\\'`` and ``\\\\`` lose their
backslash and ``\\t``, ``\\r``, ``\\n`` become the control characters; any other
backslash stays.  Variables (``$host``) are kept as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["WORD", "NginxConfigError", "NginxSyntaxError", "Token", "tokenize"]

WORD = "word"
_SPACE = frozenset(" \t\r\n")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


class NginxConfigError(ValueError):
    """An nginx configuration that cannot be read; names the file, line and column."""

    def __init__(self, message: str, file: str, line: int, column: int) -> None:
        super().__init__(f"{file}:{line}:{column}: {message}")
        self.message = message
        self.file = file
        self.line = line
        self.column = column


class NginxSyntaxError(NginxConfigError):
    """Malformed configuration text: braces, quotes, a missing ``;``, a misplaced block."""


@dataclass(frozen=True, slots=True)
class Token:
    """A word (``kind == WORD``) or one of ``;``, ``{``, ``}``, and where it starts."""

    kind: str
    value: str
    line: int
    column: int
    quoted: bool = False


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == "\\" and index + 1 < len(raw) and raw[index + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[index + 1]])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def tokenize(text: str, file: str) -> Iterator[Token]:
    """The tokens of ``text``; NginxSyntaxError for an unterminated quote or a stray character."""
    line, column = 1, 0
    start = start_line = start_column = 0
    last_space, need_space, escaped, comment, variable = True, False, False, False, False
    quote = ""  # the open quote character, if any

    for position, char in enumerate(text):
        if char == "\n":
            line, column = line + 1, 0
            comment = False
        else:
            column += 1
        if comment:
            continue
        if escaped:
            escaped = False
            continue
        if need_space:
            if char in _SPACE:
                last_space, need_space = True, False
                continue
            if char in ";{":
                need_space, last_space = False, True
                yield Token(char, char, line, column)
                continue
            if char != ")":
                raise NginxSyntaxError(
                    f"unexpected {char!r} after a quoted string", file, line, column
                )
            last_space, need_space = True, False
        if last_space:
            if char in _SPACE:
                continue
            start, start_line, start_column = position, line, column
            if char in ";{}":
                yield Token(char, char, line, column)
                continue
            if char == "#":
                comment = True
                continue
            last_space = False
            if char == "\\":
                escaped = True
            elif char in "\"'":
                quote, start = char, position + 1
            elif char == "$":
                variable = True
            continue
        # Inside a word.
        if char == "{" and variable:
            continue
        variable = False
        if char == "\\":
            escaped = True
            continue
        if char == "$":
            variable = True
            continue
        if quote:
            if char != quote:
                continue
            need_space = True
        elif char in _SPACE or char in ";{":
            last_space = True
        else:
            continue
        raw = text[start:position]
        yield Token(WORD, _unescape(raw), start_line, start_column, quoted=bool(quote))
        quote = ""
        if char in ";{":
            yield Token(char, char, line, column)

    if quote:
        raise NginxSyntaxError(
            f"unterminated {quote}-quoted string", file, start_line, start_column
        )
    if not last_space and not need_space:
        yield Token(WORD, _unescape(text[start:]), start_line, start_column)
