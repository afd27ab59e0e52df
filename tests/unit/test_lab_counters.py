"""Reading a ground-truth counter out of real captured dumps (provenance in each fixture's header)."""

from __future__ import annotations

from pathlib import Path

from cnitrace.lab.datapath import iptables_rule_packets, nft_rule_packets
from cnitrace.lab.datapaths.nft import parse_handles

FIX = Path(__file__).parents[1] / "fixtures" / "lab"


def body(name: str) -> str:
    text = (FIX / name).read_text()
    head, _, rest = text.partition("\n")
    assert head.startswith("# provenance:")
    return rest


def test_iptables_counter_by_chain_and_position():
    save = body("calico-lab-iptables-legacy-save-c.txt")
    chain = next(l.split()[2] for l in save.splitlines() if " -A cali-pi-_" in l)
    # 3 fillers (MARK+RETURN each) then the tcp allow rule: the one curl SYN counted at rule 7
    assert [iptables_rule_packets(save, chain, i) for i in (1, 2, 7, 8, 9)] == [0, 0, 1, 1, 0]
    tw = [l.split()[2] for l in save.splitlines() if " -A cali-tw-" in l and "Drop if no policies" in l]
    assert len(tw) == 1 and iptables_rule_packets(save, tw[0], 7) == 1      # the denied SYN
    assert iptables_rule_packets(save, chain, 99) is None
    assert iptables_rule_packets(save, "no-such-chain", 1) is None


def test_nft_counter_by_handle_and_index():
    text = body("nft-lab-list-table.json.txt")
    handles = parse_handles(text)
    allow = handles["allow-tcp"]["allow tcp dport 8080 from selected peers"]
    deny = handles["ingress-p0"]["default deny ingress to pod p0"]
    assert nft_rule_packets(text, "allow-tcp", handle=allow) == 1
    assert nft_rule_packets(text, "allow-udp", index=1) == 0
    assert nft_rule_packets(text, "ingress-p0", handle=deny) == 1
    assert nft_rule_packets(text, "ingress-p0", index=2) is None          # the vmap rule has no counter
    assert nft_rule_packets(text, "nope", index=1) is None
