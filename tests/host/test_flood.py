"""Host tier: a 64-byte UDP flood at the machine's limit with every probe attached (issue #16).

`cnitrace profile --lab` (transit, drops, netfilter brackets) and `cnitrace probe --events`
(per-packet events streamed) both watch a calico lab while its client pod floods the server pod
for 10 s (tests/support/floodrun.py; 30 s in tests/bench/bench_flood.py). Under the flood:
memory stays flat (no per-event accumulation, no unbounded queue), events the reader cannot
keep up with are counted as lost (every timed packet is either a received or a lost event:
nothing silently vanishes, nothing blocks), both tools end on time, and a cheap command on the
node still answers within a bound relative to its idle latency. Thresholds are relations to
the run's own baseline, never a constant tuned on one machine.
"""

from __future__ import annotations

import pytest

from cnitrace.lab import manager
from cnitrace.reports.document import validate
from tests.support import floodrun

pytestmark = pytest.mark.requires("tp_btf", "btf", "bcc", "iptables", "nf_bpf")

SECONDS = 10.0
RSS_GROWTH = 1.15          # peak RSS in the window / RSS at its start
TEARDOWN_S = 15.0          # window end -> exit (after-snapshot, attribution, report, detach)
POLL_SLACK_S = 1.0         # the event reader's window may overrun by a poll or two, no more
RESPONSIVENESS = 10.0      # a cheap command's median latency under the flood / idle


def test_flood_every_probe_attached(lab_factory, node_before_after):
    lab = lab_factory("calico", 10)
    r = floodrun.run(lab, SECONDS)
    why = "\n".join(floodrun.summary(r) + [f"rcs {r.rcs}", f"stderr {r.stderr}"])
    print(why)
    assert r.rcs == {"profile": 0, "probe": 0, "flood": 0}, why
    assert r.flood["sent"] > 10_000 and r.flood["seconds"] >= SECONDS * 0.9, why

    # Every timed packet emitted one event: received, or lost and counted (never queued without bound).
    ev = r.probe["events"]
    timed = r.events_timed
    assert timed > 0.5 * r.flood["sent"], why           # the probes saw the flood
    assert ev["received"] + ev["lost"] <= timed, why
    assert ev["received"] + ev["lost"] >= 0.95 * timed, why   # what is left: at most a ring's worth pending
    assert len(ev["sample"]) <= 20, why

    # Memory: flat over the window in both tools.
    for tool in ("profile", "probe"):
        m = r.rss[tool]
        assert m["samples"] >= SECONDS, (tool, why)
        assert m["growth_ratio"] <= RSS_GROWTH, (tool, why)

    # Time: each window as long as asked, then a bounded teardown.
    t = r.timing
    assert t["profile"]["window_s"] <= t["profile"]["duration_s"] + 2.0, why
    assert t["profile"]["teardown_s"] <= TEARDOWN_S, why
    assert t["probe"]["window_s"] <= t["probe"]["duration_s"] + POLL_SLACK_S, why
    assert t["probe"]["teardown_s"] <= TEARDOWN_S, why

    # The node answers: loopback echoes all return within 1 s, a cheap command stays quick.
    assert r.loaded["ping"]["received"] == 3, why
    assert r.responsiveness_ratio <= RESPONSIVENESS, why

    # The profile is a valid document that saw the flood through the node.
    assert validate(r.profile) == [], why
    assert r.profile["backends"]["netfilter"]["backend"] == "nf_bpf", why
    manager.down(lab.spec.name)
    node_before_after()
