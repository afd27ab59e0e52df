"""Pure parsers for Cilium's policy, conntrack and ipcache maps.

Two sources: the agent CLI (`cilium-dbg bpf policy get --all -o json`, Go structs without
json tags, so field names are the Go names and ports are raw network-byte-order u16s),
and raw `bpftool -j map dump` of the pinned maps when no agent CLI exists (keys and values
as byte lists, decoded by their length: the 8-byte pre-1.15 key, the 12-byte LPM key of
1.15+; the 24-byte value with inline packets/bytes). Per-entry packets/bytes are the
policy-cost counters; a non-zero proxy port is an L7 redirect (Envoy).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from typing import Any, Mapping

from cnitrace.collectors.base import Parsed, Warnings, strip_provenance
from cnitrace.collectors.pasted import paste_lines, prompt_command

PROTO = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


def ntohs(v: int) -> int:
    return ((v & 0xFF) << 8) | ((v >> 8) & 0xFF)


@dataclasses.dataclass(frozen=True)
class PolicyEntry:
    """One entry of an endpoint's policy map: who (identity) may reach which port, and how often it hit."""

    endpoint: str
    identity: int
    direction: str          # 'ingress' | 'egress'
    proto: int
    port: int
    proxy_port: int = 0     # non-zero: redirected to the L7 proxy
    deny: bool = False
    packets: int | None = None
    bytes: int | None = None
    prefix_len: int | None = None
    labels: tuple[str, ...] = ()   # the identity's labels, as `bpf policy get` text prints them
    port_end: int | None = None    # last port of a port range ('80-90/TCP'); None for one port

    @property
    def key(self) -> tuple:
        """Identity -1 is a labelled identity whose number the text did not print: its labels key it."""
        k = ("policy", self.endpoint, self.direction, self.identity, self.proto, self.port)
        return (*k, self.labels) if self.identity < 0 else k

    @property
    def counters(self) -> Mapping[str, int]:
        if self.packets is None:
            return {}
        return {"packets": self.packets, "bytes": self.bytes or 0}

    @property
    def port_proto(self) -> str:
        if self.port == 0 and self.proto == 0:
            return "ANY"
        return f"{self.port or 'ANY'}/{PROTO.get(self.proto, self.proto)}"


@dataclasses.dataclass(frozen=True)
class MapUsage:
    """How full a Cilium map is (CT, ipcache, a policy map): a gauge, never differenced."""

    name: str
    path: str
    entries: int | None
    max_entries: int | None

    @property
    def key(self) -> tuple:
        return ("map", self.path)

    @property
    def counters(self) -> Mapping[str, int]:
        return {}

    @property
    def pressure(self) -> float | None:
        return self.entries / self.max_entries if self.entries is not None and self.max_entries else None


def _u(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"not an unsigned integer: {v!r}")
    return v


def _entry_from_agent(ep: str, e: Mapping[str, Any]) -> PolicyEntry:
    k = e["Key"]
    flags = e.get("Flags", e.get("Pad0", 0)) or 0
    packets = e.get("Packets")
    byts = e.get("Bytes")
    unavailable = 0xFFFFFFFFFFFFFFFF  # policymap.StatNotAvailable
    return PolicyEntry(
        endpoint=ep, identity=_u(k["Identity"]),
        direction="egress" if _u(k.get("TrafficDirection", 0)) & 1 else "ingress",
        proto=_u(k.get("Nexthdr", 0)), port=ntohs(_u(k.get("DestPortNetwork", k.get("DestPort", 0)))),
        proxy_port=ntohs(_u(e.get("ProxyPortNetwork", e.get("ProxyPort", 0)) or 0)),
        deny=bool(_u(flags) & 1),
        packets=None if packets in (None, unavailable) else _u(packets),
        bytes=None if byts in (None, unavailable) else _u(byts),
        prefix_len=k.get("Prefixlen"),
    )


