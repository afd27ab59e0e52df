"""Rule shapes (calibrate.shapes), table-driven: parsing a rule's text into header + match modules,
which header cannot fit a packet, splitting a chain's evaluations into cost classes from the
per-rule counters, and pricing classes from the calibration's samples."""

from __future__ import annotations

import pytest

from cnitrace.calibrate.rules import nft_rules_body, shape_rules_body
from cnitrace.calibrate.shapes import (CALIBRATION_SHAPES, EARLY, Header, RuleCount, ShapeCosts, calibration_rules,
                                       costs_from_samples, fails_early, matched_headers, parse_shape, split_chain,
                                       split_rules)

CALICO_MARK = ('-p tcp -m comment --comment "cali:Vx-P8bB4Qnr4WXYB" -m set --match-set cali40s:abc src '
               '-m multiport --dports 10000:10001 -j MARK --set-xmark 0x10000/0x10000')
CALICO_RETURN = '-m comment --comment "cali:1pYbQ5l2W5BMUD7k" -m mark --mark 0x10000/0x10000 -j RETURN'
KUBE_ROUTER = ('-p tcp -m set --match-set KUBE-SRC-X src -m set --match-set KUBE-DST-X dst -m multiport '
               '--dports 10000:10001 -m comment --comment "rule to mark traffic -j DROP" -j MARK --set-xmark '
               '0x10000/0x10000')


@pytest.mark.parametrize("spec,header,groups,target", [
    (CALICO_MARK, Header(proto=("tcp", False)), ("comment", "set", "multiport"), "MARK"),
    (CALICO_RETURN, Header(), ("comment", "mark"), "RETURN"),
    (KUBE_ROUTER, Header(proto=("tcp", False)), ("set", "set", "multiport", "comment"), "MARK"),
    ("-i cali12345678901 -m comment --comment \"cali:x\" -g cali-fw-cali12345678901",
     Header(iif=("cali12345678901", False)), ("comment",), "cali-fw-cali12345678901"),
    ("-s 10.0.0.0/8 ! -d 10.1.0.0/16 -p udp -m udp --dport 53 -j ACCEPT",
     Header(proto=("udp", False), src=("10.0.0.0/8", False), dst=("10.1.0.0/16", True)), ("port",), "ACCEPT"),
    ("! -p tcp -j DROP", Header(proto=("tcp", True)), (), "DROP"),
    ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", Header(), ("conntrack",), "ACCEPT"),
    ("-m state --state NEW -m limit --limit 10/min -j LOG", Header(), ("conntrack", "limit"), "LOG"),
    ("", Header(), (), None),
])
def test_parse_shape(spec, header, groups, target):
    shape = parse_shape(spec)
    assert shape.header == header
    assert shape.groups == groups
    assert shape.target == target


def test_a_comment_containing_options_is_one_token():
    # `-j DROP` inside the comment is not the target, `-p` inside it is not a header
    shape = parse_shape('-m comment --comment "say -p udp -j DROP" -j ACCEPT')
    assert shape.header.empty and shape.target == "ACCEPT" and shape.modules == ("comment",)


UDP = Header(proto=("udp", False))
TCP = Header(proto=("tcp", False))


@pytest.mark.parametrize("rule,packet,early", [
    (TCP, UDP, True),                                               # the study's case: TCP ports, UDP packet
    (UDP, UDP, False),
    (Header(proto=("all", False)), UDP, False),
    (Header(proto=("tcp", True)), UDP, False),                      # ! -p tcp fits UDP
    (Header(proto=("udp", True)), UDP, True),
    (Header(src=("10.1.0.0/16", False)), Header(src=("10.2.0.5/32", False)), True),
    (Header(src=("10.0.0.0/8", False)), Header(src=("10.2.0.5/32", False)), False),
    (Header(iif=("caliaaaa", False)), Header(iif=("calibbbb", False)), True),      # dispatch: other pods
    (Header(iif=("cali+", False)), Header(iif=("calibbbb", False)), False),
    (Header(iif=("tap+", False)), Header(iif=("calibbbb", False)), True),
    (Header(oif=("cali+", False)), Header(iif=("calibbbb", False)), False),       # different fields: unknown
    (TCP, Header(), False),                                         # nothing known about the packet
    (TCP, Header(proto=("udp", True)), False),                      # a negated packet header proves nothing
])
def test_fails_early(rule, packet, early):
    assert fails_early(rule, packet) is early


def rc(spec: str, reach: float, matched: float) -> RuleCount:
    return RuleCount(parse_shape(spec), reach, matched)


def calico_policy(n: int, packets: float) -> list[RuleCount]:
    """n TCP filler MARK/RETURN pairs, then the UDP allow pair: UDP packets walk all of it."""
    rows = []
    for _ in range(n):
        rows += [rc(CALICO_MARK, packets, 0), rc(CALICO_RETURN, packets, 0)]
    udp_mark = CALICO_MARK.replace("-p tcp", "-p udp")
    return rows + [rc(udp_mark, packets, packets), rc(CALICO_RETURN, packets, packets)]


