"""vm tier: per-hook and per-table netfilter time, measured with fentry and with kprobes.

Only the microVM's kernel has fentry and kprobes (the host has neither). On a throwaway
A -> node -> B path, N non-matching rules in the node's FORWARD chain make every forwarded
packet walk them; the probe must time exactly the sent packets (5-tuple filter in the
kernel), name the table (iptables legacy: 'filter'; iptables-nft: nft table 'filter',
base chain 'FORWARD'), and the time per table call must grow with N. The ladder takes
fentry for nf_hook_slow (in vmlinux) and falls back to kprobes for the table functions,
which live in modules; with kprobes forced every hook uses kprobes.
"""

from __future__ import annotations

import random

import pytest

from cnitrace.probes.runtime import Filter, ProbeSet
from cnitrace.core.session import Session
from tests.host.probes_path import build, send, set_forward_rules

pytestmark = pytest.mark.requires("kprobes", "fentry", "btf", "bcc")
COUNT = 200


@pytest.fixture
def path(namespaces):
    return build(namespaces.new)


def table_figure(ps: ProbeSet, kind: str):
    figs = [f for f in ps.snapshot() if f.map == "nf_table_agg" and f.key["kind"] == kind
            and f.key["hook"] == "FORWARD"]
    assert len(figs) == 1, [f.to_json() for f in ps.snapshot()]
    return figs[0]


@pytest.mark.parametrize("force,tool,kind", [
    (None, "iptables-legacy-restore", "iptables"),
    ("kprobe", "iptables-legacy-restore", "iptables"),
    (None, "iptables-nft-restore", "nftables"),
])
def test_per_table_time_grows_with_rules(path, force, tool, kind):
    port = random.randint(20000, 60000)
    set_forward_rules(path, 0, tool=tool)   # loads the table's module before the probes read its BTF
    with Session() as s:
        ps = ProbeSet(["netfilter"], netns=[path.node], filt=Filter(proto=17, dport=port),
                      force={"netfilter": force} if force else None, session=s)
        choice = ps.start()["netfilter"]
        table_hook = "nft_do_chain" if kind == "nftables" else "ipt_do_table"
        assert choice.hooks["nf_hook_slow"] == (force or "fentry")
        assert choice.hooks[table_hook] == "kprobe"
        means = {}
        for n in (0, 1000):
            set_forward_rules(path, n, tool=tool)
            ps.reset()
            send(path, port, COUNT)
            f = table_figure(ps, kind)
            assert f.hist.count == COUNT and f.key["verdict"] == "ACCEPT"
            assert f.key["table"] == "filter" and f.backend == "kprobe" and f.hook == table_hook
            if kind == "nftables":
                assert f.key["chain"] == "FORWARD"
            hooks = [h for h in ps.snapshot() if h.map == "nf_hook_agg" and h.key["hook"] == "FORWARD"]
            assert len(hooks) == 1 and hooks[0].hist.count == COUNT
            assert hooks[0].backend == (force or "fentry") and hooks[0].key["pf"] == "ipv4"
            # the hook's time includes the table's
            assert hooks[0].hist.mean >= f.hist.mean
            means[n] = f.hist.mean
    print(f"{kind} {force or 'ladder'}: filter/FORWARD mean N=0 {means[0]:.0f} ns, N=1000 {means[1000]:.0f} ns")
    assert means[1000] > 3 * means[0]
