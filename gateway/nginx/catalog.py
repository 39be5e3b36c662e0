"""What the translator knows about nginx directives it does not turn into settings.

`GENERIC` maps a directive name to ``(kind, reason)``: inert ones (``sendfile``,
``worker_processes``), ones the gateway does by itself (``proxy_buffering``: it always
streams), and known ones it cannot express (``fastcgi_pass``).  A directive named
nowhere here and not translated is reported as unknown.  `HANDLED` lists the directives
the translator reads; one of those left unused (every location overrides it) is "not
needed".
"""

from __future__ import annotations

from gateway.nginx.notes import APPROXIMATED, NOT_NEEDED, UNSUPPORTED

__all__ = ["GENERIC", "HANDLED", "KNOWN_DIRECTIVES", "generic_note"]

_WORKERS = "connection handling is uvicorn's (asyncio); nothing to tune"
_IO = "file and socket I/O tuning of nginx"
_HASH = "the size of an nginx hash table"
_STREAMS = "the gateway streams bodies both ways with bounded memory; no buffers to size"
_CLIENT_KEEPALIVE = "client keep-alive is handled by uvicorn (idle connections close after 5 s)"
_TLS_TUNING = "TLS session tuning; the gateway uses Python's ssl defaults"
_LOGS = "the gateway logs to stderr ([log] level, access_log)"
_CACHE = "the gateway has no response cache"
_OTHER_BACKEND = "the gateway forwards HTTP and WebSocket only (no FastCGI/uwsgi/SCGI/gRPC)"

