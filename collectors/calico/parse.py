"""Pure parsers for Calico's eBPF data plane tool: `calico-node -bpf counters dump` and `policy dump`.

The counters are per interface and per hook (the packets each program accepted, dropped or
redirected, and why); the policy dump prints each rule of the program attached at a hook with
the number of packets that matched it: Calico's per-rule policy cost, the counterpart of
iptables rule counters. Both are tables or comments meant for people, so they are read
tolerantly: doc indentation, prompts, fences and truncated tables parse to what is complete.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from cnitrace.collectors.base import Parsed, Warnings
from cnitrace.collectors.pasted import is_command, paste_lines, prompt_command


@dataclasses.dataclass(frozen=True)
class CalicoCounter:
    """One counter row of one interface: values per hook, None where the hook has no program (N/A)."""

    iface: str
    category: str          # 'Accepted', 'Dropped', 'Redirect', 'Other', 'Total'
    type: str              # 'by policy', 'packets with unknown route' ... (multi-line cells joined)
    ingress: int | None
    egress: int | None
    xdp: int | None = None

    @property
    def key(self) -> tuple:
        return ("calico-counter", self.iface, self.category, self.type)

    @property
    def counters(self) -> Mapping[str, int]:
        return {k: v for k, v in (("ingress", self.ingress), ("egress", self.egress), ("xdp", self.xdp))
                if v is not None}


_DUMPED = re.compile(r"^dumped (\S+) counters\.?$")
_IFACE_ARG = re.compile(r"--iface[= ](\S+)")


def _cell(v: str) -> int | None:
    v = v.strip()
    return int(v) if v.isascii() and v.isdigit() else None


def parse_counters_dump(text: str, iface: str = "") -> Parsed[CalicoCounter]:
    """Parse `calico-node -bpf counters dump [--iface=X]`: one table per interface, each followed by
    'dumped X counters.' (which names the table above it) or named by --iface in the command."""
    w = Warnings()
    out: list[CalicoCounter] = []
    cols: list[str] = []
    cur_iface = iface
    pending = 0            # rows since the last 'dumped X counters.' whose interface is not known yet
    category = ""
    for no, s in paste_lines(text, keep_prompts=True):
        if (d := _DUMPED.match(s)):
            for i in range(len(out) - pending, len(out)):
                out[i] = dataclasses.replace(out[i], iface=d.group(1))
            pending, cur_iface = 0, iface
            continue
        if prompt_command(s) is not None or is_command(s, "calico-node", "calico-bpf"):
            a = _IFACE_ARG.search(s)
            cur_iface = a.group(1) if a else iface
            continue
        if s.startswith("+") and set(s) <= set("+-"):
            continue
        if not s.startswith("|"):
            w.add(f"not a counters table line: {s[:120]}", no)
            continue
        cells = [c.strip() for c in s.strip("|").split("|")]
        if cells and cells[0] == "CATEGORY":
            cols = [c.lower() for c in cells]
            category = ""
            continue
        if not cols:
            cols = ["category", "type", "ingress", "egress", "xdp"][: len(cells)]
        if len(cells) != len(cols) or not s.rstrip().endswith("|"):
            w.add(f"truncated counters row: {s[:120]}", no)
            continue
        row = dict(zip(cols, cells))
        values = [row.get(h, "") for h in ("ingress", "egress", "xdp")]
        if out and not any(values) and row.get("type"):
            prev = out[-1]      # a TYPE cell wrapped onto the next line
            out[-1] = dataclasses.replace(prev, type=f"{prev.type} {row['type']}")
            continue
        category = row.get("category") or category
        out.append(CalicoCounter(cur_iface, category, row.get("type", ""), _cell(values[0]), _cell(values[1]),
                                 _cell(values[2]) if "xdp" in row else None))
        pending += 1 if not cur_iface else 0
    if pending:
        w.add(f"{pending} counter row(s) without an interface (no --iface and no 'dumped X counters.')")
    return Parsed(tuple(out), w.freeze())


@dataclasses.dataclass(frozen=True)
class CalicoPolicyRule:
    """One rule of the policy program at an interface's hook, with the packets that matched it.
    `policy` is '' for the rules after the tiers (the endpoint's profiles)."""

    iface: str
    hook: str              # 'ingress' | 'egress' | 'xdp' (the BPF hook, not the policy direction)
    tier: str
    policy: str
    rule_id: str
    action: str
    count: int | None
    rule: str = ""         # the rule as the tool printed it (match criteria, selectors)
    ip_sets: tuple[str, ...] = ()

    @property
    def key(self) -> tuple:
        return ("calico-rule", self.iface, self.hook, self.tier, self.policy, self.rule_id)

    @property
    def counters(self) -> Mapping[str, int]:
        return {} if self.count is None else {"packets": self.count}


_HOOK = re.compile(r"^Hook:\s*(?:tc\s+)?(\w+)")
# 3.31 names a policy by its kind: '// Start of GlobalNetworkPolicy policy-tcp'
_START = re.compile(r"^//\s*Start of (tier|policy|profile|rule|\w*Policy)\s*(.*)$")
_END = re.compile(r"^//\s*End of (tier|policy|profile|rule|\w*Policy)\b")
_COUNT = re.compile(r"^//\s*(?:count\s*=\s*|Rule matches:\s*)(\d+)")
_RULE_ID = re.compile(r'rule_id:"([^"]*)"')
_ACTION = re.compile(r'action:"([^"]*)"')
_IPSET = re.compile(r"0x[0-9a-f]+")
# v3.30's concise dump glues comments: '// Start of policy P // Start of rule action:"allow" ... // count = 0'
_GLUED = re.compile(r"\s+(?=//\s*(?:Start of|End of|count\s*=|IPSets|Rule matches:))")
# the indented dump of calico-bpf 3.32+: 'Tier: T', 'Policy: P', 'Rule: ID  Action: allow', 'Hit count: N'
_NEW = re.compile(r"^(Tier|Policy|Profile|Rule|Match|IP sets|Hit count|End Policy|End Profile|End Tier|End Rule):\s*(.*)$")
_NEW_RULE = re.compile(r"^(\S*)\s*(?:Action:\s*(\S+))?")


def parse_policy_dump(text: str, iface: str = "", hook: str = "") -> Parsed[CalicoPolicyRule]:
    """Parse `calico-node -bpf policy dump IFACE HOOK` (one or several 'IfaceName:/Hook:' blocks):
    each '// Start of rule ... rule_id:"X"' with its '// count = N' under its tier and policy."""
    w = Warnings()
    out: list[CalicoPolicyRule] = []
    ifc, hk, tier, policy = iface, hook, "", ""
    rule: dict | None = None
    asm = 0

    def close() -> None:
        nonlocal rule
        if rule is not None:
            if rule["count"] is None:
                w.add(f"rule {rule['rule_id'] or '?'} on {ifc or '?'} without a count")
            out.append(CalicoPolicyRule(ifc, hk, tier, policy, rule["rule_id"], rule["action"], rule["count"],
                                        rule["text"], tuple(rule["ipsets"])))
            rule = None

    lines = [(no, part) for no, line in paste_lines(text)
             for part in (_GLUED.split(line) if "//" in line[2:] else (line,))]
    for no, s in lines:
        n = _NEW.match(s)
        if n is not None and not s.startswith("//"):
            key, val = n.groups()
            if key in ("Tier", "Policy", "Profile", "Rule") or key.startswith("End"):
                close()
            if key == "Tier":
                tier, policy = val.strip(), ""
            elif key in ("Policy", "Profile"):
                policy = val.strip()
            elif key == "End Tier":
                tier, policy = "", ""
            elif key in ("End Policy", "End Profile"):
                policy = ""
            elif key == "Rule":
                m = _NEW_RULE.match(val.strip())
                rule = {"rule_id": m.group(1), "action": m.group(2) or "", "count": None, "text": "", "ipsets": []}
            elif rule is not None and key == "Hit count" and val.strip().isdigit():
                rule["count"] = int(val.strip())
            elif rule is not None and key == "Match":
                rule["text"] = val.strip()
            elif rule is not None and key == "IP sets":
                rule["ipsets"] += re.findall(r"[^\s{},=]+/\d+|0x[0-9a-f]+", val)
            continue
        if s.startswith("IfaceName:"):
            close()
            ifc, tier, policy = s.split(":", 1)[1].strip() or iface, "", ""
        elif (h := _HOOK.match(s)):
            hk = h.group(1)
        elif s.startswith(("Error:", "Policy Info:")):
            if s.startswith("Error:") and s[6:].strip():
                w.add(f"{ifc or '?'} {hk}: {s[:120]}", no)
        elif (st := _START.match(s)):
            kind, body = st.groups()
            if kind == "rule":
                close()
                rid, act = _RULE_ID.search(body), _ACTION.search(body)
                first = body.split(None, 1)[0] if body.split() else ""
                if rid is None and first and not any(c in first for c in ':"'):
                    rid = re.match(r"(\S+)", first)      # 3.31: '// Start of rule policy-tcp action:"allow"'
                rule = {"rule_id": rid.group(1) if rid else "", "action": act.group(1) if act else "",
                        "count": None, "text": body.strip(), "ipsets": []}
            elif kind == "tier":
                close()
                tier, policy = body.strip(), ""
            else:
                close()
                policy = body.strip() if kind in ("policy", "profile") else f"{kind} {body.strip()}"
        elif (c := _COUNT.match(s)):
            if rule is not None:
                rule["count"] = int(c.group(1))
        elif s.startswith("// IPSets"):
            if rule is not None:
                rule["ipsets"] += _IPSET.findall(s)
        elif (e := _END.match(s)):
            if e.group(1) == "rule":
                close()
            elif e.group(1) == "tier":
                close()
                tier, policy = "", ""
            elif e.group(1) in ("policy", "profile") or e.group(1).endswith("Policy"):
                close()
                policy = ""
        elif s.startswith("//"):
            continue
        elif is_command(s, "calico-node", "calico-bpf") or s.startswith(("where ", "Dump of")):
            continue
        else:
            asm += 1          # --asm instructions, or text that is not the dump
    close()
    if asm:
        w.add(f"{asm} line(s) that are not policy comments (--asm instructions?) skipped")
    return Parsed(tuple(out), w.freeze())