def parse_policy_get_json(text: str) -> Parsed[PolicyEntry]:
    """Parse `cilium-dbg bpf policy get --all -o json`: [{EndpointID, Path, Content: [...]}]
    (or a single endpoint's Content list from `bpf policy get <ep> -o json`)."""
    w = Warnings()
    try:
        doc = json.loads(strip_provenance(text) or "null")
    except ValueError as exc:
        w.add(f"not JSON: {exc}")
        return Parsed((), w.freeze())
    if isinstance(doc, list) and doc and isinstance(doc[0], dict) and "Key" in doc[0]:
        doc = [{"EndpointID": "", "Content": doc}]
    out: list[PolicyEntry] = []
    for block in doc if isinstance(doc, list) else []:
        if not isinstance(block, dict):
            w.add("unexpected endpoint block")
            continue
        ep = str(block.get("EndpointID", ""))
        for i, e in enumerate(block.get("Content") or []):
            try:
                out.append(_entry_from_agent(ep, e))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                w.add(f"endpoint {ep} entry {i}: {exc}")
    if not isinstance(doc, list):
        w.add("expected a list of endpoints")
    return Parsed(tuple(out), w.freeze())


def _bytes(v: Any) -> bytes:
    if not isinstance(v, list):
        raise ValueError("expected a byte list")
    return bytes(int(b, 16) if isinstance(b, str) else int(b) for b in v)


def decode_policy_key(raw: bytes) -> tuple[int, str, int, int, int | None]:
    """(identity, direction, proto, port, prefix_len) from an 8- or 12-byte policy_key."""
    if len(raw) == 8:      # u32 sec_label, be16 dport, u8 protocol, u8 egress
        ident, port, proto, egress = struct.unpack("<I2sBB", raw)
        return ident, "egress" if egress & 1 else "ingress", proto, int.from_bytes(port, "big"), None
    if len(raw) == 12:     # u32 lpm prefixlen, u32 sec_label, u8 egress:1, u8 protocol, be16 dport
        plen, ident, egress, proto, port = struct.unpack("<IIBB2s", raw)
        return ident, "egress" if egress & 1 else "ingress", proto, int.from_bytes(port, "big"), plen
    raise ValueError(f"unknown policy key size {len(raw)}")


def decode_policy_value(raw: bytes) -> tuple[int, bool, int | None, int | None]:
    """(proxy_port, deny, packets, bytes) from a policy_entry (24 bytes with counters, or 8 without)."""
    if len(raw) < 8:
        raise ValueError(f"unknown policy value size {len(raw)}")
    proxy = int.from_bytes(raw[0:2], "big")
    deny = bool(raw[2] & 1)
    if len(raw) >= 24:
        packets, byts = struct.unpack("<QQ", raw[8:24])
        return proxy, deny, packets, byts
    return proxy, deny, None, None


_EP = re.compile(r"cilium_policy_(?:v\d+_)?0*(\d+)$")


def endpoint_of(path: str) -> str:
    m = _EP.search(path.rstrip("/"))
    return m.group(1) if m else path.rsplit("/", 1)[-1]


def _formatted(e: Mapping[str, Any], ep: str) -> PolicyEntry:
    """A BTF-formatted entry (bpftool shows struct fields by name)."""
    k, v = e["formatted"]["key"], e["formatted"]["value"]
    lpm = k.get("lpm_key", {})
    return PolicyEntry(
        endpoint=ep, identity=_u(k["sec_label"]), direction="egress" if _u(k.get("egress", 0)) else "ingress",
        proto=_u(k.get("protocol", 0)), port=ntohs(_u(k.get("dport", 0))),
        proxy_port=ntohs(_u(v.get("proxy_port", 0))), deny=bool(v.get("deny", 0)),
        packets=v.get("packets"), bytes=v.get("bytes"),
        prefix_len=lpm.get("prefixlen") if isinstance(lpm, dict) else None,
    )