GENERIC: dict[str, tuple[str, str]] = {
    # main and events
    "user": (NOT_NEEDED, "the gateway runs as the user that starts it"),
    "worker_processes": (
        NOT_NEEDED,
        "one process by default; `gateway run --workers N` runs N",
    ),
    "worker_rlimit_nofile": (NOT_NEEDED, _WORKERS),
    "worker_connections": (NOT_NEEDED, _WORKERS),
    "worker_cpu_affinity": (NOT_NEEDED, _WORKERS),
    "worker_priority": (NOT_NEEDED, _WORKERS),
    "worker_shutdown_timeout": (
        APPROXIMATED,
        "the gateway's graceful shutdown is timeouts.shutdown_grace_s (10 s)",
    ),
    "multi_accept": (NOT_NEEDED, _WORKERS),
    "accept_mutex": (NOT_NEEDED, _WORKERS),
    "use": (NOT_NEEDED, _WORKERS),
    "events": (NOT_NEEDED, _WORKERS),
    "pid": (NOT_NEEDED, "the gateway's pid file is `gateway run --pid-file`"),
    "daemon": (NOT_NEEDED, "run the gateway under systemd or a container runtime"),
    "master_process": (NOT_NEEDED, _WORKERS),
    "load_module": (NOT_NEEDED, "the gateway has no dynamic modules"),
    "pcre_jit": (NOT_NEEDED, "no regular expressions to compile"),
    "thread_pool": (NOT_NEEDED, _IO),
    "timer_resolution": (NOT_NEEDED, _WORKERS),
    "env": (NOT_NEEDED, "the gateway reads its own GATEWAY_* environment"),
    "lock_file": (NOT_NEEDED, _WORKERS),
    # Included files are read in place; an include left in the tree is a missing mime.types.
    "include": (NOT_NEEDED, "file not found; not needed: the gateway has its own media types"),
    # I/O and hash sizes
    "sendfile": (NOT_NEEDED, _IO),
    "sendfile_max_chunk": (NOT_NEEDED, _IO),
    "tcp_nopush": (NOT_NEEDED, _IO),
    "tcp_nodelay": (NOT_NEEDED, _IO),
    "aio": (NOT_NEEDED, _IO),
    "directio": (NOT_NEEDED, _IO),
    "output_buffers": (NOT_NEEDED, _IO),
    "postpone_output": (NOT_NEEDED, _IO),
    "open_file_cache": (NOT_NEEDED, _IO),
    "open_file_cache_valid": (NOT_NEEDED, _IO),
    "open_file_cache_min_uses": (NOT_NEEDED, _IO),
    "open_file_cache_errors": (NOT_NEEDED, _IO),
    "types_hash_max_size": (NOT_NEEDED, _HASH),
    "types_hash_bucket_size": (NOT_NEEDED, _HASH),
    "server_names_hash_max_size": (NOT_NEEDED, _HASH),
    "server_names_hash_bucket_size": (NOT_NEEDED, _HASH),
    "variables_hash_max_size": (NOT_NEEDED, _HASH),
    "variables_hash_bucket_size": (NOT_NEEDED, _HASH),
    "map_hash_max_size": (NOT_NEEDED, _HASH),
    "map_hash_bucket_size": (NOT_NEEDED, _HASH),
    "proxy_headers_hash_max_size": (NOT_NEEDED, _HASH),
    "proxy_headers_hash_bucket_size": (NOT_NEEDED, _HASH),
    # media types
    "types": (NOT_NEEDED, "the gateway has its own media types for static files"),
    "default_type": (NOT_NEEDED, "the gateway has its own media types for static files"),
    # client connections
    "keepalive_timeout": (NOT_NEEDED, _CLIENT_KEEPALIVE),
    "keepalive_requests": (NOT_NEEDED, _CLIENT_KEEPALIVE),
    "keepalive_time": (NOT_NEEDED, _CLIENT_KEEPALIVE),
    "lingering_close": (NOT_NEEDED, _CLIENT_KEEPALIVE),
    "lingering_time": (NOT_NEEDED, _CLIENT_KEEPALIVE),
    "lingering_timeout": (NOT_NEEDED, _CLIENT_KEEPALIVE),
    "reset_timedout_connection": (NOT_NEEDED, _CLIENT_KEEPALIVE),
    "client_header_timeout": (
        APPROXIMATED,
        "not translated: timeouts.header_s (default 60 s, listener-wide) bounds the request head",
    ),
    "send_timeout": (
        APPROXIMATED,
        "not translated: timeouts.send_s (default 60 s) cuts a client that stops reading",
    ),
    "client_header_buffer_size": (NOT_NEEDED, _STREAMS),
    "large_client_header_buffers": (
        APPROXIMATED,
        "the gateway's head limits are limits.max_header_bytes (64 KiB) and "
        "limits.max_url_bytes (8 KiB)",
    ),
    "client_body_buffer_size": (NOT_NEEDED, _STREAMS),
    "client_body_temp_path": (NOT_NEEDED, _STREAMS),
    "client_body_in_file_only": (NOT_NEEDED, _STREAMS),
    "server_tokens": (NOT_NEEDED, "the gateway adds no Server header of its own"),
    "server_name_in_redirect": (NOT_NEEDED, "the gateway's redirects keep the request's host"),
    "port_in_redirect": (NOT_NEEDED, "the gateway's redirects name the public https port"),
    "absolute_redirect": (NOT_NEEDED, "the gateway's redirects are absolute"),
    "merge_slashes": (
        APPROXIMATED,
        "the gateway forwards paths byte for byte and never merges slashes",
    ),
    "ignore_invalid_headers": (NOT_NEEDED, "invalid header names are refused by uvicorn"),
    "underscores_in_headers": (
        APPROXIMATED,
        "the gateway passes header names with underscores (nginx drops them by default)",
    ),
    "resolver": (NOT_NEEDED, "the gateway resolves backend names with the system resolver"),
    "resolver_timeout": (NOT_NEEDED, "the gateway resolves backend names with the system resolver"),
    "http2": (APPROXIMATED, "the gateway speaks HTTP/1.1 to clients (ALPN http/1.1)"),
    "http2_max_concurrent_streams": (NOT_NEEDED, "the gateway speaks HTTP/1.1"),
    "http2_push": (UNSUPPORTED, "the gateway speaks HTTP/1.1; no server push"),
    "http2_push_preload": (UNSUPPORTED, "the gateway speaks HTTP/1.1; no server push"),
    "http3": (UNSUPPORTED, "the gateway does not speak HTTP/3 (QUIC)"),
    "quic_retry": (UNSUPPORTED, "the gateway does not speak HTTP/3 (QUIC)"),
    # TLS
    "ssl_prefer_server_ciphers": (NOT_NEEDED, _TLS_TUNING),
    "ssl_session_cache": (NOT_NEEDED, _TLS_TUNING),
    "ssl_session_timeout": (NOT_NEEDED, _TLS_TUNING),
    "ssl_session_tickets": (NOT_NEEDED, _TLS_TUNING),
    "ssl_buffer_size": (NOT_NEEDED, _TLS_TUNING),
    "ssl_early_data": (NOT_NEEDED, "the gateway does not accept TLS 1.3 early data (safer)"),
    "ssl_ciphers": (
        APPROXIMATED,
        "the gateway uses OpenSSL's default ciphers for TLS 1.2+ (no custom cipher list)",
    ),
    "ssl_ecdh_curve": (APPROXIMATED, "the gateway uses OpenSSL's default curves"),
    "ssl_dhparam": (NOT_NEEDED, "the gateway's TLS 1.2+ ciphers use ECDHE, not DH parameters"),
    "ssl_conf_command": (APPROXIMATED, "no OpenSSL configuration commands in the gateway"),
    "ssl_stapling": (APPROXIMATED, "the gateway does not staple OCSP responses"),
    "ssl_stapling_verify": (APPROXIMATED, "the gateway does not staple OCSP responses"),
    "ssl_trusted_certificate": (APPROXIMATED, "the gateway does not staple OCSP responses"),
    "ssl_client_certificate": (UNSUPPORTED, "no client certificate checks (mutual TLS)"),
    "ssl_verify_client": (UNSUPPORTED, "no client certificate checks (mutual TLS)"),
    "ssl_verify_depth": (UNSUPPORTED, "no client certificate checks (mutual TLS)"),
    "ssl_password_file": (UNSUPPORTED, "the key file must not be encrypted"),
    # logging
    "access_log": (APPROXIMATED, _LOGS),
    "error_log": (APPROXIMATED, _LOGS),
    "log_format": (APPROXIMATED, "the gateway's access log has its own format"),
    "open_log_file_cache": (NOT_NEEDED, _LOGS),
    "log_not_found": (NOT_NEEDED, _LOGS),
    "rewrite_log": (NOT_NEEDED, _LOGS),
    # compression
    "gzip": (
        APPROXIMATED,
        "the gateway does not compress: responses pass as the backend sent them",
    ),
    "gzip_static": (UNSUPPORTED, "the gateway does not serve precompressed .gz files"),
    "gunzip": (NOT_NEEDED, "the gateway never decompresses"),
    # proxying: what the gateway does by itself
    "proxy_http_version": (NOT_NEEDED, "the gateway speaks HTTP/1.1 to backends"),
    "proxy_buffering": (NOT_NEEDED, _STREAMS),
    "proxy_buffers": (NOT_NEEDED, _STREAMS),
    "proxy_buffer_size": (NOT_NEEDED, _STREAMS),
    "proxy_busy_buffers_size": (NOT_NEEDED, _STREAMS),
    "proxy_request_buffering": (NOT_NEEDED, _STREAMS),
    "proxy_max_temp_file_size": (NOT_NEEDED, _STREAMS),
    "proxy_temp_file_write_size": (NOT_NEEDED, _STREAMS),
    "proxy_temp_path": (NOT_NEEDED, _STREAMS),
    "proxy_ignore_client_abort": (NOT_NEEDED, "a client that goes away ends its backend request"),
    "proxy_socket_keepalive": (NOT_NEEDED, "backend connections are pooled by the gateway"),
    "proxy_next_upstream": (
        APPROXIMATED,
        "the gateway retries idempotent requests on the next target by its own rules",
    ),
    "proxy_next_upstream_tries": (
        APPROXIMATED,
        "the gateway retries idempotent requests on the next target by its own rules",
    ),
    "proxy_next_upstream_timeout": (
        APPROXIMATED,
        "the gateway retries idempotent requests on the next target by its own rules",
    ),
    "proxy_pass_header": (
        APPROXIMATED,
        "the gateway passes the backend's headers (Server, Date, X-Accel-*) unless hidden",
    ),
    "proxy_ssl_server_name": (NOT_NEEDED, "the gateway sends SNI to https backends"),
    "proxy_ssl_certificate": (UNSUPPORTED, "no client certificate towards backends"),
    "proxy_ssl_certificate_key": (UNSUPPORTED, "no client certificate towards backends"),
    "proxy_ssl_protocols": (NOT_NEEDED, "the gateway uses TLS 1.2+ towards backends"),
    "proxy_ssl_ciphers": (NOT_NEEDED, "the gateway uses OpenSSL's default ciphers"),
    "proxy_ssl_session_reuse": (NOT_NEEDED, _TLS_TUNING),
    "proxy_intercept_errors": (UNSUPPORTED, "backend error pages pass unchanged"),
    "proxy_cookie_domain": (UNSUPPORTED, "cookies pass unchanged"),
    "proxy_cookie_path": (UNSUPPORTED, "cookies pass unchanged"),
    "proxy_cookie_flags": (UNSUPPORTED, "cookies pass unchanged"),
    "proxy_method": (UNSUPPORTED, "the client's method is forwarded"),
    "proxy_pass_request_body": (UNSUPPORTED, "request bodies are always forwarded"),
    "proxy_pass_request_headers": (UNSUPPORTED, "request headers are always forwarded"),
    "proxy_set_body": (UNSUPPORTED, "request bodies are forwarded unchanged"),
    "proxy_bind": (UNSUPPORTED, "no source address for backend connections"),
    "proxy_store": (UNSUPPORTED, _CACHE),
    "proxy_cache": (UNSUPPORTED, _CACHE),
    "proxy_cache_path": (UNSUPPORTED, _CACHE),
    "proxy_cache_key": (UNSUPPORTED, _CACHE),
    "proxy_cache_valid": (UNSUPPORTED, _CACHE),
    "proxy_cache_bypass": (UNSUPPORTED, _CACHE),
    "proxy_no_cache": (UNSUPPORTED, _CACHE),
    "proxy_cache_use_stale": (UNSUPPORTED, _CACHE),
    "proxy_cache_lock": (UNSUPPORTED, _CACHE),
    "proxy_cache_methods": (UNSUPPORTED, _CACHE),
    "proxy_cache_min_uses": (UNSUPPORTED, _CACHE),
    "proxy_cache_revalidate": (UNSUPPORTED, _CACHE),
    "proxy_cache_background_update": (UNSUPPORTED, _CACHE),
    "proxy_ignore_headers": (UNSUPPORTED, _CACHE),
    "fastcgi_pass": (UNSUPPORTED, _OTHER_BACKEND),
    "uwsgi_pass": (UNSUPPORTED, _OTHER_BACKEND),
    "scgi_pass": (UNSUPPORTED, _OTHER_BACKEND),
    "grpc_pass": (UNSUPPORTED, _OTHER_BACKEND),
    "memcached_pass": (UNSUPPORTED, _OTHER_BACKEND),
    "fastcgi_param": (UNSUPPORTED, _OTHER_BACKEND),
    "fastcgi_index": (UNSUPPORTED, _OTHER_BACKEND),
    "fastcgi_split_path_info": (UNSUPPORTED, _OTHER_BACKEND),
    "uwsgi_param": (UNSUPPORTED, _OTHER_BACKEND),
    "scgi_param": (UNSUPPORTED, _OTHER_BACKEND),
    # request processing the gateway does not do
    "rewrite": (UNSUPPORTED, "no URL rewriting (routes forward paths as they are)"),
    "if": (UNSUPPORTED, "no conditional configuration"),
    "set": (UNSUPPORTED, "no variables to set"),
    "break": (UNSUPPORTED, "no rewrite module"),
    "error_page": (UNSUPPORTED, "no custom error pages; backend errors pass unchanged"),
    "recursive_error_pages": (UNSUPPORTED, "no custom error pages"),
    "internal": (UNSUPPORTED, "an internal location serves only internal redirects"),
    "limit_except": (UNSUPPORTED, "no per-method access rules"),
    "limit_rate": (UNSUPPORTED, "no bandwidth limit"),
    "limit_rate_after": (UNSUPPORTED, "no bandwidth limit"),
    "limit_req_status": (APPROXIMATED, "the gateway answers 429 to limited requests"),
    "limit_conn_status": (APPROXIMATED, "the gateway answers 429 to limited connections"),
    "limit_req_log_level": (NOT_NEEDED, _LOGS),
    "limit_conn_log_level": (NOT_NEEDED, _LOGS),
    "auth_basic": (
        UNSUPPORTED,
        "htpasswd hashes cannot be converted: set auth.basic_users with `gateway hash-password`",
    ),
    "auth_basic_user_file": (
        UNSUPPORTED,
        "htpasswd hashes cannot be converted: set auth.basic_users with `gateway hash-password`",
    ),
    "auth_request": (UNSUPPORTED, "no sub-request authentication; see [[middleware]]"),
    "auth_request_set": (UNSUPPORTED, "no sub-request authentication; see [[middleware]]"),
    "satisfy": (UNSUPPORTED, "no combined access rules"),
    "autoindex": (UNSUPPORTED, "the gateway never lists directories"),
    "autoindex_exact_size": (UNSUPPORTED, "the gateway never lists directories"),
    "autoindex_localtime": (UNSUPPORTED, "the gateway never lists directories"),
    "autoindex_format": (UNSUPPORTED, "the gateway never lists directories"),
    "sub_filter": (UNSUPPORTED, "bodies pass unchanged"),
    "sub_filter_once": (UNSUPPORTED, "bodies pass unchanged"),
    "sub_filter_types": (UNSUPPORTED, "bodies pass unchanged"),
    "ssi": (UNSUPPORTED, "bodies pass unchanged"),
    "charset": (UNSUPPORTED, "Content-Type passes unchanged"),
    "source_charset": (UNSUPPORTED, "Content-Type passes unchanged"),
    "etag": (NOT_NEEDED, "the gateway sends ETag for static files"),
    "if_modified_since": (NOT_NEEDED, "the gateway answers If-Modified-Since for static files"),
    "disable_symlinks": (
        APPROXIMATED,
        "the gateway follows symlinks only to files inside the root",
    ),
    "stream": (UNSUPPORTED, "the gateway proxies HTTP and WebSocket, not raw TCP/UDP"),
    "mail": (UNSUPPORTED, "the gateway proxies HTTP and WebSocket, not mail"),
    "geo": (UNSUPPORTED, "no variables from client addresses; see [ip]"),
    "split_clients": (UNSUPPORTED, "no A/B splitting"),
    "sticky": (UNSUPPORTED, "no sticky sessions (ip_hash is the nearest)"),
}

