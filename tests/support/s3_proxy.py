"""An S3 endpoint that ignores conditional writes, for tests: a small HTTP proxy in front
of a real S3 server (moto) that drops ``If-Match`` and ``If-None-Match`` from every
request, so a conditional PUT overwrites as some S3 clones (older MinIO releases among
them) do. Everything else passes through unchanged; moto does not check signatures.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DROPPED = frozenset({"if-match", "if-none-match"})
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


def _handler(upstream: str, dropped: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in dropped and k.lower() not in HOP_BY_HOP
            }
            conn = http.client.HTTPConnection(upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's name
            """Quiet: the test's output shows the requests that matter."""

    return Forward


@contextmanager
def ignoring_conditions(
    upstream: str, dropped: frozenset[str] = DROPPED, port: int = 0
) -> Iterator[str]:
    """A proxy on 127.0.0.1 (``port``, or a free one) in front of ``upstream`` (host:port)
    that drops the request headers named in ``dropped`` (lower case); yields its host:port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(upstream, dropped))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="s3-proxy", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
