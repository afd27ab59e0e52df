"""Per-packet events under a flood, without a kernel: the reader must return on time and hold nothing.

libbpf's ring_buffer__poll keeps consuming while the producer keeps the ring non-empty, so under a
flood faster than the Python handler one poll never returns; the ProbeSet's callback stops it
(a negative return) once the poll's time is up, and what the ring cannot hold meanwhile is dropped
in the kernel and counted. FakeRing below behaves like that libbpf loop with a producer that never
stops. `cnitrace probe --events` keeps a sample of SAMPLE events and counts the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time

import pytest

from cnitrace.probes import command, runtime
from cnitrace.probes.runtime import ProbeSet
from cnitrace.probes.specs import SPECS


class FakeRing:
    """A bcc BPF object and its cnit_events table in one: ring_buffer_consume calls the callback with
    one record after another, as libbpf does while the ring is non-empty: here, forever (endless),
    or never (idle: its map fd is a pipe nobody writes to, so a wait on it lasts its timeout)."""

    def __init__(self, record: bytes, endless: bool = True):
        self.buf = ctypes.create_string_buffer(record, len(record))
        self.cb = None
        self.endless = endless
        self.delivered = 0
        self.map_fd, self._w = os.pipe()

    def __getitem__(self, name: bytes) -> "FakeRing":
        return self

    def open_ring_buffer(self, cb) -> None:
        self.cb = cb

    def ring_buffer_consume(self) -> None:
        while self.endless and self.delivered < 2_000_000:   # ~100x what 100 ms holds: a hang fails in seconds
            self.delivered += 1
            if self.cb(None, ctypes.addressof(self.buf), len(self.buf)) < 0:
                return
        if self.endless:
            raise AssertionError("the callback never stopped the consumer")

    def close(self) -> None:
        os.close(self.map_fd)
        os.close(self._w)


def _record(stage: str) -> bytes:
    return bytes(struct.calcsize(SPECS[stage].event.fmt))


def _probes(endless: dict[str, bool]) -> ProbeSet:
    ps = ProbeSet(list(endless), events=True)
    for stage, flowing in endless.items():
        ps.bpf[stage] = FakeRing(_record(stage), flowing)
        ps._open_events(stage, ringbuf=True)
    return ps


@pytest.fixture
def make(monkeypatch):
    monkeypatch.setattr(runtime, "ringbuf_supported", lambda release: True)
    made = []

    def make_(**endless: bool) -> ProbeSet:
        made.append(_probes(endless))
        return made[-1]

    yield make_
    for ps in made:
        rings = list(ps.bpf.values())
        ps.bpf.clear()           # FakeRing is no bcc object: close() must not call cleanup() on it
        ps.close()
        for r in rings:
            r.close()


@pytest.fixture
def probes(make):
    return make(transit=True, drops=True)


def test_without_handlers_events_are_only_counted(probes):
    probes.poll_events(20)
    assert sum(probes.events_received.values()) > 0


class TimedRing(FakeRing):
    """A ring of `capacity` records filled at `rate` per second: what is not read before it is full
    is lost, as in the kernel. Its fd is always readable (a byte sits in the pipe)."""

    def __init__(self, record: bytes, rate: float, capacity: int):
        super().__init__(record, endless=False)
        os.write(self._w, b"x")
        self.rate, self.capacity, self.lost = rate, capacity, 0
        self.pending, self.last = 0, time.monotonic()

    def ring_buffer_consume(self) -> None:
        now = time.monotonic()
        self.pending += self.rate * (now - self.last)        # fractions carried: no rate lost to rounding
        self.last = now
        if self.pending > self.capacity:
            self.lost += int(self.pending - self.capacity)
            self.pending = float(self.capacity)
        while self.pending >= 1:
            self.pending -= 1
            self.delivered += 1
            if self.cb(None, ctypes.addressof(self.buf), len(self.buf)) < 0:
                return


def test_an_idle_stage_never_keeps_a_busy_one_waiting(make):
    """drops sees nothing, transit a steady flood: transit is read throughout the poll, not once per
    wait on the idle drops ring (which would overflow it: 0.2 s of room, a 1 s poll)."""
    ps = make(drops=False)
    ps.bpf["transit"] = ring = TimedRing(_record("transit"), rate=100_000, capacity=20_000)
    ps._open_events("transit", ringbuf=True)
    ps.poll_events(1000)
    assert ring.delivered > 50_000
    assert ring.lost < 0.1 * (ring.delivered + ring.lost), (ring.delivered, ring.lost)


def test_an_idle_poll_waits_its_timeout_then_returns(make):
    ps = make(transit=False, drops=False)
    t0 = time.monotonic()
    ps.poll_events(150)
    assert 0.1 <= time.monotonic() - t0 < 1.0
    assert ps.events_received == {"transit": 0, "drops": 0}


def test_a_poll_returns_on_time_under_an_endless_producer(probes):
    seen = []
    probes.on_event(lambda stage, ev: seen.append(stage))
    t0 = time.monotonic()
    probes.poll_events(100)
    took = time.monotonic() - t0
    assert took < 1.0                                   # 100 ms asked; a clock look every 256 events
    assert probes.events_received["transit"] > 0 and probes.events_received["drops"] > 0
    assert sum(probes.events_received.values()) == len(seen) == sum(r.delivered for r in probes.bpf.values())


def test_probe_command_keeps_a_sample_and_counts_the_rest(monkeypatch):
    class Flooded:
        """Stands in for the ProbeSet: every poll hands the handlers 10,000 events."""

        attach_seconds, choices = 0.1, {}

        def __init__(self, stages, **kw):
            self.handlers, self.events_received = [], {"transit": 0}

        def start(self):
            return {}

        def on_event(self, h):
            self.handlers.append(h)

        def off_event(self, h):
            self.handlers.remove(h)

        def poll_events(self, timeout_ms):
            for i in range(10_000):
                self.events_received["transit"] += 1
                for h in tuple(self.handlers):
                    h("transit", {"ns": i})

        def snapshot(self):
            return []

        def lost(self):
            return 7

        def kernel_ids(self):
            return {"prog": [], "map": []}

    monkeypatch.setattr(command, "ProbeSet", Flooded)
    monkeypatch.setattr(command, "Session", contextlib.nullcontext)
    out = command.run(command.ProbeConfig(stages=("transit",), duration=0.3, events=True))
    ev = out["events"]
    assert ev["received"] >= 10_000 and ev["received"] % 10_000 == 0
    assert ev["lost"] == 7 and ev["received_by_stage"] == {"transit": ev["received"]}
    assert len(ev["sample"]) == command.SAMPLE
    assert [e["ns"] for e in ev["sample"]] == list(range(command.SAMPLE))   # the first ones, in order
    assert out["window_seconds"] < 2.0
