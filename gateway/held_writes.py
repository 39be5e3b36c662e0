"""``HeldWrites``: a response's head waits for the first piece of its body, to share a write.

uvicorn writes a response's head and each piece of its body with a write each: for the
usual proxied response (the head, then the whole body at once) two system calls and two
TCP segments (two TLS records) where one does. A request cycle that writes through
``HeldWrites`` instead of its transport has the head held back until its next write,
and both go out in one ``writelines`` (one ``writev``) - or, if no write follows in the
same step of the event loop (a streamed body, a HEAD response), when the step ends.
"""

from __future__ import annotations

import asyncio

__all__ = ["HeldWrites"]


class HeldWrites:
    """The transport as a request cycle sees it: writes in order, the first one after
    ``hold_next()`` held until the next write or the end of the event loop's step.

    Whoever writes to the transport directly calls ``flush()`` first, so that nothing
    overtakes what is held.
    """

    __slots__ = ("_held", "_holding", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._holding = True  # a connection's first write is a response head
        # The held write and its flush at the end of the step.
        self._held: tuple[bytes, asyncio.Handle] | None = None

    def hold_next(self) -> None:
        """Hold the next write (the next response's head)."""
        self._holding = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self.transport.writelines((self._take(), data))
        elif self._holding:
            self._holding = False
            self._held = (data, self._loop.call_soon(self.flush))
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Write what is held, now (nothing if the connection is closing)."""
        if self._held is not None:
            held = self._take()
            if not self.transport.is_closing():
                self.transport.write(held)

    def _take(self) -> bytes:
        """What is held, no longer held (its flush at the step's end called off)."""
        assert self._held is not None
        (held, flush), self._held = self._held, None
        flush.cancel()
        return held

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()
