"""Which interfaces and namespaces a command looks at: `--iface` globs and `--netns` names.

A CNI's per-pod interface (cali*, lxc*, antrea's veths) is the host end of a veth pair whose
other end lives in the pod's namespace; collectors need both ends and the namespace
(conntrack is per namespace, tc programs may sit on either end). Resolution uses pyroute2
netlink dumps; matching and validation are pure functions so they are tested without root.
A glob that matches nothing is a usage error that lists what does exist.

This module is the one validator of interface names, globs and namespace names (the CLI, the
probes and the collectors all call it), and the one spelling of the host namespace: `HOST`,
the empty string, in every Interface and Selection (it sorts first, is a plain JSON string and
is falsy, so the Runner runs host commands without `ip netns exec`). Callers whose own
vocabulary is `None` (the probes' ProbeSet) convert at their edge; Interface and Selection
accept `None` on construction and store `HOST`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from cnitrace.core.errors import UsageError

HOST = ""                 # the namespace cnitrace runs in
IFNAMSIZ = 16             # include/uapi/linux/if.h: names are at most IFNAMSIZ - 1 bytes
MAX_IFNAME = IFNAMSIZ - 1
# A glob may be longer than a name because a bracket class stands for one character
# ('cali[0-9a-f][0-9a-f]*'); 64 bounds the option and leaves room for that. A glob whose
# shortest match is longer than MAX_IFNAME can match nothing and is refused.
MAX_GLOB = 64
MAX_NETNS = 255           # a file name under /run/netns
_NAME_CHARS = r"A-Za-z0-9_.:@\-"
_NAME = re.compile(f"[{_NAME_CHARS}]+")
_GLOB = re.compile(rf"[{_NAME_CHARS}*?\[\]!]+")
_NETNS = re.compile(r"[A-Za-z0-9_.-]+")
_GLOB_CHARS = frozenset("*?[")
NETNS_DIR = "/run/netns"
_IFACE_HELP = ("use [NETNS/]NAME with names of letters, digits and '_.-:@' "
               f"(at most {MAX_IFNAME}) or globs with '*?[]!'")


def _host(ns: str | None) -> str:
    return HOST if ns is None else ns


@dataclasses.dataclass(frozen=True)
class Interface:
    name: str
    netns: str            # HOST ('') = the namespace cnitrace runs in; None is stored as HOST
    ifindex: int
    kind: str = ""        # 'veth', 'bridge', 'vxlan', ... ('' = physical/unknown)
    peer: str | None = None
    peer_netns: str | None = None   # the peer's namespace (HOST included); None = no known peer

    def __post_init__(self) -> None:
        if self.netns is None:
            object.__setattr__(self, "netns", HOST)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Selection:
    interfaces: tuple[Interface, ...] = ()
    netns: tuple[str, ...] = ()   # every namespace involved, HOST ('') first when the host is

    def __post_init__(self) -> None:
        object.__setattr__(self, "interfaces", tuple(self.interfaces))
        object.__setattr__(self, "netns", tuple(_host(n) for n in self.netns))

    @property
    def empty(self) -> bool:
        return not self.interfaces and not self.netns

    def in_netns(self, ns: str | None) -> tuple[Interface, ...]:
        ns = _host(ns)
        return tuple(i for i in self.interfaces if i.netns == ns)

    def namespaces(self) -> tuple[str, ...]:
        """Where per-namespace state (rules, conntrack) is read: the selected namespaces, or the
        host alone when nothing is selected (the whole node as cnitrace sees it)."""
        return self.netns if not self.empty else (HOST,)

    def to_json(self) -> dict[str, Any]:
        return {"interfaces": [i.to_json() for i in self.interfaces], "netns": list(self.netns)}


def namespaces_of(selection: "Selection | None") -> tuple[str, ...]:
    """Selection.namespaces(), with no selection meaning the host namespace."""
    return selection.namespaces() if selection is not None else (HOST,)


# --- the one validator ---------------------------------------------------------------------------

def _shortest_match(glob: str) -> int:
    """How many characters the shortest name matching `glob` has ('*' none, '?' and '[...]' one)."""
    n, i = 0, 0
    while i < len(glob):
        c = glob[i]
        if c == "[":
            end = glob.find("]", i + 2 if glob[i + 1:i + 2] in ("!", "]") else i + 1)
            if end > 0:
                i = end
        if c != "*":
            n += 1
        i += 1
    return n


def ifname_problem(name: str) -> str | None:
    """Why `name` is not an interface name or glob (None when it is one)."""
    if not name:
        return "empty"
    if not _GLOB.fullmatch(name):
        return "bad characters"
    if name in (".", ".."):
        return "not a name"
    if not (_GLOB_CHARS & set(name)):
        if len(name) > MAX_IFNAME:
            return f"{len(name)} characters, the kernel allows {MAX_IFNAME}"
        return None
    if len(name) > MAX_GLOB:
        return f"a glob of {len(name)} characters, at most {MAX_GLOB}"
    if _shortest_match(name) > MAX_IFNAME:
        return f"the glob matches only names longer than {MAX_IFNAME} characters"
    return None


def netns_problem(name: str) -> str | None:
    """Why `name` is not a `ip netns` name (None when it is one)."""
    if not name:
        return "empty"
    if not _NETNS.fullmatch(name) or name in (".", ".."):
        return "bad characters"
    if len(name) > MAX_NETNS:
        return f"longer than {MAX_NETNS} characters"
    return None


def validate_ifname(name: str, option: str = "--iface") -> str:
    """An interface name (at most 15 characters) or glob, without a namespace; else UsageError."""
    why = ifname_problem(name if isinstance(name, str) else "")
    if why:
        raise UsageError(f"invalid {option} {name!r}: bad interface name or glob ({why}); {_IFACE_HELP}")
    return name


def validate_netns(name: str, option: str = "--netns") -> str:
    if netns_problem(name if isinstance(name, str) else ""):
        raise UsageError(f"invalid {option} {name!r}: a namespace name from `ip netns list`")
    return name


def parse_iface(text: str, option: str = "--iface") -> tuple[str, str]:
    """'NETNS/GLOB' -> (netns, glob); a plain 'GLOB' is in the host namespace (HOST). Validated."""
    ns, sep, pat = (text if isinstance(text, str) else "").rpartition("/")
    if sep:
        why = netns_problem(ns)
        if why:
            raise UsageError(f"invalid {option} {text!r}: bad namespace name before '/' ({why}); {_IFACE_HELP}")
    why = ifname_problem(pat)
    if why:
        raise UsageError(f"invalid {option} {text!r}: bad interface name or glob ({why}); {_IFACE_HELP}")
    return ns, pat


def split_glob(glob: str) -> tuple[str, str]:
    """'NETNS/GLOB' -> (netns, glob); a plain glob is looked up in the host namespace (HOST).
    Not validated (see parse_iface)."""
    ns, _, pat = (glob or "").rpartition("/")
    return ns, pat


def validate_glob(glob: str) -> str:
    """'[NETNS/]GLOB' as given to --iface; UsageError when either part is invalid."""
    parse_iface(glob)
    return glob


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(set(names))
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) if names else "none"


def match_globs(globs: Sequence[str], links: Sequence[Interface]) -> tuple[Interface, ...]:
    """Links matching any glob; a glob that matches nothing is a UsageError naming the candidates."""
    out: dict[tuple[str, str], Interface] = {}
    for g in globs:
        hits = [l for l in links if fnmatch.fnmatchcase(l.name, split_glob(g)[1])]
        if not hits:
            raise UsageError(f"--iface {g!r} matches no interface; interfaces here: "
                             f"{_listing(l.name for l in links)}")
        for l in hits:
            out.setdefault((l.netns, l.name), l)
    return tuple(out.values())


def resolve_from(globs: Sequence[str], netns_names: Sequence[str], host_links: Sequence[Interface],
                 ns_links: Mapping[str, Sequence[Interface]], known_netns: Sequence[str]) -> Selection:
    """Pure resolution over already-dumped links (what the unit tests drive).

    `ns_links` holds the links of each named namespace; peers are added by following
    Interface.peer/peer_netns in both directions.
    """
    for g in globs:
        validate_glob(g)
    for n in netns_names:
        validate_netns(n)
        if n not in known_netns:
            raise UsageError(f"--netns {n!r} does not exist; namespaces: {_listing(known_netns)}")
    chosen: dict[tuple[str, str], Interface] = {}
    for g in globs:
        ns, _ = split_glob(g)
        if ns != HOST and ns not in known_netns:
            raise UsageError(f"--iface {g!r}: namespace {ns!r} does not exist; namespaces: {_listing(known_netns)}")
        for l in match_globs([g], host_links if ns == HOST else ns_links.get(ns, ())):
            chosen[(l.netns, l.name)] = l
    for n in netns_names:
        for l in ns_links.get(n, ()):
            if l.name != "lo":
                chosen[(l.netns, l.name)] = l
    everywhere = {(l.netns, l.name): l for l in host_links}
    for n, ls in ns_links.items():
        everywhere.update({(l.netns, l.name): l for l in ls})
    for l in list(chosen.values()):
        if l.peer is not None and l.peer_netns is not None:
            peer = everywhere.get((l.peer_netns, l.peer))
            if peer is not None:
                chosen.setdefault((peer.netns, peer.name), peer)
        # the reverse direction: a host veth whose peer is this interface
        for other in everywhere.values():
            if other.peer == l.name and other.peer_netns == l.netns:
                chosen.setdefault((other.netns, other.name), other)
    ifaces = tuple(sorted(chosen.values(), key=lambda i: (i.netns, i.name)))
    nss = sorted({i.netns for i in ifaces} | set(netns_names))   # HOST ('') sorts first
    return Selection(ifaces, tuple(nss))


# --- netlink acquisition (pyroute2) ------------------------------------------------------------

def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def _links(ipr: Any, netns: str, nsid_names: Mapping[int, str], self_name: str) -> list[Interface]:
    out = []
    by_index: dict[int, str] = {}
    raw = list(ipr.get_links())
    for msg in raw:
        by_index[msg["index"]] = msg.get_attr("IFLA_IFNAME")
    for msg in raw:
        name = msg.get_attr("IFLA_IFNAME")
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
        peer_idx = msg.get_attr("IFLA_LINK")
        peer_nsid = msg.get_attr("IFLA_LINK_NETNSID")
        peer = peer_ns = None
        if kind == "veth" and peer_idx:
            if peer_nsid is None:
                peer, peer_ns = by_index.get(peer_idx), netns
            elif peer_nsid in nsid_names:
                peer_ns = nsid_names[peer_nsid]
                peer = f"#{peer_idx}"   # name resolved against that namespace's dump below
        out.append(Interface(name, netns, msg["index"], kind or "", peer, peer_ns))
    return out


def _nsid_names(ipr: Any, names: Sequence[str], host_nsid: Mapping[str, int] | None = None) -> dict[int, str]:
    """Map the netnsids this namespace uses for other namespaces to their names."""
    out: dict[int, str] = {}
    for n in names:
        try:
            fd = os.open(os.path.join(NETNS_DIR, n), os.O_RDONLY)
        except OSError:
            continue
        try:
            nsid = ipr.get_netnsid(fd=fd).get("nsid")
        except Exception:  # noqa: BLE001 - an unassigned nsid just means no peer points there
            nsid = None
        finally:
            os.close(fd)
        if nsid is not None and nsid >= 0:
            out[nsid] = n
    return out


@contextlib.contextmanager
def _inside(netns: str) -> Iterator[Any]:
    """An IPRoute socket opened inside `netns`, by switching this thread there and back.

    Not pyroute2's NetNS: that forks a helper which inherits this process's signal handlers,
    and a forked copy of a Session that gets SIGTERM runs the parent's cleanup (seen: a test's
    namespaces deleted under it). setns() on our own thread has no second process at all.
    """
    # lazily: pyroute2 is slow to import, and validation (the common path) never needs it
    from pyroute2 import IPRoute
    from pyroute2.netns import setns

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
        try:
            setns(target)
            try:
                ipr = IPRoute()  # the netlink socket belongs to the namespace it was created in
            finally:
                setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)
    with ipr:
        yield ipr


def resolve(globs: Sequence[str] = (), netns_names: Sequence[str] = ()) -> Selection:
    """Dump links in the host and the named namespaces, then resolve (see resolve_from)."""
    from pyroute2 import IPRoute   # lazily: as above

    for g in globs:
        validate_glob(g)
    for n in netns_names:
        validate_netns(n)
    known = list_netns()
    for n in netns_names:
        if n not in known:
            raise UsageError(f"--netns {n!r} does not exist; namespaces: {_listing(known)}")
    # Namespaces to inspect for peers: the named ones, plus every named one when globs are used
    # (a host veth's peer may sit in any pod namespace).
    inspect = list(dict.fromkeys([*netns_names, *(known if globs else [])]))
    for g in globs:
        ns, _ = split_glob(g)
        if ns != HOST and ns not in known:
            raise UsageError(f"--iface {g!r}: namespace {ns!r} does not exist; namespaces: {_listing(known)}")
    with IPRoute() as ipr:
        host = _links(ipr, HOST, _nsid_names(ipr, known), HOST)
    ns_links: dict[str, list[Interface]] = {}
    for n in inspect:
        try:
            with _inside(n) as nsr:
                ids = _nsid_names(nsr, [x for x in known if x != n])
                ns_links[n] = _links(nsr, n, ids, n)
        except OSError:  # a namespace deleted meanwhile is simply skipped
            continue
    host, ns_links = _name_peers(host, ns_links)
    return resolve_from(globs, netns_names, host, ns_links, known)


def _name_peers(host: list[Interface], ns_links: dict[str, list[Interface]]):
    """Replace '#<ifindex>' peer placeholders with names from the peer namespace's dump.
    A peer in the host namespace (seen from a pod) has peer_netns None -> HOST."""
    index = {(HOST, i.ifindex): i.name for i in host}
    for n, ls in ns_links.items():
        index.update({(n, i.ifindex): i.name for i in ls})

    def fix(i: Interface) -> Interface:
        if i.peer and i.peer.startswith("#"):
            idx = int(i.peer[1:])
            return dataclasses.replace(i, peer=index.get((_host(i.peer_netns), idx)))
        return i

    host = [fix(i) for i in host]
    ns_links = {n: [fix(i) for i in ls] for n, ls in ns_links.items()}
    return host, ns_links
