#!/bin/sh
# The image's entrypoint: `gateway "$@"`, with the certificate taken from the mounted
# directory GATEWAY_TLS_DIR when it holds one and none is configured otherwise.
#   tls.crt + tls.key    a Kubernetes TLS Secret mounted as a volume
#   cert.pem + key.pem   what `gateway cert --out DIR` writes
# Neither: the gateway makes a development certificate for localhost and logs that.
# exec: the gateway becomes PID 1 and receives SIGTERM/SIGHUP directly.
set -eu

tls_dir=${GATEWAY_TLS_DIR:-/etc/gateway/tls}
if [ -z "${GATEWAY_LISTEN__CERTFILE:-}" ] && [ -z "${GATEWAY_LISTEN__KEYFILE:-}" ]; then
    for pair in tls.crt:tls.key cert.pem:key.pem; do
        cert=$tls_dir/${pair%%:*}
        key=$tls_dir/${pair##*:}
        if [ -f "$cert" ] && [ -f "$key" ]; then
            export GATEWAY_LISTEN__CERTFILE="$cert" GATEWAY_LISTEN__KEYFILE="$key"
            break
        fi
    done
fi

exec gateway "$@"
