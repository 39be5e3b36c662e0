"""Bookkeeping of a translation: notes, consumed directives, and nginx's inheritance.

`Recorder` collects the notes and remembers which directives were read, so that a final
sweep can report every directive nobody read: nothing is dropped silently.  `Scope` is
one level of nginx's configuration (http, server, location) and answers "what is in
effect here", with nginx's two inheritance rules: a simple directive comes from the
nearest level that has it; an array directive (``proxy_set_header``, ``add_header``,
``allow``/``deny``, ...) comes from the nearest level that has any of its group, and
such a level replaces, never extends, what the outer levels said.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.nginx.notes import Note
from gateway.nginx.parser import Directive

__all__ = ["Recorder", "Scope"]


class Recorder:
    """The notes of a translation and the set of directives it consumed."""

    def __init__(self) -> None:
        self.notes: list[Note] = []
        self._noted: set[tuple[int, str]] = set()
        self._used: set[int] = set()

    def use(self, *directives: Directive | None) -> None:
        """Mark ``directives`` as translated."""
        for directive in directives:
            if directive is not None:
                self._used.add(id(directive))

    def use_all(self, directive: Directive) -> None:
        """Mark ``directive`` and everything inside its block as dealt with."""
        for inner in directive.walk():
            self._used.add(id(inner))

    def is_used(self, directive: Directive) -> bool:
        """True once ``directive`` was translated or noted."""
        return id(directive) in self._used

    def note(
        self, directive: Directive, kind: str, reason: str, *, whole_block: bool = False
    ) -> None:
        """Add a note on ``directive`` (once per directive and reason) and mark it used."""
        if whole_block:
            self.use_all(directive)
        else:
            self.use(directive)
        key = (id(directive), reason)
        if key in self._noted:
            return
        self._noted.add(key)
        self.notes.append(Note(directive.file, directive.line, directive.text(), reason, kind))

    def sorted_notes(self, file_order: Sequence[str]) -> list[Note]:
        """Notes in configuration order: by file (as first read), then line."""
        rank = {name: index for index, name in enumerate(dict.fromkeys(file_order))}
        return sorted(self.notes, key=lambda note: (rank.get(note.file, len(rank)), note.line))


class Scope:
    """One level of the configuration (``kind`` is http, server or location)."""

    def __init__(
        self,
        directives: Iterable[Directive],
        parent: Scope | None,
        recorder: Recorder,
        kind: str,
        owner: Directive | None = None,
    ) -> None:
        self.directives = tuple(directives)
        self.parent = parent
        self.recorder = recorder
        self.kind = kind
        self.owner = owner

    def here(self, *names: str) -> list[Directive]:
        """This level's directives named ``names``, in order (not marked used)."""
        return [directive for directive in self.directives if directive.name in names]

    def get(self, name: str) -> Directive | None:
        """The ``name`` directive in effect (nearest level, first one); marked used."""
        found = self.peek(name)
        self.recorder.use(found)
        return found

    def peek(self, name: str) -> Directive | None:
        """The ``name`` directive in effect, without marking it used."""
        scope: Scope | None = self
        while scope is not None:
            found = scope.here(name)
            if found:
                return found[0]
            scope = scope.parent
        return None

    def group(self, *names: str) -> list[Directive]:
        """The array directives ``names`` in effect (all from the nearest level with any)."""
        scope: Scope | None = self
        while scope is not None:
            found = scope.here(*names)
            if found:
                self.recorder.use(*found)
                return found
            scope = scope.parent
        return []

    def chain(self) -> list[Scope]:
        """This scope and its parents, innermost first."""
        scopes: list[Scope] = []
        scope: Scope | None = self
        while scope is not None:
            scopes.append(scope)
            scope = scope.parent
        return scopes
