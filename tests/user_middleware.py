"""A user middleware for the settings ``[[middleware]]`` test: tags responses."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class TagMiddleware:
    """Adds ``x-tag: <tag>`` to HTTP responses."""

    def __init__(self, app: ASGIApp, *, tag: str) -> None:
        self.app = app
        self.tag = tag.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-tag", self.tag)]}
            await send(message)

        await self.app(scope, receive, tagged)


NOT_CALLABLE = 42
