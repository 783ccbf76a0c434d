"""A fault-injecting HTTP proxy on loopback, in front of the S3 test server.

Clients use the proxy's URL as their S3 endpoint. Each request is forwarded unchanged (same bytes, so signatures
stay valid) unless a fault rule matches it:

- ``fail(method, contains, statuses)``: the next ``len(statuses)`` matching requests are answered with those HTTP
  statuses (an S3-style XML error body) and never reach the server;
- ``drop(method, contains, times, after_bytes)``: the next ``times`` matching requests have their connection closed
  after ``after_bytes`` of the body were read (a connection dropped in the middle of an upload);
- ``fail_always(method, contains)``: every matching request gets 503 until ``clear()``.

``proxy.log`` records ``(method, path, outcome)`` for every request.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import socketserver
import threading
from urllib.parse import urlsplit

_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the test proxy'
          '</Message></Error>')
_CODES = {500: "InternalError", 503: "SlowDown"}


class FaultyProxy:
    def __init__(self, upstream: str):
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.rules: list[dict] = []
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.url = ""

    # -- rules ---------------------------------------------------------------------------------
    def fail(self, method: str, contains: str, statuses) -> None:
        with self.lock:
            self.rules.append({"kind": "status", "method": method, "contains": contains, "left": list(statuses)})

    def drop(self, method: str, contains: str, times: int = 1, after_bytes: int = 100) -> None:
        with self.lock:
            self.rules.append({"kind": "drop", "method": method, "contains": contains, "left": [after_bytes] * times})

    def fail_always(self, method: str, contains: str) -> None:
        with self.lock:
            self.rules.append({"kind": "always", "method": method, "contains": contains, "left": None})

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def count(self, outcome: str) -> int:
        return sum(1 for *_, o in list(self.log) if o == outcome)

    def _match(self, method: str, path: str):
        with self.lock:
            for r in self.rules:
                if r["method"] == method and r["contains"] in path and (r["left"] is None or r["left"]):
                    if r["kind"] == "always":
                        return "status", 503
                    return r["kind"], r["left"].pop(0)
        return None, None


def _read_headers(rfile):
    line = rfile.readline(65537)
    if not line:
        return None, None, None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while True:
        h = rfile.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, v = h.decode("latin-1").split(":", 1)
        headers.append((k.strip(), v.strip()))
    return method, target, headers


def _read_body(rfile, headers, limit=None):
    """The body bytes (Content-Length or chunked, re-encoded as a plain body); stop after ``limit`` bytes."""
    hd = {k.lower(): v for k, v in headers}
    if "content-length" in hd:
        n = int(hd["content-length"])
        return rfile.read(n if limit is None else min(n, limit))
    if hd.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                rfile.readline()
                return out
            out += rfile.read(size)
            rfile.readline()
            if limit is not None and len(out) >= limit:
                return out
    return b""


@contextlib.contextmanager
def faulty_proxy(upstream: str):
    """Yield a :class:`FaultyProxy` listening on 127.0.0.1 (free port) in front of ``upstream``."""
    proxy = FaultyProxy(upstream)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            conn = None
            while True:
                try:
                    method, target, headers = _read_headers(self.rfile)
                except (OSError, ValueError):
                    return
                if method is None:
                    return
                kind, arg = proxy._match(method, target)
                if any(k.lower() == "expect" and v.lower() == "100-continue" for k, v in headers):
                    # the client sends the body only after this (botocore asks for it on S3 uploads)
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.wfile.flush()
                if kind == "drop":
                    _read_body(self.rfile, headers, limit=arg)
                    proxy.log.append((method, target, "dropped"))
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = _read_body(self.rfile, headers)
                if kind == "status":
                    payload = _ERROR.format(code=_CODES.get(arg, "InternalError")).encode()
                    self.wfile.write(f"HTTP/1.1 {arg} Injected\r\nContent-Type: application/xml\r\n"
                                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                    proxy.log.append((method, target, str(arg)))
                    continue
                if conn is None:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                fwd = [(k, v) for k, v in headers if k.lower() not in ("transfer-encoding", "content-length",
                                                                        "connection", "expect")]
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for k, v in fwd:
                    conn.putheader(k, v)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                out = [f"HTTP/1.1 {resp.status} {resp.reason}\r\n".encode()]
                for k, v in resp.getheaders():
                    # a HEAD answer keeps the object's Content-Length (that is how clients learn its size)
                    if k.lower() not in ("transfer-encoding", "connection") and (
                            k.lower() != "content-length" or method == "HEAD"):
                        out.append(f"{k}: {v}\r\n".encode("latin-1"))
                if method != "HEAD":
                    out.append(f"Content-Length: {len(data)}\r\n".encode())
                out.append(b"\r\n")
                self.wfile.write(b"".join(out) + data)
                proxy.log.append((method, target, "ok"))

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
