"""A forwarding HTTP proxy on 127.0.0.1 in front of one test server, for
tests that look at (or change) what a client receives: the integrity tests
flip bits in response bodies, the distributed tests count the bytes fetched.

Everything is forwarded as sent (the client's Host header included, so
SigV4, Shared Key and SAS signatures stay valid). Each response is read whole
and passed to `on_response`, which may return other bytes; the body is then
sent with its own Content-Length."""

from __future__ import annotations

import http.client
import http.server
import threading

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class ForwardingProxy:
    def __init__(self, target: str) -> None:
        self.target = target  # "127.0.0.1:PORT"
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = self._read_chunked()  # uploads (GCS writes sidecars so)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(proxy.target, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out_headers = resp.getheaders()
                finally:
                    conn.close()
                data = proxy.on_response(self.command, self.headers, resp, data)
                self.send_response_only(resp.status, resp.reason)
                for k, v in out_headers:
                    if k.lower() not in _HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _read_chunked(self) -> bytes:
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on_response(self, command: str, request_headers, resp: http.client.HTTPResponse,
                    data: bytes) -> bytes:
        """The body to send back (called on the handler's thread)."""
        return data

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.hostport}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CountingProxy(ForwardingProxy):
    """Counts the body bytes of every GET response: what the clients fetched
    from storage, whatever they report."""

    def __init__(self, target: str) -> None:
        self.get_bytes = 0
        self.gets = 0
        super().__init__(target)

    def on_response(self, command, request_headers, resp, data: bytes) -> bytes:
        if command == "GET":
            with self._lock:
                self.get_bytes += len(data)
                self.gets += 1
        return data