def hex_entries(text: str, w: Warnings) -> list[tuple[bytes, bytes]]:
    """(key, value) byte pairs from plain `bpftool map dump` text ('key:' / 'value:' blocks,
    or 'key: .. value: ..' on one line); a malformed pair is skipped with a warning."""
    out: list[tuple[bytes, bytes]] = []
    key: list[str] | None = None
    val: list[str] | None = None
    cur: list[str] | None = None

    def flush() -> None:
        if key is not None:
            try:
                if val is None:
                    raise ValueError("key without value")
                out.append((bytes.fromhex("".join(key)), bytes.fromhex("".join(val))))
            except ValueError as exc:
                w.add(f"map entry {len(out)}: {exc}")

    for tok in strip_provenance(text).split():
        if tok == "key:":
            flush()
            key, val = [], None
            cur = key
        elif tok == "value:":
            val = []
            cur = val
        elif tok in ("Found",) or cur is None:
            flush()
            key = val = cur = None
        elif re.fullmatch(r"[0-9a-fA-F]{2}", tok):
            cur.append(tok)
        else:
            w.add(f"unexpected token {tok[:20]!r}")
            key = val = cur = None
    flush()
    return out


def parse_policy_map_dump(text: str, path: str) -> Parsed[PolicyEntry]:
    """Parse `bpftool [-j] map dump pinned .../cilium_policy_<ep>` (JSON or plain hex text)."""
    w = Warnings()
    ep = endpoint_of(path)
    body = strip_provenance(text).lstrip()
    if body.startswith("key:"):
        out = []
        for i, (k, v) in enumerate(hex_entries(body, w)):
            try:
                ident, direction, proto, port, plen = decode_policy_key(k)
                proxy, deny, packets, byts = decode_policy_value(v)
                out.append(PolicyEntry(ep, ident, direction, proto, port, proxy, deny, packets, byts, plen))
            except (ValueError, struct.error) as exc:
                w.add(f"{path} entry {i}: {exc}")
        return Parsed(tuple(out), w.freeze())
    try:
        doc = json.loads(body or "null")
    except ValueError as exc:
        w.add(f"{path}: not JSON: {exc}")
        return Parsed((), w.freeze())
    out: list[PolicyEntry] = []
    for i, e in enumerate(doc if isinstance(doc, list) else []):
        try:
            if isinstance(e, dict) and "formatted" in e:
                out.append(_formatted(e, ep))
                continue
            ident, direction, proto, port, plen = decode_policy_key(_bytes(e["key"]))
            proxy, deny, packets, byts = decode_policy_value(_bytes(e["value"]))
            out.append(PolicyEntry(ep, ident, direction, proto, port, proxy, deny, packets, byts, plen))
        except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
            w.add(f"{path} entry {i}: {exc}")
    if not isinstance(doc, list):
        w.add(f"{path}: expected a list")
    return Parsed(tuple(out), w.freeze())


_FOUND = re.compile(r"Found (\d+) elements?")


def parse_dump_count(text: str) -> int | None:
    """The element count bpftool prints at the end of a plain `map dump` ('Found N elements')."""
    m = _FOUND.search(strip_provenance(text))
    return int(m.group(1)) if m else None


