"""HTTP/1.1 client transport for httpx on asyncio and httptools (see `UpstreamTransport`)."""

from gateway.transport._stream import ResponseStream
from gateway.transport._transport import UpstreamTransport

__all__ = ["ResponseStream", "UpstreamTransport"]
