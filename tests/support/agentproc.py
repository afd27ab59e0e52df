"""`cnitrace agent` as a subprocess on a free loopback port, as a DaemonSet would run it: what the
agent's and the cluster merge's host tests share."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CNITRACE = [sys.executable, "-m", "cnitrace"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProc:
    """The agent as a subprocess, as a DaemonSet would run it."""

    def __init__(self, lab: str, tmp: Path, *args: str):
        self.port = free_port()
        self.ready = tmp / f"ready-{self.port}"
        self.err = open(tmp / f"agent-{self.port}.log", "w+")
        self.proc = subprocess.Popen([*CNITRACE, "agent", "--lab", lab, "--listen", f"127.0.0.1:{self.port}",
                                      "--ready-file", str(self.ready), *args],
                                     stdout=subprocess.DEVNULL, stderr=self.err, text=True)

    def wait_ready(self, deadline_s: float = 240) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and not self.ready.exists():
            assert self.proc.poll() is None, self.log()
            time.sleep(0.1)
        assert self.ready.exists(), self.log()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self) -> dict:
        return json.loads(self.get("/healthz")[1])

    def wait_windows(self, n: int, deadline_s: float) -> dict:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.log()
            h = self.health()
            if h["windows_total"] >= n:
                return h
            time.sleep(0.1)
        raise AssertionError(f"fewer than {n} windows in {deadline_s} s\n{self.log()}")

    def log(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def windows(self) -> int:
        """Windows the agent has finished (its /healthz)."""
        return int(self.health().get("windows_total") or 0)
