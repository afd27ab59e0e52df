"""`cnitrace probe`: attach the chosen stages' probes for a bounded time and return figures.

Why a separate entry point from the full profile: it is the smallest scriptable way to get
measured per-stage figures (and to prove the probes detach on Ctrl-C): the CLI parses options
into a ProbeConfig, calls run(), and renders the returned dict. No click here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from cnitrace.core import selection
from cnitrace.core.errors import UsageError
from cnitrace.core.session import Session
from cnitrace.probes.runtime import Filter, ProbeSet
from cnitrace.probes.specs import BACKENDS, SPECS

MAX_DURATION = 3600.0
SAMPLE = 20     # events kept for the output; a flood's millions are counted, never held


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    stages: tuple[str, ...]
    ifaces: tuple[tuple[str | None, str], ...] = ()
    netns: tuple[str | None, ...] = ()
    filt: Filter = Filter()
    duration: float = 5.0
    events: bool = False
    force: tuple[tuple[str, str], ...] = ()
    ready_file: str | None = None


def parse_iface(text: str) -> tuple[str | None, str]:
    """'NETNS/GLOB' or 'GLOB' (host namespace), validated by cnitrace.core.selection.

    ProbeSet spells the host namespace None, so selection.HOST is converted here, at its edge.
    """
    ns, name = selection.parse_iface(text)
    return (None if ns == selection.HOST else ns), name


def parse_force(text: str, option: str = "--force") -> tuple[str, str]:
    """'netfilter=kprobe' -> ('netfilter', 'kprobe'); `option` names the flag in the error."""
    stage, sep, backend = text.partition("=")
    if not sep or stage not in SPECS or backend not in BACKENDS:
        raise UsageError(f"bad {option} {text!r}: use STAGE=BACKEND with a stage of {', '.join(SPECS)} "
                         f"and a backend of {', '.join(BACKENDS)}")
    return stage, backend


def validate(cfg: ProbeConfig) -> None:
    if not cfg.stages:
        raise UsageError("no stage chosen")
    if not 0 < cfg.duration <= MAX_DURATION:
        raise UsageError(f"--duration must be in (0, {MAX_DURATION:g}] seconds")
    for ns, name in cfg.ifaces:
        selection.validate_ifname(name)
        if ns is not None:
            selection.validate_netns(ns, "--iface")
    for ns in cfg.netns:
        if ns is not None:
            selection.validate_netns(ns)


def run(cfg: ProbeConfig, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Attach, wait `duration` (Ctrl-C ends the run early and still detaches), read the figures."""
    validate(cfg)
    sample: list[dict[str, Any]] = []     # the first SAMPLE events; the rest are only counted (by the ProbeSet)

    def keep(stage: str, ev: dict[str, Any]) -> None:
        if len(sample) < SAMPLE:
            sample.append({"stage": stage, **ev})
        if len(sample) >= SAMPLE:
            ps.off_event(keep)          # from here on the ProbeSet only counts: no decoding per event

    with Session() as session:
        ps = ProbeSet(cfg.stages, ifaces=cfg.ifaces, netns=cfg.netns, filt=cfg.filt, events=cfg.events,
                      force=dict(cfg.force), session=session)
        ps.start()
        if cfg.events:
            ps.on_event(keep)
        if cfg.ready_file:   # for scripts (and tests): who we are and what we attached
            Path(cfg.ready_file).write_text(json.dumps({"pid": os.getpid(), **{f"{k}_ids": v for k, v in ps.kernel_ids().items()}}) + "\n")
        deadline = time.monotonic() + cfg.duration
        while (left := deadline - time.monotonic()) > 0:
            if cfg.events:
                ps.poll_events(int(min(left, 0.2) * 1000))
            else:
                sleep(min(left, 0.2))
        window = time.monotonic() - (deadline - cfg.duration)
        figures = ps.snapshot()
        lost = ps.lost()
        out = {
            "attach_seconds": ps.attach_seconds,
            "window_seconds": round(window, 3),
            "choices": [c.to_json() for c in ps.choices.values()],
            "figures": [f.to_json() for f in figures],
            "events": {"enabled": cfg.events, "received": sum(ps.events_received.values()), "lost": lost,
                       "received_by_stage": dict(ps.events_received)},
        }
        if cfg.events:
            out["events"]["sample"] = sample
    return out