@pytest.mark.parametrize("n,packets", [(3, 100.0), (1000, 10.0), (0, 5.0)])
def test_calico_policy_chain_splits_into_header_misses_and_mark_tests(n, packets):
    classes = split_chain(calico_policy(n, packets))
    assert classes.get(EARLY, 0.0) == pytest.approx(n * packets)          # -p tcp never fits UDP
    assert classes["full:comment+mark"] == pytest.approx((n + 1) * packets)   # every mark test runs
    assert classes["full:comment+multiport+set"] == pytest.approx(packets)    # the allow rule matched
    assert sum(classes.values()) == pytest.approx((2 * n + 2) * packets)  # every evaluation has a class


def test_kube_router_policy_chain_is_all_header_misses_for_the_other_protocol():
    rows = [rc(KUBE_ROUTER, 50, 0) for _ in range(10)]
    rows += [rc(KUBE_ROUTER.replace("-p tcp", "-p udp"), 50, 50), rc(KUBE_ROUTER.replace("-p tcp", "-p udp")
                                                                       .replace("-j MARK", "-m mark --mark 0x1 -j RETURN"),
                                                                       50, 50)]
    classes = split_chain(rows)
    assert classes[EARLY] == pytest.approx(500)


def test_packets_not_explained_by_later_matches_take_the_mix_of_the_known_ones():
    # 100 packets reach a TCP rule; 40 later match a UDP rule, 60 fall through (unknown header):
    # the unknown take the known mix (all UDP here), so all 100 fail early.
    rows = [rc(CALICO_MARK, 100, 0), rc(CALICO_MARK.replace("-p tcp", "-p udp"), 100, 40)]
    assert split_rules(rows)[0] == {EARLY: pytest.approx(100)}


def test_without_evidence_a_headed_rule_is_priced_as_running_its_modules():
    rows = [rc(CALICO_MARK, 100, 0)]
    assert split_rules(rows)[0] == {"full:comment+multiport+set": 100}
    # ... unless the table's evidence says what the packets are
    assert split_rules(rows, fallback=[(UDP, 10.0)])[0] == {EARLY: 100}


def test_matched_headers_deduplicates_by_header():
    rows = [rc("-p udp -j MARK --set-mark 1", 10, 10), rc("-p udp -m mark --mark 1 -j RETURN", 10, 10),
            rc("-p tcp -j ACCEPT", 4, 4), rc("-j ACCEPT", 3, 3)]
    assert dict(matched_headers(rows)) == {UDP: 10, TCP: 4}


SAMPLES = {"early": 5.0, "mark": 25.0, "comment+mark": 45.0, "set+mark": 115.0, "port": 30.0,
           "multiport": 32.0, "conntrack": 31.0, "nft": 60.0}


def test_costs_from_samples_derives_each_module_beyond_the_header():
    c = costs_from_samples(SAMPLES, "legacy", nft_rule_ns=60.0)
    assert c.early_ns == 5.0
    assert c.module_ns == {"mark": 15.0, "comment": 20.0, "set": 90.0, "port": 20.0, "multiport": 22.0,
                           "conntrack": 21.0}
    # each measured module pair is reproduced exactly: one early rule + the shape's rule
    assert c.early_ns + c.class_ns("full:comment+mark") == pytest.approx(SAMPLES["comment+mark"])
    assert c.early_ns + c.class_ns("full:mark+set") == pytest.approx(SAMPLES["set+mark"])
    assert c.class_ns(EARLY) == 5.0 and c.class_ns("nft") == 60.0
    # a module never calibrated costs the median calibrated module (comment aside)
    assert c.class_ns("full:limit") == pytest.approx(5.0 + c.generic_module_ns)
    assert c.generic_module_ns == 21.0
    assert c.cost({EARLY: 1000, "full:comment+mark": 1000}) == pytest.approx(1000 * 5 + 1000 * 40)


def test_costs_never_go_negative_on_noisy_samples():
    c = costs_from_samples({**SAMPLES, "mark": 8.0}, "nft")      # mark pair below two early rules
    assert c.module_ns["mark"] == 0.0 and all(v >= 0 for v in c.module_ns.values())


def test_shape_costs_json_round_trip():
    c = costs_from_samples(SAMPLES, "nft", kernel="6.18", cpu="EPYC", seconds=7.5)
    again = ShapeCosts.from_json(c.to_json())
    assert again == c


@pytest.mark.parametrize("shape", CALIBRATION_SHAPES)
def test_calibration_bodies(shape):
    rules = calibration_rules(shape, 7)
    assert len(rules) == (1 if shape == "early" else 2)
    early = parse_shape(rules[0])
    assert early.header == TCP                   # the bench's UDP never passes it
    body = shape_rules_body(shape, 3)
    assert body.count("-A cnit-cal ") == 3 * len(rules) and body.rstrip().endswith("COMMIT")
    if shape != "early":
        assert not fails_early(parse_shape(rules[1]).header, UDP)    # the shape's own rule runs its modules


def test_nft_calibration_body_is_bounded_and_replaces_its_table():
    body = nft_rules_body(5)
    assert body.count("udp dport") == 5 and "delete table inet cnitcal" in body
