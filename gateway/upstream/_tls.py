"""TLS client settings for https/wss targets."""

from __future__ import annotations

import os
import ssl

__all__ = ["client_ssl_context"]


def client_ssl_context(verify: bool = True, ca_bundle: str | None = None) -> ssl.SSLContext:
    """The SSL context for connections to upstream targets (TLS 1.2 or newer, ALPN http/1.1).

    ``verify=True`` checks the certificate chain and host name against the system CAs,
    or only against ``ca_bundle`` (a PEM file, or a directory of hashed certificates)
    when given. ``verify=False`` checks nothing: the caller must say so in its log.
    Raises ValueError naming ``ca_bundle`` when it cannot be loaded.
    """
    if not verify:
        if ca_bundle is not None:
            raise ValueError("ca_bundle has no effect with verify=False; drop one of them")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_bundle is None:
        context = ssl.create_default_context()
    else:
        try:
            if os.path.isdir(ca_bundle):
                context = ssl.create_default_context(capath=ca_bundle)
            else:
                context = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ca_bundle {ca_bundle!r} cannot be loaded: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Both the HTTP and the WebSocket leg speak HTTP/1.1; say so to servers that offer h2.
    context.set_alpn_protocols(["http/1.1"])
    return context
