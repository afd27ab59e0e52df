"""The lab's long-running processes: the server pod's listeners, and a daemonizing launcher.

Run inside the server pod's namespace as
`ip netns exec NS python -m cnitrace.lab.servers --http 8080 --udp 8080 ...`; the command
returns only once every socket is bound (so `lab up` never races its own server), prints
the daemon's pid, and leaves a session-leader daemon whose stdio is /dev/null (so the
Runner's pipes close). The daemon lives until it is killed: by `lab down`, by
`cnitrace cleanup`, or with its namespace.

`python -m cnitrace.lab.servers exec --log FILE --wait-port P -- ARGV...` starts a foreground
program (nginx with `daemon off`, haproxy) the same way: detached, output to FILE, and
returns its pid once it accepts connections on 127.0.0.1:P.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import sys
import threading
import time

BODY = b"cnitrace lab server\n"


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers every method with 200 so that a 403 can only come from the L7 proxy."""

    protocol_version = "HTTP/1.1"
    server_version = "cnitrace-lab"

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(BODY)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _reply

    def log_message(self, fmt: str, *args: object) -> None:  # quiet: stdio is /dev/null anyway
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def udp_echo(sock: socket.socket) -> None:
    while True:
        data, addr = sock.recvfrom(65535)
        try:
            sock.sendto(data, addr)
        except OSError:
            pass


def bind_all(http_ports: list[int], udp_ports: list[int]) -> list[threading.Thread]:
    threads = []
    for port in http_ports:
        srv = Server(("0.0.0.0", port), Handler)
        threads.append(threading.Thread(target=srv.serve_forever, daemon=True))
    for port in udp_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        threads.append(threading.Thread(target=udp_echo, args=(s,), daemon=True))
    return threads


def _daemonize(start) -> int:
    """Fork a session-leader child with stdio on /dev/null; the parent returns once `start()`
    in the child reports ready (printing the child's pid) or failed (printing why)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd) as r:
            msg = r.read().strip()
        if msg.startswith("ready"):
            print(msg.split()[1])
            return 0
        print(msg or "process died before it was ready", file=sys.stderr)
        return 1
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        start(wfd)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits non-zero
        os.write(wfd, f"error: {exc}".encode())
    os._exit(1)


def _serve(args: argparse.Namespace, wfd: int) -> None:
    try:
        threads = bind_all(args.http, args.udp)
    except OSError as exc:
        raise RuntimeError(f"cannot bind: {exc}") from None
    for t in threads:
        t.start()
    os.write(wfd, f"ready {os.getpid()}".encode())
    os.close(wfd)
    threading.Event().wait()


def _wait_port(port: int, deadline: float, child: int) -> bool:
    while time.monotonic() < deadline:
        if os.waitpid(child, os.WNOHANG) != (0, 0):
            return False
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _exec(args: argparse.Namespace, wfd: int) -> None:
    log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    child = os.fork()
    if child == 0:
        os.close(wfd)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.execvp(args.argv[0], args.argv)
    # This intermediate process waits for readiness, reports the program's pid, and leaves it
    # to be reparented (it is not a zombie: init reaps it once we exit).
    if _wait_port(args.wait_port, time.monotonic() + args.timeout, child):
        os.write(wfd, f"ready {child}".encode())
        os._exit(0)
    with open(args.log, errors="replace") as f:
        tail = (f.read().strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"{args.argv[0]} did not listen on port {args.wait_port}: {tail}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["exec"]:
        ap = argparse.ArgumentParser(prog="cnitrace.lab.servers exec")
        ap.add_argument("--log", required=True)
        ap.add_argument("--wait-port", type=int, required=True)
        ap.add_argument("--timeout", type=float, default=10.0)
        ap.add_argument("argv", nargs="+")
        args = ap.parse_args(argv[1:])
        return _daemonize(lambda wfd: _exec(args, wfd))
    ap = argparse.ArgumentParser(prog="cnitrace.lab.servers")
    ap.add_argument("--http", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    args = ap.parse_args(argv)
    return _daemonize(lambda wfd: _serve(args, wfd))


if __name__ == "__main__":
    raise SystemExit(main())
