"""calibrate.walk's pure side: the forced-miss rewrite, the padding, the replay body, the choice of
chains, and how a timed walk prices a chain (only its header misses)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from cnitrace.attribution.netfilter import walk_fields
from cnitrace.attribution.tree import Calib, ChainWork
from cnitrace.calibrate import walk
from cnitrace.calibrate.shapes import EARLY, ShapeCosts
from cnitrace.collectors.iptables.parse import Ruleset, parse

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "iptables-layout"
KR = ('-p tcp -m set --match-set KUBE-SRC-5HQJ src -m set --match-set KUBE-DST-3GK2 dst -m multiport --dports '
      '10000:10003 -m comment --comment "rule to mark traffic -s 10.0.0.0/8 -i eth0" -j MARK --set-xmark 0x10000/0x10000')


def test_forced_miss_drops_addresses_and_interfaces_and_keeps_everything_else():
    spec = f"! -s 10.1.0.0/16 -d 10.2.0.0/16 -i cali+ ! -o eth0 {KR}"
    out = walk.forced_miss(spec)
    assert out.startswith(f"-o {walk.MISS_IFACE} ")
    assert "10.1.0.0/16" not in out and "10.2.0.0/16" not in out and "cali+" not in out and " eth0 " not in out
    assert out.split(" ", 2)[2] == KR      # the quoted comment (with "-s" and "-i" in it) is untouched


@given(st.integers(0, 4095).map(lambda n: n * 8 % 4096))
def test_padding_lands_on_every_page_offset(nbytes):
    sizes = dict((r, s) for s, r in walk.PAD_RULES)
    pad = walk.pad_rules(nbytes)
    assert sum(sizes[r] for r in pad) % walk.PAGE == nbytes


def test_padding_refuses_unaligned_sizes():
    with pytest.raises(ValueError):
        walk.pad_rules(12)


def test_replay_body_declares_jump_targets_and_hooks_the_walk_chain():
    rules = [walk.forced_miss("-p tcp -j KUBE-X"), walk.forced_miss("-p udp -g KUBE-Y")]
    sets, jumps = walk.referenced(["-p tcp -j KUBE-X", "-m set --match-set S1 src -g KUBE-Y", "-j ACCEPT"],
                                  ["KUBE-X", "KUBE-Y", "KUBE-Z"])
    assert sets == ["S1"] and jumps == ["KUBE-X", "KUBE-Y"]
    body = walk.walk_body("nat", rules, walk.pad_rules(152), jumps)
    lines = body.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert f"-A PREROUTING -j {walk.WALK_CHAIN}" in lines
    assert ":KUBE-X - [0:0]" in lines and ":KUBE-Y - [0:0]" in lines
    walked = [ln for ln in lines if ln.startswith(f"-A {walk.WALK_CHAIN} ")]
    assert walked[-2:] == [f"-A {walk.WALK_CHAIN} {r}" for r in rules]


def test_set_creates_keeps_only_the_named_sets_and_no_members():
    save = ("create A hash:net family inet hashsize 1024 maxelem 65536\nadd A 10.0.0.0/8\n"
            "create B hash:ip family inet\nadd B 10.0.0.1\n")
    assert walk.set_creates(save, ["B"]) == "create B hash:ip family inet\n"


def test_candidates_are_the_long_legacy_ipv4_chains_in_rule_order():
    text = (FIX / "kube-router-lab-filter.save").read_text()
    rs = Ruleset(*_split(parse(text, "ipv4", "legacy").records))
    assert walk.candidates(rs) == {}                       # the fixture's chains are short
    long_rules = "\n".join(f"-A BIG -p tcp --dport {i} -j ACCEPT" for i in range(walk.WALK_MIN_RULES, 0, -1))
    big = parse(f"*filter\n:FORWARD ACCEPT [0:0]\n:BIG - [0:0]\n{long_rules}\nCOMMIT\n", "ipv4", "legacy").records
    got = walk.candidates(Ruleset(*_split(big)))
    assert list(got) == [("ipv4", "filter", "BIG")]
    assert got[("ipv4", "filter", "BIG")][0].endswith(f"--dport {walk.WALK_MIN_RULES} -j ACCEPT")
    assert walk.candidates(Ruleset(*_split(big)), backend="nft") == {}


def _split(records):
    return (tuple(r for r in records if not hasattr(r, "spec")), tuple(r for r in records if hasattr(r, "spec")))


SHAPES = ShapeCosts(5.0, {"mark": 20.0, "comment": 10.0, "port": 18.0})


def test_a_timed_walk_prices_the_header_misses_only():
    classes = {EARLY: 1000.0, "full:comment+mark": 1000.0}
    plain = SHAPES.cost(classes)
    walked = SHAPES.cost(classes, early_ns=12.0)
    assert walked - plain == pytest.approx(1000 * (12.0 - 5.0))
    cal = Calib.from_shapes(SHAPES)
    c = ChainWork("filter (iptables-legacy, ipv4)", "BIG", 1, 2000, classes=tuple(classes.items()))
    assert cal.work_ns(c) == pytest.approx(plain)
    assert cal.work_ns(dataclasses.replace(c, walk_ns=12.0)) == pytest.approx(walked)


def test_walk_fields_say_measured_or_why_not():
    ok = walk.Walk(10.4, 10004, 1952)
    ns, note = walk_fields(ok)
    assert ns == 10.4 and "1952" in note and "measured" in note
    ns, note = walk_fields(walk.Walk(None, 10004, 0, reason="the bench lays the rules out differently"))
    assert ns is None and "differently" in note
    assert walk_fields(None) == (None, None)


def test_walk_round_trips_through_the_cache_format():
    w = walk.Walk(10.4, 10004, 1952, samples=(10.1, 10.4, 11.0), seconds=3.2)
    assert walk.Walk.from_json(w.to_json()) == w


def test_the_calibration_line_names_each_replayed_walk():
    from cnitrace.reports.document import calibration_text
    cal = {"ns_per_rule_eval": 23.0, "provenance": "cached",
           "shapes": {"early_ns": 4.9, "module_ns": {"mark": 20.0}, "backend": "legacy"},
           "walks": [{"chain": "KUBE-NWPLCY-X", "ns_per_rule": 10.4, "page_offset": 1952, "provenance": "measured",
                      "rules": 10004, "reason": None},
                     {"chain": "cali-pi-Y", "ns_per_rule": None, "page_offset": 0, "provenance": "measured",
                      "rules": 2004, "reason": "page offset 8 against the node's 16"}]}
    text = calibration_text(cal)
    assert "KUBE-NWPLCY-X: header miss 10.4" in text and "page offset 1952" in text
    assert "cali-pi-Y: walk not replayed (page offset 8 against the node's 16)" in text
