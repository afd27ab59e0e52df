"""Interface selection: glob matching, veth peers and namespaces, validation, errors that list candidates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from cnitrace.core.errors import UsageError
from cnitrace.core.selection import Interface, Selection, match_globs, resolve_from, validate_glob, validate_netns

HOST = [
    Interface("lo", "", 1),
    Interface("eth0", "", 2),
    Interface("cali1a2b3c", "", 7, "veth", "eth0", "pod-a"),
    Interface("cali9f8e7d", "", 9, "veth", "eth0", "pod-b"),
    Interface("lxc12ab", "", 11, "veth", "eth0", "pod-c"),
    Interface("vxlan.calico", "", 5, "vxlan"),
]
PODS = {
    "pod-a": [Interface("lo", "pod-a", 1), Interface("eth0", "pod-a", 3, "veth")],
    "pod-b": [Interface("lo", "pod-b", 1), Interface("eth0", "pod-b", 3, "veth")],
    "pod-c": [Interface("lo", "pod-c", 1), Interface("eth0", "pod-c", 3, "veth")],
}
KNOWN = ["pod-a", "pod-b", "pod-c"]


def names(sel: Selection) -> set[tuple[str, str]]:
    return {(i.netns, i.name) for i in sel.interfaces}


def test_glob_selects_host_veths_their_peers_and_namespaces():
    sel = resolve_from(["cali*"], [], HOST, PODS, KNOWN)
    assert names(sel) == {("", "cali1a2b3c"), ("", "cali9f8e7d"), ("pod-a", "eth0"), ("pod-b", "eth0")}
    assert sel.netns == ("", "pod-a", "pod-b")
    assert [i.name for i in sel.in_netns("")] == ["cali1a2b3c", "cali9f8e7d"]


def test_netns_selects_its_interfaces_and_the_host_peer():
    sel = resolve_from([], ["pod-c"], HOST, PODS, KNOWN)
    assert names(sel) == {("pod-c", "eth0"), ("", "lxc12ab")}
    assert sel.netns == ("", "pod-c")


def test_glob_without_match_lists_candidates():
    with pytest.raises(UsageError) as e:
        resolve_from(["weave*"], [], HOST, PODS, KNOWN)
    msg = e.value.message
    assert msg.startswith("--iface 'weave*' matches no interface; interfaces here: cali1a2b3c, cali9f8e7d")
    assert "\n" not in msg


def test_unknown_netns_lists_namespaces():
    with pytest.raises(UsageError, match=r"--netns 'pod-z' does not exist; namespaces: pod-a, pod-b, pod-c"):
        resolve_from([], ["pod-z"], HOST, PODS, KNOWN)


def test_netns_prefixed_glob_selects_inside_that_namespace():
    sel = resolve_from(["pod-a/eth*"], [], HOST, PODS, KNOWN)
    assert names(sel) == {("pod-a", "eth0"), ("", "cali1a2b3c")}
    with pytest.raises(UsageError, match="namespace 'pod-q' does not exist"):
        resolve_from(["pod-q/eth*"], [], HOST, PODS, KNOWN)
    with pytest.raises(UsageError, match="'pod-b/wg\\*' matches no interface; interfaces here: eth0, lo"):
        resolve_from(["pod-b/wg*"], [], HOST, PODS, KNOWN)


@pytest.mark.parametrize("bad", ["", "a b", "x;rm", "$(id)", "a/", "../x", "a/b/c d", "x" * 65, "ü*"])
def test_invalid_globs(bad):
    with pytest.raises(UsageError, match="invalid --iface"):
        validate_glob(bad)


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a b", "-x;y"])
def test_invalid_netns(bad):
    with pytest.raises(UsageError, match="invalid --netns"):
        validate_netns(bad)


def test_long_candidate_lists_are_truncated():
    many = [Interface(f"veth{i:03d}", "", i) for i in range(40)]
    with pytest.raises(UsageError, match=r"and 28 more$"):
        match_globs(["nope"], many)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=3), st.lists(st.text(max_size=8), max_size=2))
def test_fuzz_resolution_raises_only_usage_errors(globs, nss):
    try:
        sel = resolve_from(globs, nss, HOST, PODS, KNOWN)
    except UsageError as e:
        assert "\n" not in e.message
    else:
        assert all(i.netns in sel.netns for i in sel.interfaces)
