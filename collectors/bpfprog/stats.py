"""Turn on BPF run-time statistics only while collecting.

The kernel counts run_cnt/run_time_ns only while stats are enabled, and enabling them costs
every BPF program on the node ~20 ns per run. BPF_ENABLE_STATS (bpf() command 32) returns a
file descriptor: stats stay on while it is open and the kernel turns them off when it closes,
even if this process is killed -9 — so that is the default. The sysctl
kernel.bpf_stats_enabled is the fallback for kernels before 5.8; its original value is
recorded in the state file before it is changed and restored on exit, signal or
`cnitrace cleanup` — by the last cnitrace run that needs it, when several run at once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from cnitrace.core.errors import CnitraceError
from cnitrace.core.files import exclusive
from cnitrace.core.state import holders
from cnitrace.probes import bpfsys

SYSCTL = "kernel.bpf_stats_enabled"
_SYSCTL_PATH = Path("/proc/sys/kernel/bpf_stats_enabled")
_BPF_STATS_RUN_TIME = 0


class StatsUnavailable(CnitraceError):
    """Neither BPF_ENABLE_STATS nor the sysctl could turn stats on."""


def enable_stats_fd() -> int:
    """bpf(BPF_ENABLE_STATS, {type = BPF_STATS_RUN_TIME}): an fd that keeps stats on while open."""
    try:
        return bpfsys.enable_stats_fd(_BPF_STATS_RUN_TIME)
    except OSError as exc:
        raise StatsUnavailable(f"BPF_ENABLE_STATS failed: {exc.strerror or exc}") from None


def read_sysctl() -> str:
    return _SYSCTL_PATH.read_text().strip()


@contextlib.contextmanager
def stats_enabled(session=None, mode: str = "auto") -> Iterator[str]:
    """Keep BPF stats on inside the block; yields the mechanism used ('fd', 'sysctl', 'already').

    mode: 'auto' (fd, else sysctl), 'fd', or 'sysctl'. The sysctl path needs a Session so the
    original value is in the state file before the write and is restored on any exit.
    """
    if mode in ("auto", "fd"):
        try:
            fd = enable_stats_fd()
        except StatsUnavailable:
            if mode == "fd":
                raise
        else:
            try:
                yield "fd"
            finally:
                os.close(fd)
            return
    if session is None:
        raise StatsUnavailable("enabling BPF stats through the sysctl needs a session to restore it")
    with exclusive(session.state.dir / "bpf_stats"):
        # Reference-counted through the state file: a second run finds the first one's record
        # (live, or left by a killed run), inherits the value found before any cnitrace run,
        # and the last one out restores it.
        found = [r for r in session.state.live() if r.kind == "sysctl" and r.name == SYSCTL]
        original = str(found[0].data["original"]) if found else read_sysctl()
        if original == "1":
            yield_mode = "already"  # someone else turned them on; leave it exactly as found
            rec = None
        else:
            rec = session.track("sysctl", SYSCTL, original=original)
            _SYSCTL_PATH.write_text("1\n")
            yield_mode = "sysctl"
    try:
        yield yield_mode
    finally:
        if rec is not None:
            with exclusive(session.state.dir / "bpf_stats"):
                if not holders(session.state, "sysctl", SYSCTL, besides=rec.id):
                    _SYSCTL_PATH.write_text(original + "\n")
                session.state.forget(rec)
