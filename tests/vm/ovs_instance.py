"""A private ovsdb-server + ovs-vswitchd for one vm test, with its own cnit-named rundir.

Why private: even inside the throwaway guest the test must not depend on, or leave behind,
a system OVS; its own rundir also gives it known socket paths for ovs-vsctl/ovs-appctl.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from cnitrace.core.runner import DEFAULT_RUNNER, Runner

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class OvsInstance:
    def __init__(self, runner: Runner = DEFAULT_RUNNER):
        self.runner = runner
        self.dir = Path(tempfile.mkdtemp(prefix="cnit-ovs-"))
        self.db = f"unix:{self.dir}/db.sock"
        self.ctl = str(self.dir / "vswitchd.ctl")
        # ovs-vsctl and friends look for pid files etc. under OVS_RUNDIR.
        self.env = {**os.environ, "OVS_RUNDIR": str(self.dir), "OVS_DBDIR": str(self.dir),
                    "OVS_LOGDIR": str(self.dir)}

    def start(self) -> "OvsInstance":
        d = self.dir
        self.runner.run(["ovsdb-tool", "create", str(d / "conf.db"), SCHEMA])
        self.runner.run(["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{d}/db.sock",
                         f"--unixctl={d}/ovsdb.ctl", f"--pidfile={d}/ovsdb.pid", "--detach",
                         f"--log-file={d}/ovsdb.log", "-vconsole:off"], env=self.env, timeout=60)
        self.vsctl("--no-wait", "init")
        self.runner.run(["ovs-vswitchd", self.db, f"--unixctl={self.ctl}", f"--pidfile={d}/vswitchd.pid",
                         "--detach", f"--log-file={d}/vswitchd.log", "-vconsole:off"],
                        env=self.env, timeout=120)
        return self

    def vsctl(self, *args: str) -> str:
        return self.runner.run(["ovs-vsctl", f"--db={self.db}", "--timeout=60", *args],
                               env=self.env, timeout=90).stdout

    def appctl(self, *args: str) -> str:
        return self.runner.run(["ovs-appctl", "-t", self.ctl, "--timeout=30", *args],
                               env=self.env, timeout=60).stdout

    def stop(self) -> None:
        """Kill both daemons (vswitchd first, it owns the kernel datapath) and wait for them."""
        for name in ("vswitchd", "ovsdb"):
            try:
                pid = int((self.dir / f"{name}.pid").read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
