"""The agent's HTTP endpoint (stdlib, one thread): /metrics, /report.json, /healthz.

/metrics is the Prometheus text exposition of the exporter (prometheus_client's own encoder);
/report.json is exactly the last window's profile document (reports/profile.schema.json) with
the agent's top-level "agent" section, what `cnitrace merge` and the kubectl plugin fetch;
/healthz answers 200 while windows keep closing (503 before the first, or when the last is
more than three windows old).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cnitrace.agent.loop import rss_bytes
from cnitrace.core.errors import UsageError
from cnitrace.reports.metrics import exposition


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT (IPv6 in brackets) -> (addr, port); refused with one line."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"invalid --listen {text!r}: ADDR:PORT, e.g. 127.0.0.1:9477")
    return host, int(port)


def health(agent: Any, now: float | None = None) -> tuple[int, dict[str, Any]]:
    now = time.monotonic() if now is None else now
    last = agent.last_window_at
    body = {"windows_total": agent.windows_total, "window_s": agent.cfg.window, "rss_bytes": rss_bytes(),
            "last_window_age_s": None if last is None else round(now - last, 3)}
    ok = last is not None and now - last <= 3 * agent.cfg.window + 30
    return (200 if ok else 503), {"status": "ok" if ok else ("starting" if last is None else "stale"), **body}


def handler_for(agent: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cnitrace-agent"

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, exposition(agent.exporter), CONTENT_TYPE_LATEST)
            elif path == "/report.json":
                doc = agent.document()
                if doc is None:
                    self._send(503, b'{"error": "no window has closed yet"}\n', "application/json")
                else:
                    self._send(200, json.dumps(doc, sort_keys=True).encode(), "application/json")
            elif path == "/healthz":
                code, body = health(agent)
                self._send(code, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"not found: /metrics, /report.json, /healthz\n", "text/plain")

        do_HEAD = do_GET

        def log_message(self, *args: Any) -> None:   # quiet: a scrape every 15 s is not news
            return

    return Handler


class Endpoint:
    """The HTTP server in a daemon thread; closed with the agent."""

    def __init__(self, agent: Any, listen: tuple[str, int]):
        server = ThreadingHTTPServer
        if ":" in listen[0]:
            class Server6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            server = Server6
        try:
            self.httpd = server(listen, handler_for(agent))
        except OSError as exc:
            raise UsageError(f"--listen {listen[0]}:{listen[1]}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="cnitrace-agent-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def __enter__(self) -> "Endpoint":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
