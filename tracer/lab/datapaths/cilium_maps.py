"""Byte layouts of the cilium lab's BPF maps, and the policy as map entries (pure).

The layouts are Cilium's own (bpf/lib/maps.h, bpf/lib/eps.h), checked in the unit tests
against real `bpftool map dump` output of a Cilium node, so a collector that reads real
`cilium_policy_<ep>` / `cilium_ipcache` maps reads the lab's the same way:

    policy key   (8 B):  u32 sec_label | be16 dport | u8 protocol | u8 egress
    policy entry (24 B): be16 proxy_port | u8 flags (deny, wildcard proto, wildcard dport) |
                         u8 auth_type | u16 pad | u16 pad | u64 packets | u64 bytes
    ipcache key  (24 B): u32 lpm prefixlen (32 + IP prefix) | u16 cluster_id | u8 pad | u8 family |
                         16 B address (IPv4 in the first 4)
    ipcache value (12 B): u32 sec_identity | be32 tunnel_endpoint | u16 pad | u8 key | u8 flags
    endpoint key (cilium_lxc, 20 B): 16 B address | u8 family | u8 key | u16 cluster_id
    endpoint info (lab subset, 16 B): u32 ifindex | u16 pad | u16 lxc_id | u32 flags | u32 sec_id

A Kubernetes port range has no single hash key, so each port of a range is one entry (as in
Cilium before port-range policy keys); a hash lookup costs the same at N = 0 or 10,000.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import struct
from typing import Iterable

PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
PROTO_NAME = {v: k for k, v in PROTO.items()}
INGRESS, EGRESS = 0, 1
FAMILY_IPV4 = 1            # ENDPOINT_KEY_IPV4

# Reserved identities (pkg/identity/numeric_identity.go)
ID_HOST, ID_WORLD = 1, 2
# The lab's security identities: every client pod shares one (same labels), the server has its own.
ID_CLIENT, ID_SERVER = 48312, 12301

FLAG_DENY, FLAG_WILDCARD_PROTO, FLAG_WILDCARD_DPORT = 0x1, 0x2, 0x4
EP_FLAG_INGRESS_POLICY, EP_FLAG_EGRESS_POLICY = 0x1, 0x2   # which directions the policy map enforces

POLICY_KEY = struct.Struct("<IHBB")          # dport packed separately in network order
POLICY_VALUE = struct.Struct("<HBBHHQQ")     # proxy_port packed separately in network order
IPCACHE_KEY = struct.Struct("<IHBB16s")
IPCACHE_VALUE = struct.Struct("<I4sHBB")
ENDPOINT_KEY = struct.Struct("<16sBBH")
ENDPOINT_VALUE = struct.Struct("<IHHII")


@dataclasses.dataclass(frozen=True)
class PolicyKey:
    identity: int
    dport: int
    proto: int
    egress: int = INGRESS

    def pack(self) -> bytes:
        b = bytearray(POLICY_KEY.pack(self.identity, 0, self.proto, self.egress))
        b[4:6] = struct.pack(">H", self.dport)
        return bytes(b)

    @classmethod
    def unpack(cls, b: bytes) -> "PolicyKey":
        identity, _, proto, egress = POLICY_KEY.unpack(b)
        return cls(identity, struct.unpack(">H", b[4:6])[0], proto, egress & 1)


@dataclasses.dataclass(frozen=True)
class PolicyEntry:
    proxy_port: int = 0
    flags: int = 0
    auth_type: int = 0
    packets: int = 0
    bytes: int = 0

    @property
    def deny(self) -> bool:
        return bool(self.flags & FLAG_DENY)

    def pack(self) -> bytes:
        b = bytearray(POLICY_VALUE.pack(0, self.flags, self.auth_type, 0, 0, self.packets, self.bytes))
        b[0:2] = struct.pack(">H", self.proxy_port)
        return bytes(b)

    @classmethod
    def unpack(cls, b: bytes) -> "PolicyEntry":
        _, flags, auth, _, _, packets, nbytes = POLICY_VALUE.unpack(b)
        return cls(struct.unpack(">H", b[0:2])[0], flags, auth, packets, nbytes)


@dataclasses.dataclass(frozen=True)
class IpcacheKey:
    ip: str
    prefix: int = 32
    cluster_id: int = 0

    def pack(self) -> bytes:
        addr = ipaddress.IPv4Address(self.ip).packed.ljust(16, b"\0")
        return IPCACHE_KEY.pack(32 + self.prefix, self.cluster_id, 0, FAMILY_IPV4, addr)

    @classmethod
    def unpack(cls, b: bytes) -> "IpcacheKey":
        plen, cluster, _, family, addr = IPCACHE_KEY.unpack(b)
        if family != FAMILY_IPV4:
            raise ValueError(f"not an IPv4 ipcache key (family {family})")
        return cls(str(ipaddress.IPv4Address(addr[:4])), plen - 32, cluster)


@dataclasses.dataclass(frozen=True)
class IpcacheValue:
    identity: int
    tunnel_endpoint: str = "0.0.0.0"

    def pack(self) -> bytes:
        return IPCACHE_VALUE.pack(self.identity, ipaddress.IPv4Address(self.tunnel_endpoint).packed, 0, 0, 0)

    @classmethod
    def unpack(cls, b: bytes) -> "IpcacheValue":
        identity, tun, _, _, _ = IPCACHE_VALUE.unpack(b)
        return cls(identity, str(ipaddress.IPv4Address(tun)))


@dataclasses.dataclass(frozen=True)
class Endpoint:
    ip: str
    ifindex: int
    lxc_id: int
    identity: int
    flags: int = 0

    def pack_key(self) -> bytes:
        return ENDPOINT_KEY.pack(ipaddress.IPv4Address(self.ip).packed.ljust(16, b"\0"), FAMILY_IPV4, 0, 0)

    def pack_value(self) -> bytes:
        return ENDPOINT_VALUE.pack(self.ifindex, 0, self.lxc_id, self.flags, self.identity)


def policy_entries(port_rules: Iterable, identity: int = ID_CLIENT, proxy_port: int = 0,
                   l7_port: int | None = None) -> list[tuple[PolicyKey, PolicyEntry]]:
    """cnitrace.lab.policy PortRules -> ingress entries of the server endpoint's policy map.

    With L7, the allow entry for TCP `l7_port` carries `proxy_port`: the program redirects
    those packets to the proxy, as Cilium redirects to Envoy.
    """
    out: dict[PolicyKey, PolicyEntry] = {}
    for r in port_rules:
        for port in range(r.lo, r.hi + 1):
            key = PolicyKey(identity, port, PROTO[r.proto], INGRESS)
            pp = proxy_port if (l7_port is not None and r.proto == "tcp" and port == l7_port) else 0
            out.setdefault(key, PolicyEntry(proxy_port=pp))
    return list(out.items())


_HEX = re.compile(r"^[0-9a-fA-F]{2}( +[0-9a-fA-F]{2})*$")


@dataclasses.dataclass(frozen=True)
class HexDump:
    entries: tuple[tuple[bytes, bytes], ...]
    warnings: tuple[str, ...] = ()


def parse_bpftool_hex(text: str, key_size: int, value_size: int) -> HexDump:
    """Parse `bpftool map dump` hex output (no BTF) into (key, value) byte pairs.

    An entry whose key or value has the wrong size (a torn or truncated dump) is skipped
    with a warning, so a partial dump still yields every complete entry.
    """
    entries, warnings = [], []
    section, key, val = None, bytearray(), bytearray()

    def flush() -> None:
        if section is None:
            return
        if len(key) == key_size and len(val) == value_size:
            entries.append((bytes(key), bytes(val)))
        else:
            warnings.append(f"skipped entry with {len(key)}-byte key / {len(val)}-byte value "
                            f"(expected {key_size}/{value_size})")

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("Found "):
            continue
        if line == "key:":
            flush()
            section, key, val = "key", bytearray(), bytearray()
        elif line == "value:":
            section = "value"
        elif _HEX.match(line) and section:
            (key if section == "key" else val).extend(bytes.fromhex(line.replace(" ", "")))
        else:
            warnings.append(f"unparsed line: {line[:80]}")
    flush()
    return HexDump(tuple(entries), tuple(warnings))
