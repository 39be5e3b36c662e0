"""The backend of tests/test_autobahn.py: a websockets echo server (every message back as
it came, permessage-deflate offered as websockets does by default, no size limit).

Run as a process of its own: ``python tests/autobahn_echo.py PORT``, with
``WEBSOCKETS_MAX_FRAGMENTS`` set high, as websockets reads it when imported (Autobahn's
cases 9.3 and 9.4 send a message in up to 4 million fragments).
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def echo(connection: ServerConnection) -> None:
    try:
        async for message in connection:
            await connection.send(message)
    except ConnectionClosed:
        pass


async def main(port: int) -> None:
    async with serve(
        echo, "127.0.0.1", port, max_size=None, max_queue=None, ping_interval=None
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
