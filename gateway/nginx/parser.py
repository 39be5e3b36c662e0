"""nginx configuration text -> a tree of `Directive`, with ``include`` files read in place.

A recursive-descent parser over `lexer.tokenize`.  ``include`` is expanded where it
stands, as nginx does: a relative pattern is looked up in the folder of the main file
(nginx's configuration prefix), then in the folder of the including file; globs match in
sorted order, and a glob that matches nothing is not an error (a plain name that does not
exist is).  ``sysroot`` reads absolute include paths below another folder, for a copy of
another machine's ``/etc/nginx``.

Structure is checked as far as nginx's syntax goes: balanced braces, a ``;`` after every
simple directive (also a missing one at the end of a line when the next line starts with
a directive name), and the known blocks (``http``, ``server``, ``location``, ``upstream``,
...) only where nginx allows them.  Unknown directives are kept for the translator to report.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.nginx.catalog import KNOWN_DIRECTIVES
from gateway.nginx.lexer import WORD, NginxConfigError, NginxSyntaxError, Token, tokenize

__all__ = ["Directive", "parse_file", "parse_text"]

MAX_INCLUDE_DEPTH = 32

# Known blocks and the contexts they may appear in ("main" is the top of a file, which
# may also be an http-level file such as sites-enabled/default, so it accepts those too).
_HTTP_LIKE = frozenset({"main", "http", "stream"})
BLOCK_PARENTS: dict[str, frozenset[str]] = {
    "events": frozenset({"main"}),
    "http": frozenset({"main"}),
    "stream": frozenset({"main"}),
    "mail": frozenset({"main"}),
    "server": frozenset({"main", "http", "stream", "mail"}),
    "upstream": _HTTP_LIKE,
    "location": frozenset({"server", "location"}),
    "if": frozenset({"server", "location"}),
    "limit_except": frozenset({"location"}),
    "map": _HTTP_LIKE,
    "geo": _HTTP_LIKE,
    "split_clients": _HTTP_LIKE,
    "match": _HTTP_LIKE,
    "charset_map": frozenset({"main", "http"}),
    "types": frozenset({"main", "http", "server", "location"}),
}
# Blocks whose lines are table entries, not directives: no blocks inside.
RAW_BLOCKS = frozenset({"map", "geo", "split_clients", "types", "charset_map", "match"})
# Names that also appear as arguments on a continued line (``listen 443\n ssl;``).
_ALSO_ARGUMENTS = frozenset(
    {"ssl", "http2", "http3", "quic", "proxy_protocol", "default", "internal", "on", "off"}
)


@dataclass(frozen=True, slots=True, eq=False)
class Directive:
    """One directive: ``name args... ;`` or ``name args... { block }``, and where it is."""

    name: str
    args: tuple[str, ...]
    file: str
    line: int
    column: int
    block: tuple[Directive, ...] | None = None

    def text(self, limit: int = 60) -> str:
        """``name args...`` for messages, shortened to ``limit`` characters."""
        words = [self.name, *(arg if arg and " " not in arg else repr(arg) for arg in self.args)]
        text = " ".join(words)
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def walk(self) -> Iterator[Directive]:
        """This directive and everything inside its block, depth first."""
        yield self
        for child in self.block or ():
            yield from child.walk()


def parse_file(path: str | os.PathLike[str], *, sysroot: str | None = None) -> list[Directive]:
    """The directives of the nginx configuration file at ``path``, includes expanded."""
    main = Path(path)
    parser = _Parser(main.parent, sysroot)
    return parser.parse_path(str(main), "main", stack=())


def parse_text(text: str, file: str = "nginx.conf", *, base: str | None = None) -> list[Directive]:
    """The directives of ``text`` (includes relative to ``base``, default the current folder)."""
    parser = _Parser(Path(base or "."), None)
    return parser.parse_source(text, file, "main", stack=(file,))


class _Parser:
    def __init__(self, conf_dir: Path, sysroot: str | None) -> None:
        self.conf_dir = conf_dir
        self.sysroot = sysroot

    def parse_path(self, path: str, context: str, stack: tuple[str, ...]) -> list[Directive]:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as file:
                text = file.read()
        except OSError as exc:
            raise NginxConfigError(f"cannot read: {exc.strerror}", path, 0, 0) from None
        return self.parse_source(text, path, context, (*stack, os.path.realpath(path)))

    def parse_source(
        self, text: str, file: str, context: str, stack: tuple[str, ...]
    ) -> list[Directive]:
        tokens = _Tokens(tokenize(text, file), file)
        directives = self._block(tokens, context, stack, opened=None)
        return directives

    def _block(
        self, tokens: _Tokens, context: str, stack: tuple[str, ...], opened: Token | None
    ) -> list[Directive]:
        directives: list[Directive] = []
        while True:
            token = tokens.next()
            if token is None:
                if opened is not None:
                    raise NginxSyntaxError(
                        f"'{{' opened here is never closed (end of file in {context!r})",
                        tokens.file,
                        opened.line,
                        opened.column,
                    )
                return directives
            if token.kind == "}":
                if opened is None:
                    raise NginxSyntaxError("unexpected '}'", tokens.file, token.line, token.column)
                return directives
            if token.kind != WORD:
                raise NginxSyntaxError(
                    f"unexpected {token.kind!r}", tokens.file, token.line, token.column
                )
            directive = self._directive(token, tokens, context, stack)
            if directive.name == "include" and directive.block is None:
                directives += self._include(directive, context, stack)
            else:
                directives.append(directive)

    def _directive(
        self, first: Token, tokens: _Tokens, context: str, stack: tuple[str, ...]
    ) -> Directive:
        args: list[str] = []
        previous = first
        raw = context in RAW_BLOCKS
        while True:
            token = tokens.next()
            if token is None:
                raise NginxSyntaxError(
                    f"missing ';' after {_shown(first.value, args)} (end of file)",
                    tokens.file,
                    previous.line,
                    previous.column,
                )
            if token.kind == "}":
                raise NginxSyntaxError(
                    f"missing ';' after {_shown(first.value, args)} (found '}}')",
                    tokens.file,
                    token.line,
                    token.column,
                )
            if token.kind == WORD:
                if (
                    not raw
                    and not token.quoted
                    and token.line > previous.line
                    and _looks_like_directive(token.value)
                    and _looks_like_directive(first.value)
                ):
                    raise NginxSyntaxError(
                        f"missing ';' after {_shown(first.value, args)} "
                        f"(before {token.value!r} on the next line)",
                        tokens.file,
                        previous.line,
                        previous.column,
                    )
                args.append(token.value)
                previous = token
                continue
            break
        name = first.value
        allowed = BLOCK_PARENTS.get(name)
        block_allowed = allowed is not None and context in allowed
        if token.kind == ";":
            if block_allowed:
                raise NginxSyntaxError(
                    f"directive {name!r} has no opening '{{'", tokens.file, first.line, first.column
                )
            return Directive(name, tuple(args), tokens.file, first.line, first.column)
        # token.kind == "{"
        if raw:
            raise NginxSyntaxError(
                f"no blocks are allowed inside {context!r}", tokens.file, token.line, token.column
            )
        if allowed is not None and not block_allowed:
            raise NginxSyntaxError(
                f"{name!r} block is not allowed inside {context!r}",
                tokens.file,
                first.line,
                first.column,
            )
        block = self._block(tokens, name, stack, opened=token)
        return Directive(name, tuple(args), tokens.file, first.line, first.column, tuple(block))

    def _include(
        self, directive: Directive, context: str, stack: tuple[str, ...]
    ) -> list[Directive]:
        if len(directive.args) != 1:
            raise NginxSyntaxError(
                "include takes one file name or pattern",
                directive.file,
                directive.line,
                directive.column,
            )
        if len(stack) > MAX_INCLUDE_DEPTH:
            raise NginxConfigError(
                f"includes nested deeper than {MAX_INCLUDE_DEPTH}",
                directive.file,
                directive.line,
                directive.column,
            )
        pattern = directive.args[0]
        paths = self._resolve(pattern, Path(directive.file).parent)
        if not paths and not glob.has_magic(pattern):
            if Path(pattern).name == "mime.types":
                # Only media types for files nginx serves itself: often not copied along
                # with nginx.conf, and never needed (the translator notes it).
                return [directive]
            raise NginxConfigError(
                f"include {pattern}: no such file", directive.file, directive.line, directive.column
            )
        directives: list[Directive] = []
        for path in paths:
            if os.path.realpath(path) in stack:
                raise NginxConfigError(
                    f"include {pattern}: {path} includes itself",
                    directive.file,
                    directive.line,
                    directive.column,
                )
            if os.path.isfile(path):
                directives += self.parse_path(path, context, stack)
        return directives

    def _resolve(self, pattern: str, including_dir: Path) -> list[str]:
        if os.path.isabs(pattern):
            bases = [Path(self.sysroot) / pattern.lstrip("/")] if self.sysroot else [Path(pattern)]
        else:
            bases = [self.conf_dir / pattern, including_dir / pattern]
        for base in bases:
            found = sorted(glob.glob(str(base))) if glob.has_magic(pattern) else []
            if not glob.has_magic(pattern) and base.exists():
                found = [str(base)]
            if found:
                return found
        return []


class _Tokens:
    def __init__(self, tokens: Iterator[Token], file: str) -> None:
        self._tokens = tokens
        self.file = file

    def next(self) -> Token | None:
        return next(self._tokens, None)


def _looks_like_directive(word: str) -> bool:
    return word in KNOWN_DIRECTIVES and word not in _ALSO_ARGUMENTS


def _shown(name: str, args: list[str]) -> str:
    text = " ".join([name, *args])
    return repr(text if len(text) <= 50 else text[:47] + "...")
