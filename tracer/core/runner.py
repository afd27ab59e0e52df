"""The one seam through which cnitrace runs system tools.

Every subprocess goes through a Runner with an argv list (never a shell string), so that
collectors and the lab can be tested by replacing the runner with recorded output.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from typing import Callable, Mapping, Sequence

from cnitrace.core.errors import ToolError


@dataclasses.dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


class Runner:
    """Runs argv lists; raises ToolError with a one-line message when asked to check."""

    def which(self, tool: str) -> str | None:
        return shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        netns: str | None = None,
        timeout: float = 60.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        full = [*_netns_prefix(netns), *argv]
        if not all(isinstance(a, str) for a in full):
            raise TypeError(f"argv must be strings: {full!r}")
        try:
            proc = subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=dict(env) if env is not None else None,
                errors="replace",
            )
        except FileNotFoundError:
            raise ToolError(f"{full[0]}: not installed (run the README's setup command)") from None
        except subprocess.TimeoutExpired:
            raise ToolError(f"{' '.join(full[:4])}: timed out after {timeout:g} s") from None
        done = Completed(tuple(full), proc.returncode, proc.stdout, proc.stderr)
        if check and not done.ok:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()
            why = last[-1] if last else f"exit status {done.returncode}"
            raise ToolError(f"{' '.join(full[:6])}: {why}")
        return done

    def spawn(self, argv: Sequence[str], *, netns: str | None = None, log: str | None = None) -> subprocess.Popen:
        """Start a background process (a server, a traffic generator); the caller bounds its life."""
        full = [*_netns_prefix(netns), *argv]
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            return subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise ToolError(f"{full[0]}: not installed (run the README's setup command)") from None
        finally:
            if log:
                out.close()


class RecordedRunner(Runner):
    """Replays recorded output keyed by argv; for unit tests of acquisition code."""

    def __init__(self, responses: Mapping[tuple[str, ...], Completed | str | Callable[[], Completed]],
                 tools: Sequence[str] | None = None):
        self.responses = dict(responses)
        self.calls: list[tuple[str, ...]] = []
        self.tools = set(tools) if tools is not None else None

    def which(self, tool: str) -> str | None:
        if self.tools is None:
            return f"/usr/sbin/{tool}"
        return f"/usr/sbin/{tool}" if tool in self.tools else None

    def run(self, argv, *, input=None, netns=None, timeout=60.0, check=True, env=None) -> Completed:
        full = (*_netns_prefix(netns), *argv)
        self.calls.append(full)
        if full not in self.responses:
            raise ToolError(f"{full[0]}: no recorded output for {' '.join(full)}")
        resp = self.responses[full]
        if callable(resp):
            resp = resp()
        if isinstance(resp, str):
            resp = Completed(full, 0, resp, "")
        if check and not resp.ok:
            raise ToolError(f"{' '.join(full[:6])}: {resp.stderr.strip() or resp.returncode}")
        return resp


DEFAULT_RUNNER = Runner()