# Directives the translator reads (by name), in any context.
HANDLED = frozenset(
    {
        "http",
        "server",
        "listen",
        "server_name",
        "location",
        "upstream",
        "map",
        "ssl",
        "ssl_certificate",
        "ssl_certificate_key",
        "ssl_protocols",
        "proxy_pass",
        "proxy_set_header",
        "proxy_hide_header",
        "proxy_redirect",
        "proxy_ssl_verify",
        "proxy_ssl_trusted_certificate",
        "proxy_connect_timeout",
        "proxy_read_timeout",
        "proxy_send_timeout",
        "client_body_timeout",
        "client_max_body_size",
        "add_header",
        "expires",
        "allow",
        "deny",
        "root",
        "alias",
        "index",
        "try_files",
        "return",
        "limit_req_zone",
        "limit_req",
        "limit_conn_zone",
        "limit_conn",
        "set_real_ip_from",
        "real_ip_header",
        "real_ip_recursive",
        # inside upstream blocks
        "least_conn",
        "ip_hash",
        "hash",
        "random",
        "keepalive",
        "zone",
    }
)

KNOWN_DIRECTIVES = frozenset(GENERIC) | HANDLED


def generic_note(name: str, args: tuple[str, ...] = ()) -> tuple[str, str]:
    """``(kind, reason)`` for a directive the translator does not read."""
    if args == ("off",) and name in ("gzip", "access_log", "http2", "ssl_stapling"):
        return NOT_NEEDED, "off, as in the gateway"
    if name in GENERIC:
        return GENERIC[name]
    if name.startswith(("gzip_", "brotli")):
        return NOT_NEEDED, "the gateway does not compress"
    if name.startswith(("proxy_cache", "fastcgi_", "uwsgi_", "scgi_", "grpc_")):
        return UNSUPPORTED, _CACHE if name.startswith("proxy_cache") else _OTHER_BACKEND
    if name.startswith(("ssl_", "http2_")):
        return UNSUPPORTED, "not translated (no matching gateway setting)"
    return UNSUPPORTED, "unknown to the translator; not translated"
