"""An HTTP proxy in front of moto that misbehaves the way real S3-compatible stores do.

It can answer ListObjectsV2 with 503 SlowDown (transient or for good), cap the keys per
page below what the client asked for (as R2 may) and drop NextContinuationToken from truncated
pages (as no store should); answer HEAD with 503 SlowDown for good, refuse
some keys with 400 InvalidArgument, or reset the connection on them; and forward everything else
untouched.

It can also inject one kind of fault into a share of the requests of chosen kinds (listings,
object HEADs, the bucket HEAD):

  503    a 503 SlowDown answer, as a throttling store sends it;
  reset  the connection is reset (TCP RST) before any byte of the answer;
  cut    the status line and headers (with the full Content-Length) and half the body are sent,
         then the connection is closed; an answer without a body (HEAD) is cut halfway through
         its headers;
  short  a well-formed answer whose body is the first half of the real one, its Content-Length
         saying so; an answer without a body (HEAD) has nothing to shorten and passes untouched.

Whether a request is faulted is decided from the seed, the request line (without the bucket)
and how many times the same request line was seen before, never from arrival order: a retry of
a faulted request is decided afresh, and the same requests get the same faults however the
client's threads interleave, so a run is reproducible.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
FAULTS = ("503", "reset", "cut", "short")
REQUEST_KINDS = ("list", "head", "bucket", "other")
# Hop-by-hop headers, and the length, which the proxy sets itself.
_NOT_FORWARDED = ("transfer-encoding", "connection", "content-length", "keep-alive")


def request_kind(method: str, path: str) -> str:
    """'list' (ListObjectsV2), 'head' (an object's HEAD), 'bucket' (HeadBucket) or 'other'.

    Path-style addressing, as boto3 uses against an IP endpoint: /bucket or /bucket/key.
    """
    parts = urlsplit(path)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if method == "GET" and query.get("list-type") == "2":
        return "list"
    if method == "HEAD":
        return "head" if "/" in parts.path.strip("/") else "bucket"
    return "other"


class FlakyProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.fail_next_lists = 0  # transient: the next N list requests get 503
        self.fail_lists_after = None  # permanent: every list page after this many succeed gets 503
        self.max_keys: int | None = None  # cap keys per page
        self.drop_continuation_tokens = False  # list answers lose their NextContinuationToken
        self.lists_served = 0
        self.lists_failed = 0
        self.fail_heads_after: int | None = None  # every HEAD after this many succeed gets 503
        self.fail_delay = 0.0  # seconds each such 503 takes (a store that is slow to fail)
        self.refuse_keys: tuple[str, ...] = ()  # HEADs of keys containing these get 400
        self.reset_keys: tuple[str, ...] = ()  # HEADs of keys containing these: connection reset
        self.heads_served = 0
        self.heads_failed = 0
        # Fault injection (see the module docstring): one fault, at a rate, on chosen requests.
        self.fault: str | None = None
        self.fault_rate = 0.0
        self.fault_on: frozenset[str] = frozenset({"list", "head"})
        self.seed = 0
        self.requests: Counter[str] = Counter()  # by request kind
        self.faulted: Counter[str] = Counter()  # by request kind
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send_raw(self, head: bytes, body: bytes) -> None:
                self.wfile.write(head + body)
                self.wfile.flush()

            def _head_block(
                self, status: int, reason: str, headers: list[tuple[str, str]]
            ) -> bytes:
                lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
                return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

            def _slow_down(self) -> None:
                headers = [
                    ("Content-Type", "application/xml"),
                    ("Content-Length", str(len(SLOW_DOWN))),
                ]
                body = b"" if self.command == "HEAD" else SLOW_DOWN
                self._send_raw(self._head_block(503, "Slow Down", headers), body)

            def _reset(self) -> None:
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path
                kind = request_kind(self.command, path)
                query = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
                if self.command == "HEAD" and self._head_fault(unquote(urlsplit(path).path)):
                    return
                fault = proxy._decide(kind, self.command, path)
                if fault == "503":
                    self._slow_down()
                    return
                if fault == "reset":
                    self._reset()
                    return
                if kind == "list":
                    with proxy._lock:
                        fail = proxy.fail_next_lists > 0 or (
                            proxy.fail_lists_after is not None
                            and proxy.lists_served >= proxy.fail_lists_after
                        )
                        if proxy.fail_next_lists > 0:
                            proxy.fail_next_lists -= 1
                        if fail:
                            proxy.lists_failed += 1
                        else:
                            proxy.lists_served += 1
                    if fail:
                        self._slow_down()
                        return
                    if proxy.max_keys is not None:
                        query["max-keys"] = str(
                            min(int(query.get("max-keys", 1000)), proxy.max_keys)
                        )
                        path = urlsplit(path).path + "?" + urlencode(query)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("connection",)
                }
                conn.request(self.command, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                forwarded = [
                    (k, v) for k, v in response.getheaders() if k.lower() not in _NOT_FORWARDED
                ]
                if self.command == "HEAD":
                    # No body: the length is the object's, as the store sent it.
                    upstream_length = response.getheader("Content-Length")
                    if upstream_length is not None:
                        forwarded.append(("Content-Length", upstream_length))
                else:
                    if fault == "short":
                        data = data[: len(data) // 2]
                    if kind == "list" and proxy.drop_continuation_tokens:
                        data = re.sub(
                            rb"<NextContinuationToken>[^<]*</NextContinuationToken>", b"", data
                        )
                    forwarded.append(("Content-Length", str(len(data))))
                head = self._head_block(response.status, response.reason, forwarded)
                if fault == "cut":
                    sent = head[: len(head) // 2] if not data else head + data[: len(data) // 2]
                    self._send_raw(sent, b"")
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._send_raw(head, data)

            def _head_fault(self, key: str) -> bool:
                """Answer a HEAD of an object with a fault, if one is set for it; True if it was
                answered. HEADs of the bucket itself are forwarded."""
                if not key.lstrip("/").partition("/")[2]:
                    return False
                if any(k in key for k in proxy.reset_keys):
                    self.close_connection = True  # no answer at all: the client sees a reset
                    return True
                if any(k in key for k in proxy.refuse_keys):
                    self._answer(400)
                    return True
                with proxy._lock:
                    fail = (
                        proxy.fail_heads_after is not None
                        and proxy.heads_served >= proxy.fail_heads_after
                    )
                    if fail:
                        proxy.heads_failed += 1
                    else:
                        proxy.heads_served += 1
                if fail:
                    time.sleep(proxy.fail_delay)
                    self._answer(503)
                return fail

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def inject(
        self,
        fault: str | None,
        rate: float,
        on: tuple[str, ...] = ("list", "head"),
        seed: int = 0,
    ) -> FlakyProxy:
        """Fault `rate` (0..1) of the requests of the kinds `on` with `fault` (None: none)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault {fault!r}: one of {', '.join(FAULTS)}")
        unknown = set(on) - set(REQUEST_KINDS)
        if unknown:
            raise ValueError(f"request kinds {sorted(unknown)}: from {', '.join(REQUEST_KINDS)}")
        with self._lock:
            self.fault, self.fault_rate, self.fault_on, self.seed = fault, rate, frozenset(on), seed
            self._seen.clear()
        return self

    def _decide(self, kind: str, method: str, path: str) -> str | None:
        """The fault for this request, if any; counts every request by kind."""
        with self._lock:
            self.requests[kind] += 1
            if self.fault is None or kind not in self.fault_on or self.fault_rate <= 0:
                return None
            if self.fault == "short" and method == "HEAD":
                return None  # no body to shorten: not a fault, and not counted as one
            # The bucket is left out, so a world planted again in another bucket gets the same.
            parts = urlsplit(path)
            line = f"{method} {parts.path.lstrip('/').partition('/')[2]}?{parts.query}"
            seen = self._seen[line]
            self._seen[line] += 1
            digest = hashlib.blake2b(f"{self.seed}|{line}|{seen}".encode(), digest_size=8).digest()
            if int.from_bytes(digest, "big") / 2**64 >= self.fault_rate:
                return None
            self.faulted[kind] += 1
            return self.fault

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
