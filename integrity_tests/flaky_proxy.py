"""An HTTP proxy in front of moto that misbehaves the way real S3-compatible stores do.

It can answer ListObjectsV2 with 503 SlowDown (transient or for good) and cap the keys per
page below what the client asked for (as R2 may); answer HEAD with 503 SlowDown for good, refuse
some keys with 400 InvalidArgument, or reset the connection on them; and forward everything else
untouched.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FlakyProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.fail_next_lists = 0  # transient: the next N list requests get 503
        self.fail_lists_after = None  # permanent: every list page after this many succeed gets 503
        self.max_keys: int | None = None  # cap keys per page
        self.lists_served = 0
        self.lists_failed = 0
        self.fail_heads_after: int | None = None  # every HEAD after this many succeed gets 503
        self.fail_delay = 0.0  # seconds each such 503 takes (a store that is slow to fail)
        self.refuse_keys: tuple[str, ...] = ()  # HEADs of keys containing these get 400
        self.reset_keys: tuple[str, ...] = ()  # HEADs of keys containing these: connection reset
        self.heads_served = 0
        self.heads_failed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path
                query = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
                is_list = self.command == "GET" and query.get("list-type") == "2"
                if self.command == "HEAD" and self._head_fault(unquote(urlsplit(path).path)):
                    return
                if is_list:
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
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOW_DOWN)))
                        self.end_headers()
                        self.wfile.write(SLOW_DOWN)
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
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

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
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

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
