"""Old home of the lab's servers and clients, now `sensor.lab.servers`: re-exports its names."""

from sensor.lab.servers import (
    CHUNK,
    DNS_PORT,
    DNS_TTL,
    H3_ALPN,
    HTTP_PORT,
    HTTPS_PORT,
    IO_TIMEOUT,
    MAX_HEAD,
    EventLog,
    ServeConfig,
    Zone,
    build_parser,
    dns_answer,
    dns_query,
    main,
    post,
    post_h3,
    resolve,
    server_tls_context,
)

__all__ = [
    "CHUNK",
    "DNS_PORT",
    "DNS_TTL",
    "H3_ALPN",
    "HTTPS_PORT",
    "HTTP_PORT",
    "IO_TIMEOUT",
    "MAX_HEAD",
    "EventLog",
    "ServeConfig",
    "Zone",
    "build_parser",
    "dns_answer",
    "dns_query",
    "main",
    "post",
    "post_h3",
    "resolve",
    "server_tls_context",
]

if __name__ == "__main__":
    raise SystemExit(main())
