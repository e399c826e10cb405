"""A fault-injecting HTTP proxy for tests: 127.0.0.1 (free port) in front of one upstream base URL.

Every request is recorded in `seen`, handed to `on_request`, then (if `target` accepts it) gets a
fault with probability `rate`, drawn from `kinds` by a seeded RNG under a lock (reproducible with
one client thread).  Fault kinds:

- "429" (no Retry-After), "429-retry-after" (`Retry-After: 1`), "500", "502", "503": answered by
  the proxy itself with a short body, upstream never sees the request;
- "drop-before": the client connection is closed without forwarding;
- "drop-after": forwarded and fully processed upstream, then the client connection is closed
  without an answer (the response is lost: the classic duplicate-on-retry trap);
- "slow": sleeps `slow_s`, then forwards normally.

Bodies: request bodies up to SPOOL_IN_MEMORY bytes are held in memory, bigger ones (artifact
uploads) are spooled to a temporary file and streamed upstream; callbacks get the body, or its
first CALLBACK_BODY_LIMIT bytes when it is bigger.  Responses are streamed back chunk by chunk.
"""

from __future__ import annotations

import collections
import http.client
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence
from urllib.parse import urlsplit

ALL_KINDS = ("429", "429-retry-after", "500", "502", "503", "drop-before", "drop-after", "slow")

SPOOL_IN_MEMORY = 8 * 1024 * 1024
CALLBACK_BODY_LIMIT = 1024 * 1024
CHUNK = 256 * 1024

# RFC 9110 section 7.6.1: connection-specific headers, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
STATUS_TEXT = {"429": "Too Many Requests", "500": "Internal Server Error", "502": "Bad Gateway",
               "503": "Service Unavailable"}

RequestHook = Callable[[str, str, bytes], None]
RequestFilter = Callable[[str, str, bytes], bool]


class FaultProxy:
    """HTTP proxy on 127.0.0.1 (free port) in front of one upstream base URL."""

    def __init__(self, upstream: str, *, rate: float = 0.0, seed: int = 0,
                 kinds: Sequence[str] = ALL_KINDS, slow_s: float = 0.5,
                 target: RequestFilter | None = None, on_request: RequestHook | None = None):
        unknown = set(kinds) - set(ALL_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {ALL_KINDS}, got {sorted(unknown)}")
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_netloc = parts.netloc
        self.upstream_prefix = parts.path.rstrip("/")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.slow_s = slow_s
        self.target = target
        self.on_request = on_request
        self.injected: collections.Counter = collections.Counter()
        self.seen: list[tuple[str, str]] = []
        self.url = ""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _decide(self, method: str, path: str, head: bytes) -> str | None:
        """The fault for this request, or None; records the request first."""
        with self._lock:
            self.seen.append((method, path))
        if self.on_request is not None:
            self.on_request(method, path, head)
        if self.rate <= 0 or (self.target is not None and not self.target(method, path, head)):
            return None
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.injected[kind] += 1
            return kind


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128   # listen() backlog: many workers connect at once

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return   # a client that went away (or was killed) mid-exchange: expected here
        super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests read `seen` instead
        pass

    def _handle(self) -> None:
        proxy = self.owner
        body = self._read_body()
        try:
            body.seek(0)
            head = body.read(CALLBACK_BODY_LIMIT)
            kind = proxy._decide(self.command, self.path, head)
            if kind is not None and kind[:3].isdigit():
                self._answer_error(int(kind[:3]), retry_after="1" if kind == "429-retry-after" else None)
                return
            if kind == "drop-before":
                self._drop()
                return
            if kind == "slow":
                time.sleep(proxy.slow_s)
            self._forward(body, lose_response=(kind == "drop-after"))
        finally:
            body.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _read_body(self):
        """The request body, spooled (memory up to SPOOL_IN_MEMORY, then a temporary file)."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                _copy_exact(self.rfile, spool, size)
                self.rfile.readline()
        else:
            _copy_exact(self.rfile, spool, int(self.headers.get("Content-Length") or 0))
        return spool

    def _answer_error(self, status: int, retry_after: str | None) -> None:
        payload = f'{{"error_code": "INJECTED_FAULT", "message": "injected {status}"}}'.encode()
        self.send_response(status, STATUS_TEXT.get(str(status)))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self) -> None:
        """Close the client connection without a byte of answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _forward(self, body, *, lose_response: bool) -> None:
        proxy = self.owner
        length = body.seek(0, 2)
        body.seek(0)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        headers["Host"] = proxy.upstream_netloc
        if length or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(length)
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=300)
        try:
            try:
                upstream.putrequest(self.command, proxy.upstream_prefix + self.path,
                                    skip_host=True, skip_accept_encoding=True)
                for name, value in headers.items():
                    upstream.putheader(name, value)
                upstream.endheaders()
                if length:
                    shutil.copyfileobj(body, _SockWriter(upstream), CHUNK)
                response = upstream.getresponse()
            except OSError:  # upstream down or reset: answer as a gateway would
                if lose_response:
                    self._drop()
                else:
                    self._answer_error(502, None)
                return
            if lose_response:
                response.read()  # let upstream finish its work, then lose the answer
                self._drop()
                return
            self._relay(response)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("content-length", "date", "server"):
                self.send_header(name, value)
        self.send_header("Date", self.date_time_string())
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        chunked = length is None and not no_body
        if length is not None:
            self.send_header("Content-Length", length)
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            response.read()
            return
        while True:
            data = response.read1(CHUNK) if chunked else response.read(CHUNK)
            if not data:
                break
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class _SockWriter:
    """File-like `write` onto an http.client connection (for shutil.copyfileobj)."""

    def __init__(self, conn: http.client.HTTPConnection):
        self._conn = conn

    def write(self, data: bytes) -> int:
        self._conn.send(data)
        return len(data)


def _copy_exact(src, dst, size: int) -> None:
    while size > 0:
        data = src.read(min(CHUNK, size))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        dst.write(data)
        size -= len(data)