def parse_map_show_max(text: str) -> tuple[str, int] | None:
    """(name, max_entries) from `bpftool -j map show pinned PATH`."""
    try:
        doc = json.loads(strip_provenance(text))
        return str(doc.get("name", "")), _u(doc["max_entries"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def entries_per_endpoint(entries: tuple[PolicyEntry, ...] | list[PolicyEntry]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        out[e.endpoint] = out.get(e.endpoint, 0) + 1
    return out


# --- `cilium-dbg bpf policy get <ep>` / `--all` text tables -------------------------------------

# Reserved identities have fixed numbers (pkg/identity/numericidentity.go), so a label-only table
# still yields them; other labels keep identity -1 and are keyed by their labels.
RESERVED = {"reserved:unknown": 0, "reserved:host": 1, "reserved:world": 2, "reserved:unmanaged": 3,
            "reserved:health": 4, "reserved:init": 5, "reserved:remote-node": 6, "reserved:kube-apiserver": 7,
            "reserved:ingress": 8, "reserved:world-ipv4": 9, "reserved:world-ipv6": 10}
_PROTO_NUM = {v.upper(): k for k, v in PROTO.items()}
_COLUMNS = re.compile(r"POLICY|DIRECTION|IDENTITY|LABELS \(source:key\[=value\]\)|PORT/PROTO|PROXY PORT|AUTH TYPE"
                      r"|BYTES|PACKETS|PREFIX")
_MAP_PATH = re.compile(r"^(/\S*cilium_policy\S*?):?$")
_GET_CMD = re.compile(r"\bbpf policy (?:get|list)\s+(\d+)")


def _port_proto(v: str) -> tuple[int, int, int | None]:
    """'ANY' -> (0, 0, None); '80/TCP' -> (80, 6, None); '8/ICMP'; '80-90/TCP' -> (80, 6, 90)."""
    if v.upper() == "ANY":
        return 0, 0, None
    port, _, proto = v.partition("/")
    pnum = _PROTO_NUM.get(proto.upper(), int(proto) if proto.isdigit() else None)
    if pnum is None:
        raise ValueError(f"unknown protocol {proto!r}")
    if port.upper() == "ANY":
        return 0, pnum, None
    first, dash, last = port.partition("-")
    return int(first), pnum, int(last) if dash else None


def _count(v: str) -> int | None:
    return int(v) if v.isdigit() else None   # '-' when accounting is off


def _text_entry(ep: str, row: dict[str, str], labels: list[str]) -> PolicyEntry:
    port, proto, port_end = _port_proto(row["PORT/PROTO"])
    ident = row.get("IDENTITY")
    if ident is not None:
        identity = int(ident)
    elif len(labels) == 1 and labels[0].isdigit():
        identity = int(labels[0])       # 1.0-era tables printed the number in LABELS
    else:
        identity = RESERVED.get(labels[0], -1) if len(labels) == 1 else -1
    proxy = row.get("PROXY PORT", "NONE")
    return PolicyEntry(
        endpoint=ep, identity=identity, direction=row["DIRECTION"].lower(), proto=proto, port=port,
        proxy_port=int(proxy) if proxy.isdigit() else 0, deny=row.get("POLICY", "Allow").lower() == "deny",
        packets=_count(row["PACKETS"]), bytes=_count(row["BYTES"]),
        prefix_len=_count(row["PREFIX"]) if "PREFIX" in row else None,
        labels=tuple(x for x in labels if not x.isdigit()), port_end=port_end)


def parse_policy_get_text(text: str, endpoint: str = "") -> Parsed[PolicyEntry]:
    """Parse `cilium-dbg bpf policy get <ep>` / `cilium bpf policy get --all` tables of any version
    (POLICY/IDENTITY/AUTH TYPE/PREFIX columns or not; one label per line, continuation lines
    holding further labels). The endpoint comes from the `--all` map path heading or the command."""
    w = Warnings()
    out: list[PolicyEntry] = []
    ep = endpoint
    cols: list[str] = []
    pending: tuple[dict[str, str], list[str]] | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            try:
                out.append(_text_entry(ep, *pending))
            except (ValueError, KeyError, IndexError) as exc:
                w.add(f"endpoint {ep or '?'}: {exc}")
            pending = None

    for no, s in paste_lines(text, keep_prompts=True):
        if (m := _GET_CMD.search(s)):
            flush()
            ep = m.group(1)
            continue
        if (m := _MAP_PATH.match(s)):
            flush()
            ep = endpoint_of(m.group(1))
            continue
        found = _COLUMNS.findall(s)
        if len(found) >= 4 and "DIRECTION" in found:
            flush()
            cols = found
            continue
        toks = s.split()
        if cols and len(toks) == len(cols):
            flush()
            row = dict(zip(cols, toks))
            if row.get("DIRECTION", "").lower() not in ("ingress", "egress"):
                w.add(f"not a policy row: {s[:120]}", no)
                continue
            lab = row.get("LABELS (source:key[=value])")
            pending = (row, [lab] if lab else [])
        elif pending is not None and len(toks) == 1 and ":" in toks[0]:
            pending[1].append(toks[0])   # the identity's next label
        elif s.startswith("Policy stats empty"):
            # cilium 1.6 printed this for a map that was not empty (cilium/cilium#8507): say it, claim nothing
            w.add(f"{s[:120]} (the CLI's words: entries, if any, were not listed)", no)
        elif s in ("...", "…") or prompt_command(s) is not None or s.startswith("Defaulted container"):
            continue
        else:
            w.add(f"unrecognised policy table line: {s[:120]}", no)
    flush()
    return Parsed(tuple(out), w.freeze())
