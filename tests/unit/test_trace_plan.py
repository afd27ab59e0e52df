"""`--probe` / `--match` parsing and the nft expression that selects the traced packets."""

import pytest

from cnitrace.core.errors import UsageError
from cnitrace.trace.plan import MARK_ID_BASE, parse_match, parse_probe


def test_probe():
    s = parse_probe("TCP:10.65.0.2:8080", 3)
    assert (s.mode, s.proto, s.dst, s.port, s.count) == ("probe", "tcp", "10.65.0.2", 8080, 3)
    assert s.marker_ids() == (MARK_ID_BASE, MARK_ID_BASE + 1, MARK_ID_BASE + 2)
    assert s.nft_expr() == f"ip daddr 10.65.0.2 meta l4proto tcp tcp dport 8080 ip id {MARK_ID_BASE}-{MARK_ID_BASE + 2}"


def test_probe_one_packet_exact_id():
    assert parse_probe("udp:10.0.0.1:53").nft_expr().endswith(f"udp dport 53 ip id {MARK_ID_BASE}")


@pytest.mark.parametrize("bad", ["tcp:10.0.0.1", "icmp:10.0.0.1:1", "tcp:10.0.0:80", "tcp:10.0.0.1:0",
                                 "tcp:10.0.0.1:70000", "tcp:host:80", "tcp:10.0.0.1:80:1"])
def test_probe_bad(bad):
    with pytest.raises(UsageError):
        parse_probe(bad)


def test_match_any_order():
    s = parse_match("udp port 53 dst 10.96.0.10 src 10.65.0.3", 5)
    assert (s.mode, s.proto, s.src, s.dst, s.port, s.count) == ("match", "udp", "10.65.0.3", "10.96.0.10", 53, 5)
    assert s.marker_ids() == ()
    assert s.nft_expr() == "ip saddr 10.65.0.3 ip daddr 10.96.0.10 meta l4proto udp udp dport 53"


def test_match_proto_only():
    assert parse_match("tcp").nft_expr() == "meta l4proto tcp"


@pytest.mark.parametrize("bad", ["", "sctp", "tcp port", "tcp port 80 port 81", "tcp via 1.2.3.4",
                                 "tcp dst nothost", "tcp port 0"])
def test_match_bad(bad):
    with pytest.raises(UsageError):
        parse_match(bad)


def test_count_bounds():
    with pytest.raises(UsageError):
        parse_probe("tcp:10.0.0.1:80", 0)
    with pytest.raises(UsageError):
        parse_match("tcp", 101)
